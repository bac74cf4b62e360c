"""The ResNet U-Net: upstream Mask2Face's best model, ported exactly, and an improved variant.

`variant='upstream'` reproduces upstream layer for layer (no normalization, ReLU, biases
everywhere, transposed-conv upsampling); the parameter counts it logged are pinned by
tests/test_models.py (53,586,243 for filters (64, 128, 128, 256, 256, 512), kernels
(7, 7, 7, 3, 3, 3) at 256x256x3). The topology, per level i (f = filters[i], k = kernels[i]):

  stem     conv(f0, k0), no activation (kept for the head)
  down     s = conv(f, k, stride 2); conv(f, k), act, conv(f, k); add s; act  (U-Net skip: s)
  bottom   conv(filters[-1], kernels[-1]), act
  up       (levels reversed; f_next, k = the next level's width and kernel)
           concat(x, s); conv(f, k), act, conv(f, k); add x; act; concat(., s);
           upsample to f_next (k); conv(f_next, k), act
  head     concat(., stem); conv(f0, k0), act; 1x1 conv + sigmoid

`variant='improved'` (the default) keeps that topology and changes three things:
- `norm='batch'` after every conv (bias dropped there): upstream trained a 53M-parameter
  network with no normalization at a learning rate of 1e-4; normalization lets it train at
  higher rates and converge in fewer steps. `norm='group'` suits small per-device batches.
- `upsample='resize_conv'` (nearest 2x then conv): a stride-2 transposed conv with an odd
  kernel (7 or 3 here) overlaps unevenly and paints checkerboard artefacts.
- `activation` is selectable (ReLU by default).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mask2face.models import layers

VARIANTS = ("improved", "upstream")
# What `variant='upstream'` means; asking for anything else with it is an error.
_UPSTREAM = dict(norm="none", activation="relu", upsample="transpose")
_IMPROVED = dict(norm="batch", activation="relu", upsample="resize_conv")


class ResNetUNet(nn.Module):
  """ResNet U-Net; `apply(variables, masked, train=...) -> (pred, {})`.

  Attributes:
    filters: channels per level (the number of levels is its length).
    kernels: kernel size per level, or one int for all.
    variant: 'upstream' (exact port) or 'improved' (see the module docstring).
    norm, activation, upsample: None = the variant's choice.
    out_channels: None = as many as the input.
  """

  filters: Sequence[int] = (64, 128, 128, 256, 256, 512)
  kernels: int | Sequence[int] = (7, 7, 7, 3, 3, 3)
  variant: str = "improved"
  norm: str | None = None
  activation: str | None = None
  upsample: str | None = None
  out_channels: int | None = None
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  axis_name: str | None = None

  def options(self) -> dict[str, str]:
    """The resolved norm / activation / upsample for this variant."""
    layers.check_choice("variant", self.variant, VARIANTS)
    chosen = dict(norm=self.norm, activation=self.activation, upsample=self.upsample)
    base = _UPSTREAM if self.variant == "upstream" else _IMPROVED
    if self.variant == "upstream":
      clash = {k: v for k, v in chosen.items() if v is not None and v != base[k]}
      if clash:
        raise ValueError(f"resnet_unet variant='upstream' fixes {base}; got {clash}")
    return {k: (v if v is not None else base[k]) for k, v in chosen.items()}

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, dict]:
    opts = self.options()
    filters = tuple(int(f) for f in self.filters)
    kernels = layers.level_kernels(filters, self.kernels)
    layers.check_spatial(x, len(filters), "resnet_unet")
    layers.check_choice("norm", opts["norm"], layers.NORMS)
    layers.check_choice("upsample", opts["upsample"], layers.UPSAMPLES)
    act = layers.activation_fn(opts["activation"])
    common = dict(
      norm=opts["norm"],
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      axis_name=self.axis_name,
    )

    def conv(f, k, strides=1, activation=None):
      return layers.ConvNormAct(f, k, strides=strides, activation=activation, **common)

    out_channels = self.out_channels or x.shape[-1]
    x = x.astype(layers.as_dtype(self.dtype))
    stem = conv(filters[0], kernels[0])(x, train)

    h, skips = stem, []
    for f, k in zip(filters, kernels):
      s = conv(f, k, strides=2)(h, train)
      y = conv(f, k, activation=opts["activation"])(s, train)
      y = conv(f, k)(y, train)
      h = act(y + s)
      skips.append(s)

    h = conv(filters[-1], kernels[-1], activation=opts["activation"])(h, train)

    levels = list(range(len(filters)))[::-1]
    for n, level in enumerate(levels):
      f = filters[level]
      nxt = levels[n + 1] if n + 1 < len(levels) else level
      f_next, k = filters[nxt], kernels[nxt]
      s = skips[level]
      y = conv(f, k, activation=opts["activation"])(jnp.concatenate([h, s], -1), train)
      y = conv(f, k)(y, train)
      y = act(y + h)  # Residual over the incoming tensor, not the concatenation (upstream).
      y = jnp.concatenate([y, s], -1)
      y = layers.Upsample(
        f_next,
        k,
        method=opts["upsample"],
        use_bias=opts["norm"] == "none",
        dtype=self.dtype,
        param_dtype=self.param_dtype,
      )(y)
      y = layers.Norm(
        opts["norm"], dtype=self.dtype, param_dtype=self.param_dtype, axis_name=self.axis_name
      )(y, train)
      h = conv(f_next, k, activation=opts["activation"])(y, train)

    h = jnp.concatenate([h, stem], -1)
    h = conv(filters[0], kernels[0], activation=opts["activation"])(h, train)
    pred = layers.SigmoidHead(out_channels, dtype=self.dtype, param_dtype=self.param_dtype)(h)
    return pred, {}
