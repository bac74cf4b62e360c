"""The vanilla U-Net as upstream Mask2Face built it (its `UNetDefault`, without the MobileNet
embedding).

Per level (f = filters[i], k = kernels[i]): conv(f, k) + act, then a 2x2 max-pool; the skip is
the conv output. Bottleneck: conv(filters[-1]) + act. Per level in reverse: 2x upsampling,
conv(f, k) + act, concatenate the skip, conv(f, k) + act. Head: conv(filters[0] // 2, 3) +
act, 1x1 conv + sigmoid.

Upstream upsampled with Keras' `UpSampling2D` (nearest) followed by that conv, which is
`upsample='resize_conv'` here (the default); `upsample='transpose'` makes that pair one stride-2
transposed conv. Upstream had no normalization (`norm='none'`, the default).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mask2face.models import layers


class UNet(nn.Module):
  """Upstream's plain U-Net; `apply(variables, masked, train=...) -> (pred, {})`."""

  filters: Sequence[int] = (16, 32, 64, 128, 256)
  kernels: int | Sequence[int] = 3
  norm: str = "none"
  activation: str = "relu"
  upsample: str = "resize_conv"
  out_channels: int | None = None
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, dict]:
    filters = tuple(int(f) for f in self.filters)
    kernels = layers.level_kernels(filters, self.kernels)
    layers.check_spatial(x, len(filters), "unet")
    layers.check_choice("upsample", self.upsample, layers.UPSAMPLES)
    common = dict(
      norm=self.norm,
      activation=self.activation,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      axis_name=self.axis_name,
    )
    out_channels = self.out_channels or x.shape[-1]
    h = x.astype(layers.as_dtype(self.dtype))

    skips = []
    for f, k in zip(filters, kernels):
      h = layers.ConvNormAct(f, k, **common)(h, train)
      skips.append(h)
      h = layers.max_pool2(h)

    h = layers.ConvNormAct(filters[-1], kernels[-1], **common)(h, train)

    for f, k, skip in zip(filters[::-1], kernels[::-1], skips[::-1]):
      h = layers.Upsample(
        f,
        k,
        method=self.upsample,
        use_bias=self.norm == "none",
        dtype=self.dtype,
        param_dtype=self.param_dtype,
      )(h)
      h = layers.Norm(
        self.norm, dtype=self.dtype, param_dtype=self.param_dtype, axis_name=self.axis_name
      )(h, train)
      h = layers.activation_fn(self.activation)(h)
      h = jnp.concatenate([h, skip], -1)
      h = layers.ConvNormAct(f, k, **common)(h, train)

    h = layers.ConvNormAct(max(filters[0] // 2, 1), 3, **common)(h, train)
    pred = layers.SigmoidHead(out_channels, dtype=self.dtype, param_dtype=self.param_dtype)(h)
    return pred, {}
