"""The model zoo: every architecture behind one interface, chosen by name.

Every model is a Flax Linen module built as `get_model(config.model_name, **config.model)`;
`model.apply(variables, masked, train=..., rngs=..., mutable=...)` returns `(pred, aux)`: `pred`
has the input's shape, float32 in [0, 1]; `aux` is a dict (empty, or `coarse`, a VAE's
`prior_mean`/`prior_logvar`/`post_mean`/`post_logvar` or `mean`/`logvar`; a second stage's
keys prefixed `refine_`). Training also passes `target=` the clean image (a conditional VAE's
posterior sees it; the other models ignore it); evaluation and prediction never do.
Collections: `params`, `batch_stats` (where norm='batch'); rng streams: `latent` (the VAEs'
sampling; `sampling.sample_predictions` draws several completions). A new architecture is
one file plus one line in `MODELS`, and tests/test_models.py then checks it.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
from flax.core import FrozenDict

from mask2face.models.encoder_decoder import EncoderDecoder
from mask2face.models.refine_unet import RefineUNet
from mask2face.models.resnet_unet import ResNetUNet
from mask2face.models.unet import UNet
from mask2face.models.vae_bottleneck_unet import VAEBottleneckUNet
from mask2face.models.vae_unet import VAEUNet
from mask2face.parallel import AXIS

MODELS: dict[str, type[nn.Module]] = {
  "encoder_decoder": EncoderDecoder,
  "unet": UNet,
  "resnet_unet": ResNetUNet,
  "refine_unet": RefineUNet,
  "vae_unet": VAEUNet,
  "vae_bottleneck_unet": VAEBottleneckUNet,
}


def get_model(name: str, /, **kwargs: Any) -> nn.Module:
  """Builds the registered model `name` with its keyword arguments.

  Raises:
    ValueError: unknown name (the message lists the valid ones) or unknown keyword.
  """
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")
  cls = MODELS[name]
  # ConfigDict values arrive as lists / ConfigDicts: tuples and FrozenDicts keep the module
  # hashable, which `jax.jit(model.apply)` needs.
  kwargs = {k: _plain(v) for k, v in kwargs.items()}
  try:
    return cls(**kwargs)
  except TypeError as e:
    raise ValueError(f"model {name!r}: bad keyword arguments {sorted(kwargs)}: {e}") from e


def model_from_config(config: Any, *, axis_name: str | None = AXIS, **overrides: Any) -> nn.Module:
  """`get_model(config.model_name, **config.model, **overrides)`, as the trainer builds it.

  Models with BatchNorm get `axis_name` (default: the trainer's device axis) so their batch
  statistics are averaged over devices; pass None outside a device-parallel step.
  """
  kwargs = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
  cls = MODELS.get(config.model_name)  # An unknown name is get_model's error to report.
  if dataclasses.is_dataclass(cls) and "axis_name" in {f.name for f in dataclasses.fields(cls)}:
    kwargs["axis_name"] = axis_name
  kwargs.update(overrides)
  return get_model(config.model_name, **kwargs)


def _plain(value: Any) -> Any:
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, list):
    return tuple(_plain(v) for v in value)
  if isinstance(value, Mapping):
    return FrozenDict({k: _plain(v) for k, v in value.items()})
  return value


__all__ = ["MODELS", "get_model", "model_from_config"]
