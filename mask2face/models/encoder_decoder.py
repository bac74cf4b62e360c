"""A plain convolutional encoder-decoder with no skip connections: the baseline that shows
what the U-Net's skips buy.

Per level (f = filters[i], k = kernels[i]): conv(f, k, stride 2) and conv(f, k), each with
norm + act. Bottleneck: conv(filters[-1]). Decoder, levels reversed: upsample to the next
level's width, norm + act, conv + norm + act. Head: conv(filters[0]) + act, 1x1 conv +
sigmoid. Everything the network outputs must pass through the lowest resolution
(H / 2**levels), so it cannot copy the unmasked pixels back: expect blurrier results.
"""

import flax.linen as nn
import jax

from mask2face.models import layers


class EncoderDecoder(layers.ConvNet):
  """Encoder-decoder without skips; `apply(variables, masked, train=...) -> (pred, {})`.

  Fields as `layers.ConvNet` (norm='batch', upsample='resize_conv').
  """

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False, *, target: jax.Array | None = None
  ) -> tuple[jax.Array, dict]:
    del target  # Not conditioned on the clean image (see layers.ConvNet).
    h, filters, kernels, out_channels, b = self._prepare(x, "encoder_decoder")

    for f, k in zip(filters, kernels):
      h = b.conv(f, k, strides=2)(h, train)
      h = b.conv(f, k)(h, train)

    h = b.conv(filters[-1], kernels[-1])(h, train)

    # Each decoder level upsamples to the next (shallower) level's width; the last to f0.
    widths = (*filters[::-1][1:], filters[0])
    for f, k in zip(widths, kernels[::-1]):
      h = b.up(h, f, k, train)
      h = b.conv(f, k)(h, train)

    h = b.conv(filters[0], kernels[0])(h, train)
    return b.head(h, out_channels), {}
