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
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from mask2face.models import layers
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
  `dtype='auto'` is resolved here, for the devices of this process (`layers.resolve_dtype`:
  bfloat16 on GPU and TPU, float32 on CPU).
  """
  kwargs = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
  if "dtype" in kwargs:
    kwargs["dtype"] = layers.resolve_dtype(kwargs["dtype"]).name
  cls = MODELS.get(config.model_name)  # An unknown name is get_model's error to report.
  if dataclasses.is_dataclass(cls) and "axis_name" in {f.name for f in dataclasses.fields(cls)}:
    kwargs["axis_name"] = axis_name
  kwargs.update(overrides)
  return get_model(config.model_name, **kwargs)


def _variable_shapes(model: nn.Module, input_shape: Sequence[int]):
  rngs = {name: jax.random.key(0) for name in ("params", "dropout", "latent")}
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), rngs, x)
  return jax.tree.map(lambda s: (s.shape, s.dtype), shapes)


def smallest_input_shape(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, ...]:
  """The smallest input, H and W divided by a power of two, with `input_shape`'s variables.

  Flax draws each variable from its own name and shape, so a conv net initialised on this
  input gets exactly the values it would get at full size, for a fraction of the compile
  time and memory. Shapes come from `jax.eval_shape` (nothing is computed); a model whose
  variables depend on the image size (a dense layer on a flattened map) gets its full size.
  """
  n, h, w, c = input_shape
  full = _variable_shapes(model, input_shape)
  divisor = 1
  while h % (2 * divisor) == 0 and w % (2 * divisor) == 0:
    divisor *= 2
  while divisor > 1:
    shape = (n, h // divisor, w // divisor, c)
    divisor //= 2
    try:
      if _variable_shapes(model, shape) == full:
        return shape
    except Exception:  # Any failure only means that this input is too small.
      continue
  return tuple(input_shape)


def _plain(value: Any) -> Any:
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, list):
    return tuple(_plain(v) for v in value)
  if isinstance(value, Mapping):
    return FrozenDict({k: _plain(v) for k, v in value.items()})
  return value


__all__ = ["MODELS", "get_model", "model_from_config", "smallest_input_shape"]
