"""Face geometry for mask painting: a face-aligned frame, jaw lookups, tilt and the six points.

Everything here works on dlib's 68 landmarks as (x, y) pixels: jaw 0-16, brows 17-26, nose
bridge 27-30, nose base 31-35, eyes 36-47, lips 48-67. The face frame has its origin at the
top of the nose bridge, `u` along the eye line (towards the image-right eye) and `v`
perpendicular to it, pointing down the face, so head roll disappears and masks can be drawn
upright and mapped back.
"""

import dataclasses
import math

import cv2
import numpy as np

# The variant threshold MaskTheFace uses to pick `_left` / `_right` templates.
TILT_THRESHOLD_DEGREES = 13.0


@dataclasses.dataclass(frozen=True)
class FaceGeometry:
  """Landmarks plus the face frame they define (see the module docstring)."""

  points: np.ndarray  # (68, 2) float64 image pixels.
  origin: np.ndarray  # (2,) top of the nose bridge (point 27).
  ex: np.ndarray  # (2,) unit vector along the eye line.
  ey: np.ndarray  # (2,) unit vector down the face.
  iod: float  # Distance between the eye centres, the unit of every size below.

  @classmethod
  def from_points(cls, points) -> "FaceGeometry":
    """Builds the frame; raises ValueError when the points cannot be a face."""
    points = np.asarray(points, dtype=np.float64)
    if points.shape != (68, 2):
      raise ValueError(f"landmarks must have shape (68, 2), got {points.shape}")
    if not np.all(np.isfinite(points)):
      raise ValueError("landmarks contain NaN or infinite values")
    eye_l = points[36:42].mean(axis=0)
    eye_r = points[42:48].mean(axis=0)
    axis = eye_r - eye_l
    iod = float(np.hypot(*axis))
    if iod < 1.0:
      raise ValueError(f"landmarks are degenerate: eye distance {iod:.2f} px")
    ex = axis / iod
    ey = np.array([-ex[1], ex[0]])  # (1, 0) -> (0, 1): down in image coordinates.
    return cls(points=points, origin=points[27].copy(), ex=ex, ey=ey, iod=iod)

  def to_face(self, xy) -> np.ndarray:
    """Image (x, y) -> face frame (u, v); any leading shape."""
    d = np.asarray(xy, dtype=np.float64) - self.origin
    return np.stack([d @ self.ex, d @ self.ey], axis=-1)

  def to_image(self, uv) -> np.ndarray:
    """Face frame (u, v) -> image (x, y); any leading shape."""
    uv = np.asarray(uv, dtype=np.float64)
    return self.origin + uv[..., :1] * self.ex + uv[..., 1:2] * self.ey

  @property
  def face_points(self) -> np.ndarray:
    """All 68 landmarks in the face frame."""
    return self.to_face(self.points)

  def eye_guard_v(self, margin: float = 0.08) -> float:
    """The face-frame `v` a mask must stay below so that it never covers an eye."""
    return float(self.face_points[36:48, 1].max() + margin * self.iod)

  def tilt_degrees(self) -> float:
    """Signed angle between the nose bridge and the bridge-top -> lower-lip line.

    Positive when the nose points to the image's left (the face turns that way), which is
    when MaskTheFace picks the `_left` template.
    """
    p = self.points
    to_lip = p[57] - p[27]
    bridge = p[30] - p[27]
    cross = to_lip[0] * bridge[1] - to_lip[1] * bridge[0]
    return math.degrees(math.atan2(cross, float(to_lip @ bridge)))

  def variant(self) -> str:
    """'' (frontal), '_left' or '_right', chosen by tilt the MaskTheFace way."""
    tilt = self.tilt_degrees()
    if tilt > TILT_THRESHOLD_DEGREES:
      return "_left"
    if tilt < -TILT_THRESHOLD_DEGREES:
      return "_right"
    return ""


def jaw_at(jaw: np.ndarray, index) -> np.ndarray:
  """Linear interpolation along the 17 jaw points at fractional indices."""
  index = np.clip(np.asarray(index, dtype=np.float64), 0.0, 16.0)
  lo = np.minimum(np.floor(index).astype(int), 15)
  frac = (index - lo)[..., None]
  return jaw[lo] * (1.0 - frac) + jaw[lo + 1] * frac


