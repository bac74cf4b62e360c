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

import flax.linen as nn
import jax
import jax.numpy as jnp

from mask2face.models import layers


class UNet(layers.ConvNet):
  """Upstream's plain U-Net; `apply(variables, masked, train=...) -> (pred, {})`.

  Fields as `layers.ConvNet`, but without normalization by default (as upstream).
  """

  norm: str = "none"

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False, *, target: jax.Array | None = None
  ) -> tuple[jax.Array, dict]:
    del target  # Not conditioned on the clean image (see layers.ConvNet).
    h, filters, kernels, out_channels, b = self._prepare(x, "unet")

    skips = []
    for f, k in zip(filters, kernels):
      h = b.conv(f, k)(h, train)
      skips.append(h)
      h = layers.max_pool2(h)

    h = b.conv(filters[-1], kernels[-1])(h, train)

    for f, k, skip in zip(filters[::-1], kernels[::-1], skips[::-1]):
      h = b.up(h, f, k, train)
      h = jnp.concatenate([h, skip], -1)
      h = b.conv(f, k)(h, train)

    h = b.conv(max(filters[0] // 2, 1), 3)(h, train)
    return b.head(h, out_channels), {}
