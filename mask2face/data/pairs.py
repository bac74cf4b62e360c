"""One training or evaluation pair: a face photo and its landmarks to (masked, clean, mask).

`make_pair` paints a mask (mask2face.data.masks) on the photo, crops both images and the binary
mask with the same transform (mask2face.data.crop) and, in training, applies the same flip and
colour jitter to both. `PairOptions` holds the `config.data` fields it needs (picklable, so it
crosses into grain's worker processes). The grain pipeline around it is `pipeline.py`.
"""

import dataclasses

import cv2
import numpy as np

from mask2face.data import crop, masks

PAINT_ORDERS = ("auto", "crop_then_paint", "paint_then_crop")


@dataclasses.dataclass(frozen=True)
class PairOptions:
  """The settings `make_pair` needs, pulled out of `config.data` (picklable, hashable)."""

  image_size: int = 256
  margin: float = 1.0 / 3.0
  level_eyes: bool = False
  paint_order: str = "auto"  # auto | crop_then_paint | paint_then_crop
  mask_families: str = "all"
  mask_weights: str = ""
  templates_dir: str = ""
  flip: bool = True
  color_jitter: bool = True
  hue: float = 0.05
  saturation: tuple[float, float] = (0.2, 1.3)
  brightness: float = 0.1
  contrast: tuple[float, float] = (0.2, 1.5)

  @classmethod
  def from_config(cls, data_config) -> "PairOptions":
    """The options in `config.data`."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: data_config[k] for k in fields if k in data_config}
    for k in ("saturation", "contrast"):
      if k in values:
        values[k] = tuple(float(v) for v in values[k])
    return cls(**values)

  def __post_init__(self):
    # Checked here so that a bad setting fails at start-up, not in every example in the workers.
    if self.paint_order not in PAINT_ORDERS:
      raise ValueError(f"paint_order must be one of {PAINT_ORDERS}, got {self.paint_order!r}")
    if self.image_size <= 0:
      raise ValueError(f"image_size must be positive, got {self.image_size}")
    _painter(self)  # Unknown mask families, bad weights or templates raise here.


_PAINTERS = {}  # One painter per process and options: templates are loaded once.


def _painter(options: PairOptions):
  key = (options.mask_families, options.mask_weights, options.templates_dir)
  if key not in _PAINTERS:
    _PAINTERS[key] = masks.MaskPainter(
      families=options.mask_families,
      weights=options.mask_weights or None,
      templates_dir=options.templates_dir or None,
    )
  return _PAINTERS[key]


# RGB -> YIQ: hue is a rotation of the (I, Q) chroma plane, saturation a scaling of it.
_RGB_TO_YIQ = np.array(
  [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]]
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def jitter_transform(rng: np.random.Generator, options: PairOptions, mean) -> np.ndarray:
  """A random (3, 4) affine colour map: brightness, contrast, saturation, then hue.

  Brightness adds a value in [-brightness, brightness]; contrast scales about `mean` (the
  clean image's per-channel mean, as in tf.image.adjust_contrast) by a factor drawn from
  `contrast`; saturation scales the YIQ chroma by a factor from `saturation` (PIL's
  ImageEnhance.Color: 0 = gray); hue rotates the chroma by up to `hue` of a full turn. All four
  are affine per pixel, so they compose into one matrix applied in a single pass.
  """
  delta = rng.uniform(-options.brightness, options.brightness)
  factor = rng.uniform(*options.contrast)
  saturation = rng.uniform(*options.saturation)
  angle = 2.0 * np.pi * rng.uniform(-options.hue, options.hue)
  cos, sin = np.cos(angle), np.sin(angle)
  chroma = saturation * np.array([[cos, -sin], [sin, cos]])
  yiq = np.eye(3)
  yiq[1:, 1:] = chroma
  color = _YIQ_TO_RGB @ yiq @ _RGB_TO_YIQ
  mean = np.asarray(mean, np.float64)
  linear = factor * color
  offset = color @ (factor * delta + (1.0 - factor) * mean)
  return np.concatenate([linear, offset[:, None]], axis=1)


def color_jitter(images, rng: np.random.Generator, options: PairOptions, *, reference):
  """The same random colour change on every image; values end clipped to [0, 1].

  The map is per pixel and shared (contrast uses the mean of `reference`), so pixels equal in
  two images before stay equal after. Float32 images in [0, 1] or uint8 ones (0..255: OpenCV's
  8-bit path rounds and saturates, the same map to within a level).
  """
  scale = 255.0 if reference.dtype == np.uint8 else 1.0
  matrix = jitter_transform(rng, options, reference.reshape(-1, 3).mean(axis=0) / scale)
  out = []
  for image in images:
    if image.dtype == np.uint8:
      out.append(cv2.transform(np.ascontiguousarray(image), matrix * [1, 1, 1, 255]))
      continue
    x = cv2.transform(np.ascontiguousarray(image, np.float32), matrix)
    out.append(np.clip(x, 0.0, 1.0, out=x))
  return out


def make_pair(
  image,
  points68,
  rng: np.random.Generator,
  options: PairOptions,
  *,
  augment: bool,
  dtype=np.float32,
):
  """One training example from a photo and its 68 landmarks.

  Args:
    image: uint8 HxWx3 RGB photo.
    points68: (68, 2) landmarks in the photo.
    rng: the example's generator (mask, flip and jitter are drawn from it, in that order).
    options: crop, mask and augmentation settings.
    augment: apply the flip and colour jitter (training only).
    dtype: np.float32 (images in [0, 1]) or np.uint8 (0..255) for `masked`, `clean`, `mask`.

  Returns:
    dict: `masked`, `clean` [H, W, 3]; `mask` [H, W, 1] (0 or 1); `family` int32; `valid`
    float32 (1).
  """
  dtype = np.dtype(dtype)
  if dtype not in (np.float32, np.uint8):
    raise ValueError(f"make_pair makes float32 or uint8 images, not {dtype}")
  size = options.image_size
  matrix = crop.crop_transform(
    points68, size=size, margin=options.margin, level_eyes=options.level_eyes
  )
  painter = _painter(options)
  if options.paint_order == "auto":
    # The crop's scale: > 1 when it enlarges the photo.
    crop_first = np.sqrt(abs(np.linalg.det(matrix[:, :2]))) <= 1.0
  else:
    crop_first = options.paint_order == "crop_then_paint"
  if crop_first:
    clean = crop.warp(image, matrix, size)
    painted = painter.paint(clean, crop.transform_points(points68, matrix), rng)
    masked, mask = painted.image, painted.mask
  else:
    painted = painter.paint(image, np.asarray(points68, np.float32), rng)
    clean = crop.warp(image, matrix, size)
    masked = crop.warp(painted.image, matrix, size)
    mask = crop.warp_mask(painted.mask, matrix, size)
  mask = mask.astype(dtype)[..., None]
  if augment and options.flip and rng.random() < 0.5:
    clean, masked, mask = clean[:, ::-1], masked[:, ::-1], mask[:, ::-1]
  if dtype == np.float32:
    clean = clean.astype(np.float32) / 255.0
    masked = masked.astype(np.float32) / 255.0
  if augment and options.color_jitter:
    masked, clean = color_jitter([masked, clean], rng, options, reference=clean)
  return {
    "masked": np.ascontiguousarray(masked, dtype=dtype),
    "clean": np.ascontiguousarray(clean, dtype=dtype),
    "mask": np.ascontiguousarray(mask, dtype=dtype),
    "family": np.int32(masks.FAMILY_NAMES.index(painted.family)),
    "valid": np.float32(1.0),
  }


def padding_example(size: int) -> dict:
  """An all-zero evaluation example with valid=0 and index=-1 (fills the last batch)."""
  return {
    "masked": np.zeros((size, size, 3), np.float32),
    "clean": np.zeros((size, size, 3), np.float32),
    "mask": np.zeros((size, size, 1), np.float32),
    "family": np.int32(0),
    "valid": np.float32(0.0),
    "index": np.int32(-1),
  }
