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

import flax.linen as nn
import jax
import jax.numpy as jnp

from mask2face.models import layers

VARIANTS = ("improved", "upstream")
# What `variant='upstream'` means; asking for anything else with it is an error.
_UPSTREAM = dict(norm="none", activation="relu", upsample="transpose")
_IMPROVED = dict(norm="batch", activation="relu", upsample="resize_conv")


class ResNetUNet(layers.ConvNet):
  """ResNet U-Net; `apply(variables, masked, train=...) -> (pred, {})`.

  Fields as `layers.ConvNet` with upstream's filters and kernels by default, plus:
    variant: 'upstream' (exact port) or 'improved' (see the module docstring).
    norm, activation, upsample: None (the default) = the variant's choice.
  """

  filters: Sequence[int] = (64, 128, 128, 256, 256, 512)
  kernels: int | Sequence[int] = (7, 7, 7, 3, 3, 3)
  norm: str | None = None
  activation: str | None = None
  upsample: str | None = None
  variant: str = "improved"

  def options(self) -> dict[str, str]:
    """The resolved norm / activation / upsample for this variant."""
    layers.check_choice("variant", self.variant, VARIANTS)
    chosen = super().options()
    base = _UPSTREAM if self.variant == "upstream" else _IMPROVED
    if self.variant == "upstream":
      clash = {k: v for k, v in chosen.items() if v is not None and v != base[k]}
      if clash:
        raise ValueError(f"resnet_unet variant='upstream' fixes {base}; got {clash}")
    return {k: (v if v is not None else base[k]) for k, v in chosen.items()}

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False, *, target: jax.Array | None = None
  ) -> tuple[jax.Array, dict]:
    del target  # Not conditioned on the clean image (see layers.ConvNet).
    x, filters, kernels, out_channels, b = self._prepare(x, "resnet_unet")
    act = layers.activation_fn(b.activation)
    # Unlike the U-Nets, most convs here have no activation of their own (residual adds).
    stem = b.conv(filters[0], kernels[0], act=False)(x, train)

    h, skips = stem, []
    for f, k in zip(filters, kernels):
      s = b.conv(f, k, strides=2, act=False)(h, train)
      y = b.conv(f, k)(s, train)
      y = b.conv(f, k, act=False)(y, train)
      h = act(y + s)
      skips.append(s)

    h = b.conv(filters[-1], kernels[-1])(h, train)

    levels = list(range(len(filters)))[::-1]
    for n, level in enumerate(levels):
      f = filters[level]
      nxt = levels[n + 1] if n + 1 < len(levels) else level
      f_next, k = filters[nxt], kernels[nxt]
      s = skips[level]
      y = b.conv(f, k)(jnp.concatenate([h, s], -1), train)
      y = b.conv(f, k, act=False)(y, train)
      y = act(y + h)  # Residual over the incoming tensor, not the concatenation (upstream).
      y = jnp.concatenate([y, s], -1)
      y = b.up(y, f_next, k, train, act=False)
      h = b.conv(f_next, k)(y, train)

    h = jnp.concatenate([h, stem], -1)
    h = b.conv(filters[0], kernels[0])(h, train)
    return b.head(h, out_channels), {}
