"""Square face crops from 68 landmarks: one affine matrix for the masked, clean and mask images.

The face box is the bounding box of the 68 landmarks (always available, even for the
tight-crop fallback, unlike a detector box), made square around its centre and widened by
`margin` of its side on every side (upstream Mask2Face widened the dlib box by 1/3). With
`level_eyes` the crop is rotated about the box centre so the eye centres lie on a horizontal
line; the box is then measured in the rotated frame.

Out-of-image pixels: images use border replication (no hard black edges that a network would
have to learn to reproduce, and image statistics stay natural); masks use a constant 0, so
nothing outside the photo is ever marked as covered.

Coordinates: points are (x, y) with integer values at pixel centres (dlib's convention).
"""

import math

import cv2
import numpy as np

_LEFT_EYE = slice(36, 42)  # The subject's right eye, on the image's left.
_RIGHT_EYE = slice(42, 48)

_INTERPOLATIONS = {
  "nearest": cv2.INTER_NEAREST,
  "linear": cv2.INTER_LINEAR,
  "cubic": cv2.INTER_CUBIC,
  "area": cv2.INTER_AREA,
}


def _check_points(points68):
  points = np.asarray(points68, dtype=np.float64)
  if points.shape != (68, 2):
    raise ValueError(f"expected 68 (x, y) landmarks, got an array of shape {points.shape}")
  if not np.all(np.isfinite(points)):
    raise ValueError("landmarks contain NaN or infinite values")
  return points


def eye_angle(points68) -> float:
  """Angle (radians) of the line from the left-hand eye centre to the right-hand one."""
  points = _check_points(points68)
  left = points[_LEFT_EYE].mean(axis=0)
  right = points[_RIGHT_EYE].mean(axis=0)
  return math.atan2(right[1] - left[1], right[0] - left[0])


def crop_transform(points68, *, size: int, margin: float = 1.0 / 3.0, level_eyes: bool = False):
  """The (2, 3) affine matrix mapping image pixels to the crop's pixels.

  Args:
    points68: (68, 2) landmarks as (x, y) pixels.
    size: side of the square crop in pixels.
    margin: the square face box is widened by this fraction of its side on every side.
    level_eyes: rotate so that the eyes are horizontal in the crop.

  Returns:
    float64 (2, 3) matrix `m`: crop = m @ [x, y, 1].
  """
  points = _check_points(points68)
  if size <= 0:
    raise ValueError(f"crop size must be positive, got {size}")
  if margin < 0:
    raise ValueError(f"margin must be >= 0, got {margin}")
  angle = eye_angle(points) if level_eyes else 0.0
  cos, sin = math.cos(angle), math.sin(angle)
  # Rotation by -angle takes the eye line to the horizontal.
  rotation = np.array([[cos, sin], [-sin, cos]])
  rotated = points @ rotation.T
  lo, hi = rotated.min(axis=0), rotated.max(axis=0)
  # A degenerate box (all points equal) still gives a usable, tiny crop.
  side = max(float((hi - lo).max()), 1.0) * (1.0 + 2.0 * margin)
  centre = (lo + hi) / 2.0  # In the rotated frame.
  scale = size / side
  linear = scale * rotation
  # Pixel-centre convention: the box's edges map onto the crop's edges [-0.5, size - 0.5].
  offset = (size - 1) / 2.0 - scale * centre
  return np.concatenate([linear, offset[:, None]], axis=1)


def transform_points(points, matrix) -> np.ndarray:
  """Applies a (2, 3) affine matrix to (N, 2) points; returns float32 (N, 2)."""
  points = np.asarray(points, dtype=np.float64)
  matrix = np.asarray(matrix, dtype=np.float64)
  return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def warp(image, matrix, size: int, *, interpolation: str = "linear", border: str = "replicate"):
  """Warps `image` (HxW or HxWxC) into a `size` x `size` crop with `matrix`.

  Strong downscaling (the crop is less than half the photo's resolution) first shrinks the
  photo with area averaging, since bilinear warping alone would alias.

  Args:
    image: the photo (any dtype cv2 handles: uint8, float32, ...).
    matrix: (2, 3) from `crop_transform`.
    size: crop side in pixels.
    interpolation: 'nearest' | 'linear' | 'cubic'.
    border: 'replicate' (edge pixels repeated) or 'constant' (zeros).
  """
  if interpolation not in _INTERPOLATIONS or interpolation == "area":
    raise ValueError(f"interpolation must be nearest, linear or cubic, got {interpolation!r}")
  if border not in ("replicate", "constant"):
    raise ValueError(f"border must be 'replicate' or 'constant', got {border!r}")
  image = np.asarray(image)
  matrix = np.asarray(matrix, dtype=np.float64)
  scale = math.sqrt(abs(np.linalg.det(matrix[:, :2])))
  if interpolation != "nearest" and scale < 0.5:
    factor = int(1.0 / scale)  # Keep the remaining warp at scale >= 0.5.
    height, width = image.shape[:2]
    new_w, new_h = max(1, round(width / factor)), max(1, round(height / factor))
    small = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    if small.ndim < image.ndim:  # cv2 drops a trailing channel axis of size 1.
      small = small[..., None]
    # Pixel centres: x_small = (x + 0.5) * new_w / width - 0.5.
    sx, sy = new_w / width, new_h / height
    to_small = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
    back = np.linalg.inv(to_small)
    matrix = (np.vstack([matrix, [0, 0, 1]]) @ back)[:2]
    image = small
  border_mode = cv2.BORDER_REPLICATE if border == "replicate" else cv2.BORDER_CONSTANT
  out = cv2.warpAffine(
    image,
    matrix,
    (size, size),
    flags=_INTERPOLATIONS[interpolation],
    borderMode=border_mode,
    borderValue=0,
  )
  if out.ndim < image.ndim:
    out = out[..., None]
  return out


def warp_mask(mask, matrix, size: int) -> np.ndarray:
  """Warps a binary HxW mask with linear interpolation, then thresholds at 0.5: bool HxW."""
  mask = np.asarray(mask)
  if mask.ndim == 3 and mask.shape[-1] == 1:
    mask = mask[..., 0]
  if mask.ndim != 2:
    raise ValueError(f"mask must be HxW, got shape {mask.shape}")
  soft = warp(mask.astype(np.float32), matrix, size, interpolation="linear", border="constant")
  return soft >= 0.5
