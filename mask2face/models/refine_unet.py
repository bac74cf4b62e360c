"""Coarse-then-refine: two U-Nets in sequence (an idea of the upstream article; the staging
follows multi-stage restoration networks such as MAXIM, which return every stage's output).

Stage 1, any registered single-stage model (`coarse_model`, default 'unet'), maps the masked
image to a coarse face. Stage 2 (`refine_model`) sees concat(masked, coarse) and outputs the
final image. The binary mask is not an input (the model interface is `apply(variables,
masked)`), so no hard composite (coarse inside the mask, input outside) is possible; giving
the refiner both images lets it learn where to copy the input and where to repaint, which is
a learned composite. Both stages train end to end; `aux['coarse']` is stage 1's output so the
loss can supervise it too (config.loss.coarse_weight, deep supervision).

`filters`, `kernels`, `norm`, `activation`, `upsample` apply to both stages unless
`coarse_kwargs` / `refine_kwargs` override them (per-stage keyword arguments of that model);
`out_channels` is the refiner's (the coarse stage outputs as many channels as the input).
Stage 1's own aux (e.g. a VAE's `prior_mean`, ...) is passed through; stage 2's gets a
`refine_` prefix (`refine_prior_mean`, ...), which losses.compute_loss reads too, so a VAE in
either stage has its KL term. `target` (the clean image, in training) goes to both stages.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mask2face.models import layers


class RefineUNet(layers.ConvNet):
  """Two-stage model; `apply(...) -> (refined, {'coarse': coarse, ...})`.

  Fields as `layers.ConvNet` (shared by both stages), plus each stage's model and overrides.
  """

  coarse_model: str = "unet"
  refine_model: str = "unet"
  coarse_kwargs: Mapping[str, Any] | None = None
  refine_kwargs: Mapping[str, Any] | None = None

  def _stage(self, model_name: str, overrides: Mapping[str, Any] | None, name: str) -> nn.Module:
    from mask2face.models import MODELS, get_model  # The registry imports this module.

    if model_name == "refine_unet" or model_name not in MODELS:
      valid = sorted(n for n in MODELS if n != "refine_unet")
      raise ValueError(f"refine_unet: stage model {model_name!r} invalid; valid: {valid}")
    kwargs = dict(filters=tuple(self.filters), kernels=self.kernels)
    # The upstream variant fixes norm/activation/upsample: let resnet_unet choose unless
    # overridden.
    if model_name != "resnet_unet":
      kwargs.update(self.options())
    kwargs.update(dict(overrides or {}))
    return get_model(
      model_name,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      axis_name=self.axis_name,
      name=name,
      **kwargs,
    )

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False, *, target: jax.Array | None = None
  ) -> tuple[jax.Array, dict]:
    coarse_stage = self._stage(self.coarse_model, self.coarse_kwargs, "coarse")
    coarse, coarse_aux = coarse_stage(x, train, target=target)
    stage2_in = jnp.concatenate([x.astype(jnp.float32), coarse], -1)
    out_channels = self.out_channels or x.shape[-1]
    refine_kwargs = {"out_channels": out_channels, **dict(self.refine_kwargs or {})}
    refine = self._stage(self.refine_model, refine_kwargs, "refine")
    pred, refine_aux = refine(stage2_in.astype(layers.as_dtype(self.dtype)), train, target=target)
    aux = dict(coarse_aux)
    aux.update({f"refine_{k}": v for k, v in refine_aux.items()})
    aux["coarse"] = coarse
    return pred, aux
