"""Building blocks shared by the architectures: conv + norm + activation, upsampling, the head.

Every block takes `dtype` (compute) separately from `param_dtype` (storage, float32), and
BatchNorm takes `axis_name` so its statistics can be averaged across devices by the trainer.
`dtype='auto'` is bfloat16 on GPU and TPU and float32 on CPU (`resolve_dtype`).
`ConvNet` holds the fields and the input checks every architecture shares; `Blocks` builds
the blocks with one architecture's settings.
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

NORMS = ("none", "batch", "group")
UPSAMPLES = ("transpose", "resize_conv")
# Latent log-variances are clipped to this range (models and the KL in losses.py alike):
# exp(logvar) overflows or collapses to 0 outside it, and the KL must stay finite.
LOGVAR_RANGE = (-20.0, 10.0)
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
  "relu": nn.relu,
  "leaky_relu": nn.leaky_relu,
  "gelu": nn.gelu,
  "silu": nn.silu,
  "elu": nn.elu,
}


def resolve_dtype(dtype: Any, platform: str | None = None) -> jnp.dtype:
  """A compute dtype: 'auto' is bfloat16 on GPU and TPU, float32 on CPU (or `platform`).

  bfloat16 halves activation memory and runs on the tensor cores; the CPU has no fast
  bfloat16 convolutions, so there 'auto' stays float32. Parameters, BatchNorm statistics and
  the loss stay float32 either way.
  """
  if isinstance(dtype, str) and dtype == "auto":
    platform = platform or jax.default_backend()
    return jnp.dtype(jnp.bfloat16 if platform in ("gpu", "cuda", "rocm", "tpu") else jnp.float32)
  return as_dtype(dtype)


def as_dtype(dtype: Any) -> jnp.dtype:
  """Accepts 'float32', 'bfloat16', 'auto' (see `resolve_dtype`), a numpy/jax dtype or None
  (float32)."""
  if dtype is None:
    return jnp.dtype(jnp.float32)
  if isinstance(dtype, str) and dtype == "auto":
    return resolve_dtype(dtype)
  try:
    return jnp.dtype(dtype)
  except TypeError as e:
    raise ValueError(f"unknown dtype {dtype!r}: use e.g. 'auto', 'float32' or 'bfloat16'") from e


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


# --- Upsampling. -------------------------------------------------------------------------------


def _same_pads(kernel: int) -> int:
  """The low padding of a 'SAME' stride-1 convolution (XLA: (k - 1) // 2, the rest high)."""
  return (kernel - 1) // 2


@functools.cache
def _phase_fold(kernel: int, phase: int) -> tuple[np.ndarray, int, int]:
  """Which kernel taps land on which input pixel, for output rows 2i + phase of a resize-conv.

  Output row 2i + phase, tap m reads upsampled row 2i + phase + m - pad, which is input row
  i + (phase + m - pad) // 2. Returns (fold [T, kernel] of 0/1, low pad, high pad): the T
  input offsets t = -low..high, fold[t + low, m] = 1 where tap m reads offset t. Out-of-range
  upsampled rows are exactly out-of-range input rows, so zero padding carries over.
  """
  pad = _same_pads(kernel)
  offsets = [(phase + m - pad) // 2 for m in range(kernel)]
  low, high = -min(offsets), max(offsets)
  fold = np.zeros((low + high + 1, kernel), np.float32)
  for m, t in enumerate(offsets):
    fold[t + low, m] = 1.0
  return fold, low, high


def _conv(x: jax.Array, kernel: jax.Array, padding) -> jax.Array:
  return lax.conv_general_dilated(
    x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


def resize_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 upsampling then a 'SAME' convolution, computed at input resolution.

  The same function as `repeat_conv` (tested to 1e-5 in outputs and gradients), in sub-pixel
  form: each of the four output phases (row and column parity) is a convolution of the input
  with a smaller kernel, the sum of the taps that read the same input pixel, and the phases
  are interleaved (depth to space). A k x k kernel folds into about (k + 1) / 2 taps a side,
  so a 7x7 layer costs 4 x (4 x 4) / (4 x 7 x 7), about a third, and a 3x3 one 4 / 9.
  The kernels are folded from the usual [k, k, in, out] parameter at trace time, so
  checkpoints are unchanged. `x` [B, H, W, C_in], `kernel` [k, k, C_in, C_out] (any float
  dtype; folded in the kernel's dtype, convolved in x's).
  """
  k = kernel.shape[0]
  if kernel.shape[1] != k:
    raise ValueError(f"resize_conv needs a square kernel, got {kernel.shape[:2]}")
  rows = []
  for dy in (0, 1):
    fold_y, low_y, high_y = _phase_fold(k, dy)
    cols = []
    for dx in (0, 1):
      fold_x, low_x, high_x = _phase_fold(k, dx)
      folded = jnp.einsum("tm,sn,mnio->tsio", fold_y, fold_x, kernel)
      cols.append(_conv(x, folded.astype(x.dtype), ((low_y, high_y), (low_x, high_x))))
    rows.append(jnp.stack(cols, axis=3))  # [B, H, W, 2 (dx), C]
  y = jnp.stack(rows, axis=2)  # [B, H, 2 (dy), W, 2 (dx), C]
  b, h, _, w, _, c = y.shape
  return y.reshape(b, 2 * h, 2 * w, c)


def repeat_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`resize_conv` by its definition: repeat every pixel 2x2, then convolve (4x the FLOPs).

  The reference `resize_conv` is tested against (and what `Upsample` computed before).
  """
  x = jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)
  return _conv(x, kernel.astype(x.dtype), "SAME")


class ResizeConv(nn.Module):
  """`resize_conv` with nn.Conv's parameters (`kernel` [k, k, in, out], optional `bias`), the
  same names, shapes and initializers: it is created as `Conv_0`, where `Upsample` used to
  create an nn.Conv, so checkpoints and initial values are unchanged."""

  features: int
  kernel: int = 3
  use_bias: bool = True
  dtype: Any = "float32"
  param_dtype: Any = "float32"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    shape = (self.kernel, self.kernel, x.shape[-1], self.features)
    kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, as_dtype(self.param_dtype))
    # Looked up at call time: benchmarks/model_bench.py patches in `repeat_conv` to report
    # the FLOPs the sub-pixel form saves.
    y = resize_conv(x.astype(as_dtype(self.dtype)), kernel)
    if self.use_bias:
      zeros = nn.initializers.zeros_init()
      bias = self.param("bias", zeros, (self.features,), as_dtype(self.param_dtype))
      y = y + bias.astype(y.dtype)
    return y


class Upsample(nn.Module):
  """Doubles H and W and maps to `features` channels (no norm or activation).

  'transpose' is a stride-2 transposed conv (upstream); 'resize_conv' repeats pixels (nearest,
  like Keras' UpSampling2D) then convolves, which avoids the checkerboard artefacts of
  transposed convs whose kernel is not divisible by the stride (Odena et al., 2016); it is
  computed in sub-pixel form at the input resolution (`resize_conv`).
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
    common = dict(use_bias=self.use_bias, dtype=as_dtype(self.dtype))
    if self.method == "transpose":
      return nn.ConvTranspose(
        self.features,
        (self.kernel, self.kernel),
        strides=(2, 2),
        padding="SAME",
        param_dtype=as_dtype(self.param_dtype),
        **common,
      )(x)
    return ResizeConv(
      self.features, self.kernel, param_dtype=self.param_dtype, name="Conv_0", **common
    )(x)


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


@dataclasses.dataclass(frozen=True)
class Blocks:
  """One architecture's conv settings, and the blocks built with them.

  The blocks are created where these methods are called, so inside a model's compact
  `__call__` they get that model's automatic names (ConvNormAct_0, Upsample_0, Norm_0, ...)
  in call order, exactly as if the model had created them itself.
  """

  norm: str
  activation: str
  upsample: str
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  axis_name: str | None = None

  def conv(self, features: int, kernel: int = 3, *, strides: int = 1, act: bool = True):
    """A `ConvNormAct`; `act=False` leaves out the activation (e.g. before a residual add)."""
    return ConvNormAct(
      features,
      kernel,
      strides=strides,
      norm=self.norm,
      activation=self.activation if act else None,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      axis_name=self.axis_name,
    )

  def double_conv_down(
    self, x: jax.Array, filters: Sequence[int], kernels: Sequence[int], train: bool
  ) -> tuple[jax.Array, list[jax.Array]]:
    """Per level two convs (the skip) then a 2x2 max-pool: the VAE U-Nets' encoder.

    Returns the pooled features of the last level and the skips, top level first.
    """
    skips = []
    for f, k in zip(filters, kernels):
      x = self.conv(f, k)(x, train)
      x = self.conv(f, k)(x, train)
      skips.append(x)
      x = max_pool2(x)
    return x, skips

  def double_conv_up(
    self,
    x: jax.Array,
    skips: Sequence[jax.Array],
    filters: Sequence[int],
    kernels: Sequence[int],
    train: bool,
    *,
    dropped_skips: int = 0,
  ) -> jax.Array:
    """Per level in reverse: upsample, concatenate the skip, conv; the top `dropped_skips`
    levels lose their skip, so detail there must come through the bottleneck."""
    for level in reversed(range(len(filters))):
      f, k = filters[level], kernels[level]
      x = self.up(x, f, k, train)
      if level >= dropped_skips:
        x = jnp.concatenate([x, skips[level]], -1)
      x = self.conv(f, k)(x, train)
    return x

  def up(
    self, x: jax.Array, features: int, kernel: int, train: bool, *, act: bool = True
  ) -> jax.Array:
    """Upsample -> norm (-> activation): the start of a decoder level."""
    x = Upsample(
      features,
      kernel,
      method=self.upsample,
      use_bias=self.norm == "none",  # The norm's shift makes a bias redundant.
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )(x)
    x = Norm(self.norm, dtype=self.dtype, param_dtype=self.param_dtype, axis_name=self.axis_name)(
      x, train
    )
    return activation_fn(self.activation)(x) if act else x

  def head(self, x: jax.Array, out_channels: int) -> jax.Array:
    return SigmoidHead(out_channels, dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Prepared(NamedTuple):
  """What `ConvNet._prepare` gives an architecture's `__call__`."""

  x: jax.Array  # The input, cast to the compute dtype.
  filters: tuple[int, ...]
  kernels: tuple[int, ...]  # One per level.
  out_channels: int
  blocks: Blocks


class ConvNet(nn.Module):
  """The fields every architecture shares, and the checks every `__call__` starts with.

  Subclasses add their own fields after these and may redeclare one to change its default
  (e.g. UNet's `norm = 'none'`); the defaults here are the small U-Net family's.

  Every subclass is called as `__call__(x, train=False, *, target=None) -> (pred, aux)`.
  `target` is the clean image [B, H, W, C]: the trainer passes it in training steps so a
  conditional model's posterior can see the hidden face (vae_unet); evaluation and prediction
  never pass it, and models that do not condition on it ignore it.

  Attributes:
    filters: channels per level (the number of levels is its length).
    kernels: kernel size per level, or one int for all.
    norm: 'none', 'batch' or 'group' (NORMS).
    activation: a name in ACTIVATIONS.
    upsample: 'transpose' or 'resize_conv' (UPSAMPLES).
    out_channels: None = as many as the input.
    dtype: compute dtype; param_dtype: storage dtype of the parameters.
    axis_name: the device axis BatchNorm averages its statistics over (set by the trainer).
  """

  filters: Sequence[int] = (16, 32, 64, 128, 256)
  kernels: int | Sequence[int] = 3
  norm: str = "batch"
  activation: str = "relu"
  upsample: str = "resize_conv"
  out_channels: int | None = None
  dtype: Any = "float32"
  param_dtype: Any = "float32"
  axis_name: str | None = None

  def options(self) -> dict[str, str]:
    """The norm / activation / upsample the blocks use (a subclass may resolve them)."""
    return dict(norm=self.norm, activation=self.activation, upsample=self.upsample)

  def _prepare(self, x: jax.Array, name: str) -> Prepared:
    """Checks the options and the input size (errors name the model) and casts the input."""
    opts = self.options()
    check_choice("norm", opts["norm"], NORMS)
    check_choice("activation", opts["activation"], ACTIVATIONS)
    check_choice("upsample", opts["upsample"], UPSAMPLES)
    filters = tuple(int(f) for f in self.filters)
    kernels = level_kernels(filters, self.kernels)
    check_spatial(x, len(filters), name)
    blocks = Blocks(
      **opts, dtype=self.dtype, param_dtype=self.param_dtype, axis_name=self.axis_name
    )
    return Prepared(
      x.astype(as_dtype(self.dtype)), filters, kernels, self.out_channels or x.shape[-1], blocks
    )
