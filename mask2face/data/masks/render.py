"""Rasterising, shading and compositing a mask inside the face's region of interest.

Every family (procedural or template) ends here: its coverage (alpha) and colour (albedo or
premultiplied colour) are computed only over a box around the mask, shaded, and blended into a
copy of the photo. The binary mask is the alpha thresholded at 0.5; alpha that could change
pixels away from it is dropped so that the binary mask and the changed pixels agree up to the
anti-aliased edge.

Shading never reads the pixels a mask covers: a mask whose brightness followed the skin it
hides would tell a model what lies beneath it (real masks do not). The light is measured on
the visible upper face (`visible_lighting`: brows, eyes, upper cheeks, all above the eye guard
that cuts every mask's alpha) and the rest is drawn at random.
"""

import dataclasses
import typing

import cv2
import numpy as np

from mask2face.data.masks.geometry import FaceGeometry

# Sub-pixel precision for cv2's anti-aliased polygons: 4 fractional bits (1/16 px).
_SHIFT = 4
_SCALE = float(1 << _SHIFT)


@dataclasses.dataclass
class Canvas:
  """A box of the photo (x0:x1, y0:y1) with face-frame coordinates of its pixel centres."""

  geom: FaceGeometry
  x0: int
  y0: int
  x1: int
  y1: int
  u: np.ndarray  # (h, w) float32, face-frame u in pixels.
  v: np.ndarray  # (h, w) float32, face-frame v in pixels.

  @property
  def shape(self) -> tuple[int, int]:
    return (self.y1 - self.y0, self.x1 - self.x0)

  def _local(self, poly_xy) -> np.ndarray:
    local = (np.asarray(poly_xy, dtype=np.float64) - (self.x0, self.y0)) * _SCALE
    return np.round(local).astype(np.int32).reshape(-1, 1, 2)

  def fill(self, polys_uv) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of face-frame polygons (a list of (n, 2) arrays)."""
    layer = np.zeros(self.shape, np.uint8)
    pts = [self._local(self.geom.to_image(p)) for p in polys_uv]
    cv2.fillPoly(layer, pts, 255, cv2.LINE_AA, _SHIFT)
    return layer.astype(np.float32) * (1.0 / 255.0)

  def lines(self, lines_uv, thickness: float, closed: bool = False) -> np.ndarray:
    """Anti-aliased coverage of face-frame polylines drawn `thickness` pixels wide."""
    layer = np.zeros(self.shape, np.uint8)
    pts = [self._local(self.geom.to_image(p)) for p in lines_uv]
    cv2.polylines(layer, pts, closed, 255, max(1, round(thickness)), cv2.LINE_AA, _SHIFT)
    return layer.astype(np.float32) * (1.0 / 255.0)


def make_canvas(geom: FaceGeometry, image_shape, polys_uv, pad: float = 3.0) -> Canvas | None:
  """The box holding every face-frame point in `polys_uv` (clipped to the image), or None."""
  xy = geom.to_image(np.concatenate([np.asarray(p).reshape(-1, 2) for p in polys_uv]))
  h, w = image_shape[:2]
  x0 = int(max(0, np.floor(xy[:, 0].min() - pad)))
  y0 = int(max(0, np.floor(xy[:, 1].min() - pad)))
  x1 = int(min(w, np.ceil(xy[:, 0].max() + pad) + 1))
  y1 = int(min(h, np.ceil(xy[:, 1].max() + pad) + 1))
  if x1 <= x0 or y1 <= y0:
    return None
  gy, gx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
  dx = gx - np.float32(geom.origin[0])
  dy = gy - np.float32(geom.origin[1])
  ex, ey = geom.ex.astype(np.float32), geom.ey.astype(np.float32)
  return Canvas(geom, x0, y0, x1, y1, u=dx * ex[0] + dy * ex[1], v=dx * ey[0] + dy * ey[1])


class Lighting(typing.NamedTuple):
  """The light on a face, as seen on its visible upper face."""

  level: float = 0.5  # Median luminance in [0, 1].
  value: float = 0.55  # Median HSV value (brightest channel) in [0, 1].
  side: float = 0.0  # (right - left) / (right + left) median luminance: > 0 lit from image-right.


# Fewer measured pixels than this (a face cut off by the photo's edge) give the defaults.
_MIN_LIGHT_PIXELS = 16


def visible_lighting(image: np.ndarray, geom: FaceGeometry) -> Lighting:
  """The light on the upper face: the band from above the brows down to the eye guard.

  No mask reaches there: `composite` cuts every alpha to 0 from 0.5 px above the guard, so the
  binary mask starts at the guard and its blended edge within 1.5 px of it; the band ends 2 px
  above it. So nothing under the mask ever reaches a mask's colour. Medians keep the dark eyes
  and brows from dominating.
  """
  fp = geom.face_points
  top = float(fp[17:27, 1].min()) - 0.3 * geom.iod  # Some forehead, when the photo has it.
  bottom = geom.eye_guard_v() - 2.0
  left, right = float(fp[[0, 16], 0].min()), float(fp[[0, 16], 0].max())
  band = np.array([[left, top], [right, top], [right, bottom], [left, bottom]])
  canvas = make_canvas(geom, image.shape, [band], pad=0.0)
  if canvas is None or bottom <= top:
    return Lighting()
  u, v = canvas.u, canvas.v
  inside = (v >= top) & (v <= bottom) & (u >= left) & (u <= right)
  if inside.sum() < _MIN_LIGHT_PIXELS:
    return Lighting()
  roi = image[canvas.y0 : canvas.y1, canvas.x0 : canvas.x1]
  lum = gray(roi)[inside].astype(np.float32)
  value = roi.max(axis=2)[inside].astype(np.float32)
  mid = 0.5 * (left + right)
  halves = [lum[u[inside] < mid], lum[u[inside] >= mid]]
  side = 0.0
  if min(h.size for h in halves) >= _MIN_LIGHT_PIXELS:
    lo, hi = (float(np.median(h)) for h in halves)
    side = (hi - lo) / max(hi + lo, 1.0)
  return Lighting(float(np.median(lum)) / 255.0, float(np.median(value)) / 255.0, side)


def gray(image_roi: np.ndarray) -> np.ndarray:
  """uint8 luminance of an RGB box."""
  return cv2.cvtColor(np.ascontiguousarray(image_roi), cv2.COLOR_RGB2GRAY)


def light_direction(rng: np.random.Generator, side: float) -> float:
  """The light's left/right component: the upper face's balance, blurred by a random draw."""
  return float(np.clip(1.5 * side + rng.uniform(-0.4, 0.4), -0.7, 0.7))


def soft_shading(shape, rng: np.random.Generator, amount: float) -> np.ndarray:
  """Random low-frequency brightness in [1 - amount, 1 + amount]: soft shadows and creases."""
  h, w = shape
  grid = rng.uniform(-1.0, 1.0, (3, 3)).astype(np.float32)
  field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
  return 1.0 + np.float32(amount) * np.clip(field, -1.0, 1.0)


def light_shading(
  canvas: Canvas, rng: np.random.Generator, center, radii, side: float = 0.0
) -> np.ndarray:
  """Lambert shading of an ellipsoid fitted to the lower face; the light comes from the side
  the visible upper face is brighter on (`side`, see `Lighting`), jittered at random."""
  un = (canvas.u - np.float32(center[0])) / np.float32(radii[0])
  vn = (canvas.v - np.float32(center[1])) / np.float32(radii[1])
  nz = np.sqrt(np.clip(1.0 - 0.7 * un * un - 0.3 * vn * vn, 0.05, 1.0))
  light = np.array([light_direction(rng, side), rng.uniform(-0.6, 0.2), 1.0], dtype=np.float32)
  light /= np.linalg.norm(light)
  lambert = (0.8 * un * light[0] + 0.5 * vn * light[1] + nz * light[2]) / np.sqrt(
    0.64 * un * un + 0.25 * vn * vn + nz * nz
  )
  ambient = np.float32(rng.uniform(0.35, 0.55))
  return ambient + (1.0 - ambient) * np.clip(lambert, 0.0, 1.0)


def composite(
  image: np.ndarray,
  canvas: Canvas | None,
  alpha: np.ndarray | None,
  colour: np.ndarray | None,
  *,
  premultiplied: bool = False,
  eye_guard_v: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Blends `colour` (float RGB in [0, 1]) over `image` with `alpha`; returns (image, mask).

  Alpha above `eye_guard_v` (face frame) is cut so no mask ever covers an eye; alpha below
  0.5 that is not next to the binary mask (thin slivers) is dropped so that every changed
  pixel lies within one pixel of the mask.
  """
  out = image.copy()
  mask = np.zeros(image.shape[:2], dtype=bool)
  if canvas is None:
    return out, mask
  if eye_guard_v is not None:
    guard = np.clip(canvas.v - np.float32(eye_guard_v) + 0.5, 0.0, 1.0)
    alpha = alpha * guard
    if premultiplied:
      colour = colour * guard[..., None]
  binary = alpha >= 0.5
  near = cv2.dilate(binary.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
  alpha = np.where(near, alpha, 0.0).astype(np.float32)
  sl = np.s_[canvas.y0 : canvas.y1, canvas.x0 : canvas.x1]
  roi = out[sl].astype(np.float32)
  a = alpha[..., None]
  if premultiplied:
    colour = np.where(near[..., None], colour, 0.0)
    blended = roi * (1.0 - a) + colour * 255.0
  else:
    blended = roi * (1.0 - a) + colour * (255.0 * a)
  out[sl] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
  mask[sl] = binary
  return out, mask
