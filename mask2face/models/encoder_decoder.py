"""A plain convolutional encoder-decoder with no skip connections: the baseline that shows
what the U-Net's skips buy.

Per level (f = filters[i], k = kernels[i]): conv(f, k, stride 2) and conv(f, k), each with
norm + act. Bottleneck: conv(filters[-1]). Decoder, levels reversed: upsample to the next
level's width, norm + act, conv + norm + act. Head: conv(filters[0]) + act, 1x1 conv +
sigmoid. Everything the network outputs must pass through the lowest resolution
(H / 2**levels), so it cannot copy the unmasked pixels back: expect blurrier results.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax

from mask2face.models import layers


class EncoderDecoder(nn.Module):
  """Encoder-decoder without skips; `apply(variables, masked, train=...) -> (pred, {})`."""

  filters: Sequence[int] = (16, 32, 64, 128, 256)
  kernels: int | Sequence[int] = 3
  norm: str = "batch"
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
    layers.check_spatial(x, len(filters), "encoder_decoder")
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

    for f, k in zip(filters, kernels):
      h = layers.ConvNormAct(f, k, strides=2, **common)(h, train)
      h = layers.ConvNormAct(f, k, **common)(h, train)

    h = layers.ConvNormAct(filters[-1], kernels[-1], **common)(h, train)

    # Each decoder level upsamples to the next (shallower) level's width; the last to f0.
    widths = (*filters[::-1][1:], filters[0])
    for f, k in zip(widths, kernels[::-1]):
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
      h = layers.ConvNormAct(f, k, **common)(h, train)

    h = layers.ConvNormAct(filters[0], kernels[0], **common)(h, train)
    pred = layers.SigmoidHead(out_channels, dtype=self.dtype, param_dtype=self.param_dtype)(h)
    return pred, {}