def push_out(points: np.ndarray, center: np.ndarray, amount) -> np.ndarray:
  """Moves points away from `center` by `amount` (same units), radially."""
  d = points - center
  n = np.maximum(np.hypot(d[..., 0], d[..., 1]), 1e-6)[..., None]
  return points + d / n * np.asarray(amount, dtype=np.float64)[..., None]


def _crossings(poly_uv: np.ndarray, level: float) -> list[np.ndarray]:
  """Points where a face-frame polyline crosses the line v = level, in polyline order."""
  v = poly_uv[:, 1] - level
  out = []
  for i in np.nonzero(v[:-1] * v[1:] <= 0)[0]:
    a, b = poly_uv[i], poly_uv[i + 1]
    t = 0.0 if v[i] == v[i + 1] else v[i] / (v[i] - v[i + 1])
    out.append(a + (b - a) * t)
  return out


def _ellipse_crossings(jaw_uv: np.ndarray, level: float) -> list[np.ndarray] | None:
  """Where v = level meets an ellipse fitted to the jaw (MaskTheFace's fallback)."""
  (cx, cy), (w, h), angle = cv2.fitEllipse(jaw_uv.astype(np.float32))
  a, b = w / 2.0, h / 2.0
  t = math.radians(angle)
  c, s = math.cos(t), math.sin(t)
  # Points (u, level): solve the ellipse equation for u, a quadratic in du = u - cx.
  dy = level - cy
  # Rotate into the ellipse frame: x' = du*c + dy*s, y' = -du*s + dy*c.
  qa = (c / a) ** 2 + (s / b) ** 2
  qb = 2 * dy * (c * s / a**2 - c * s / b**2)
  qc = (s * dy / a) ** 2 + (c * dy / b) ** 2 - 1.0
  disc = qb * qb - 4 * qa * qc
  if disc < 0 or qa <= 0:
    return None
  r = math.sqrt(disc)
  us = sorted([(-qb - r) / (2 * qa) + cx, (-qb + r) / (2 * qa) + cx])
  return [np.array([us[0], level]), np.array([us[1], level])]


def _side_points(jaw_uv: np.ndarray, level: float, fallback: tuple[int, int]):
  """The left and right jaw crossings of v = level (ellipse, then fixed points, if missed)."""
  left = _crossings(jaw_uv[:9], level)
  right = _crossings(jaw_uv[8:], level)
  if left and right:
    return left[0], right[-1]
  ellipse = _ellipse_crossings(jaw_uv, level)
  if ellipse is not None:
    return ellipse[0], ellipse[1]
  return jaw_uv[fallback[0]], jaw_uv[fallback[1]]


def six_points(geom: FaceGeometry) -> np.ndarray:
  """MaskTheFace's target points a..f in image pixels, shape (6, 2), rows a, b, c, d, e, f.

  b: middle of the nose bridge; a, c: the jaw at one nose-length below the bridge top
  (parallel to the eye line); d, f: the jaw at the lowest lip point; e: the chin, where the
  line from the bridge top through the lower lip meets the jaw.
  """
  fp = geom.face_points
  jaw = fp[:17]
  nose_length = float(np.hypot(*(fp[30] - fp[27])))
  b = (fp[27] + fp[30]) / 2.0
  a, c = _side_points(jaw, fp[27, 1] + nose_length, (1, 15))
  d, f = _side_points(jaw, fp[48:68, 1].max(), (4, 12))
  # e: the chin along the bridge-top -> lower-lip axis (straight down the face if degenerate).
  axis = fp[57] - fp[27]
  axis = axis / max(float(np.hypot(*axis)), 1e-6)
  e = fp[8]
  for i in range(3, 13):
    p, q = jaw[i], jaw[i + 1]
    # Solve fp27 + s * axis = p + t * (q - p) for s > 0, t in [0, 1].
    m = np.array([axis, p - q]).T
    if abs(np.linalg.det(m)) < 1e-9:
      continue
    s, t = np.linalg.solve(m, p - fp[27])
    if s > 0 and 0.0 <= t <= 1.0:
      e = p + (q - p) * t
      break
  return geom.to_image(np.stack([a, b, c, d, e, f]))
