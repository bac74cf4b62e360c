"""Building blocks shared by the architectures: conv + norm + activation, upsampling, the head.

Every block takes `dtype` (compute) separately from `param_dtype` (storage, float32), and
BatchNorm takes `axis_name` so its statistics can be averaged across devices by the trainer.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("none", "batch", "group")
UPSAMPLES = ("transpose", "resize_conv")
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "relu": nn.relu,
  "leaky_relu": nn.leaky_relu,
  "gelu": nn.gelu,
  "silu": nn.silu,
  "elu": nn.elu,
}


def as_dtype(dtype: Any) -> jnp.dtype:
  """Accepts 'float32', 'bfloat16', a numpy/jax dtype or None (float32)."""
  if dtype is None:
    return jnp.dtype(jnp.float32)
  try:
    return jnp.dtype(dtype)
  except TypeError as e:
    raise ValueError(f"unknown dtype {dtype!r}: use e.g. 'float32' or 'bfloat16'") from e


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def check_choice(what: str, value: str, valid: Sequence[str]) -> None:
  if value not in valid:
    raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def level_kernels(filters: Sequence[int], kernels: int | Sequence[int]) -> tuple[int, ...]:
  """One kernel size per level: an int (or a 1-tuple) is used at every level."""
  if isinstance(kernels, int):
    return (kernels,) * len(filters)
  kernels = tuple(int(k) for k in kernels)
  if len(kernels) == 1:
    return kernels * len(filters)
  if len(kernels) != len(filters):
    raise ValueError(
      f"kernels {kernels} must have one entry per level of filters {tuple(filters)} "
      "(or be a single int)"
    )
  return kernels


def check_spatial(x: jax.Array, levels: int, model: str) -> None:
  """Each level halves the image, so H and W must be divisible by 2**levels."""
  h, w = x.shape[-3], x.shape[-2]
  factor = 2**levels
  if h % factor or w % factor:
    raise ValueError(
      f"{model}: input {h}x{w} must be divisible by {factor} (2**{levels} levels); "
      "use fewer filters or another image size"
    )


class Norm(nn.Module):
  """'none', 'batch' (statistics pmean'd over `axis_name`) or 'group' normalization."""

  kind: str = "none"
  groups: int = 8
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    check_choice("norm", self.kind, NORMS)
    if self.kind == "batch":
      return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        axis_name=self.axis_name,
        dtype=as_dtype(self.dtype),
        param_dtype=as_dtype(self.param_dtype),
      )(x)
    if self.kind == "group":
      # The largest group count <= `groups` that divides the channels, so tiny widths work.
      return nn.GroupNorm(
        num_groups=math.gcd(x.shape[-1], self.groups),
        dtype=as_dtype(self.dtype),
        param_dtype=as_dtype(self.param_dtype),
      )(x)
    return x


class ConvNormAct(nn.Module):
  """Conv ('same' padding) -> optional norm -> optional activation.

  The bias is dropped when a norm follows: the norm's own shift makes it redundant (and it
  would receive a zero gradient).
  """

  features: int
  kernel: int = 3
  strides: int = 1
  norm: str = "none"
  activation: str | None = "relu"
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = nn.Conv(
      self.features,
      (self.kernel, self.kernel),
      strides=(self.strides, self.strides),
      padding="SAME",
      use_bias=self.norm == "none",
      dtype=as_dtype(self.dtype),
      param_dtype=as_dtype(self.param_dtype),
    )(x)
    x = Norm(self.norm, dtype=self.dtype, param_dtype=self.param_dtype, axis_name=self.axis_name)(
      x, train
    )
    if self.activation is not None:
      x = activation_fn(self.activation)(x)
    return x


class Upsample(nn.Module):
  """Doubles H and W and maps to `features` channels (no norm or activation).

  'transpose' is a stride-2 transposed conv (upstream); 'resize_conv' repeats pixels (nearest,
  like Keras' UpSampling2D) then convolves, which avoids the checkerboard artefacts of
  transposed convs whose kernel is not divisible by the stride (Odena et al., 2016).
  """

  features: int
  kernel: int = 3
  method: str = "transpose"
  use_bias: bool = True
  dtype: Any = "float32"
  param_dtype: Any = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    check_choice("upsample", self.method, UPSAMPLES)
    kwargs = dict(
      padding="SAME",
      use_bias=self.use_bias,
      dtype=as_dtype(self.dtype),
      param_dtype=as_dtype(self.param_dtype),
    )
    window = (self.kernel, self.kernel)
    if self.method == "transpose":
      return nn.ConvTranspose(self.features, window, strides=(2, 2), **kwargs)(x)
    x = jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)
    return nn.Conv(self.features, window, **kwargs)(x)


class SigmoidHead(nn.Module):
  """1x1 conv to the output channels and a sigmoid, in float32 for the loss."""

  out_channels: int
  dtype: Any = "float32"
  param_dtype: Any = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(
      self.out_channels,
      (1, 1),
      dtype=as_dtype(self.dtype),
      param_dtype=as_dtype(self.param_dtype),
    )(x)
    return nn.sigmoid(x.astype(jnp.float32))


def max_pool2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (2, 2), strides=(2, 2))
