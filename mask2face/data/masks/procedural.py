"""Procedural mask families drawn from the 68 landmarks: outline, colour, pattern and shading.

Each family is a function `(geom, image, rng) -> (image, mask)`. Shapes are built in the face
frame (geometry.py), so they follow the jaw, the nose bridge and the head's roll; per-sample
jitter (fit, height, attachment points, colours, patterns, light) all comes from `rng`, so a
seed fixes the result. The light comes from the visible upper face only (render.py). Sizes are in units of the eye distance (`iod`) to be resolution-free.
"""

import colorsys
import typing

import cv2
import numpy as np

from mask2face.data.masks import render
from mask2face.data.masks.geometry import FaceGeometry, jaw_at, push_out


class _Face:
  """Face-frame measurements every family needs."""

  def __init__(self, geom: FaceGeometry):
    self.geom = geom
    self.fp = fp = geom.face_points
    self.iod = geom.iod
    self.jaw = fp[:17]
    self.center = fp[33]  # Nose base: the outline is pushed away from here.
    self.guard_v = geom.eye_guard_v()
    self.mid_u = float(self.jaw[[0, 16], 0].mean())
    self.chin_v = float(self.jaw[8, 1])

  def bridge(self, h: float) -> np.ndarray:
    """A point on the nose bridge: h=0 at point 28, h=1 at point 30 (clear of the eyes)."""
    p = self.fp[28] + (self.fp[30] - self.fp[28]) * h
    return np.array([p[0], max(p[1], self.guard_v)])

  def lower_jaw(self, start: float, end: float, fit: float, chin_drop: float, n: int = 24):
    """The jaw between fractional indices, pushed out by `fit` (more at the chin)."""
    idx = np.linspace(start, end, n)
    bell = np.exp(-(((idx - 8.0) / 4.0) ** 2))
    return push_out(jaw_at(self.jaw, idx), self.center, fit + chin_drop * bell)

  def ellipsoid(self):
    """Centre and radii of the lower face, for the light model."""
    half_w = max(float(self.jaw[12:17, 0].max() - self.jaw[0:5, 0].min()) / 2.0, 1.0)
    center = (self.mid_u, float(self.fp[33, 1]))
    return center, (half_w * 1.1, max(self.chin_v - self.fp[28, 1], 1.0))


def _arc(p, q, bulge: float, up, n: int = 12) -> np.ndarray:
  """Points from p to q bowed by `bulge` pixels along `up` (a sine profile)."""
  t = np.linspace(0.0, 1.0, n)[:, None]
  return p * (1 - t) + q * t + np.sin(np.pi * t) * bulge * np.asarray(up, dtype=np.float64)


_UP = np.array([0.0, -1.0])


def _colour(rng, hue=None, sat=(0.0, 1.0), val=(0.1, 0.95)) -> np.ndarray:
  """A random RGB colour in [0, 1] (hue in [0, 1) or drawn)."""
  h = rng.uniform(0.0, 1.0) if hue is None else hue
  return np.array(colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val)), np.float32)


def _jitter(colour, rng, amount: float = 0.04) -> np.ndarray:
  return np.clip(np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3), 0.0, 1.0)


def _pick(rng, options):
  return options[int(rng.integers(len(options)))]


def _soft_step(x: np.ndarray, width: float = 1.0) -> np.ndarray:
  """0 -> 1 across a ramp of `width` pixels centred on 0 (anti-aliased pattern edges)."""
  return np.clip(x / width + 0.5, 0.0, 1.0)


def _pattern(canvas, rng, base, iod: float, kind: str) -> np.ndarray:
  """Albedo for cloth-like fabrics: solid, stripes, checks, dots or a noisy weave."""
  h, w = canvas.shape
  albedo = np.broadcast_to(base, (h, w, 3)).astype(np.float32)
  if kind == "solid":
    return albedo
  if kind == "textured":
    gh, gw = max(2, h // 3), max(2, w // 3)
    noise = cv2.resize(rng.random((gh, gw), dtype=np.float32), (w, h), cv2.INTER_LINEAR)
    return albedo * (0.8 + 0.35 * noise[..., None])
  second = _colour(rng, val=(0.3, 1.0))
  period = rng.uniform(0.12, 0.3) * iod
  angle = rng.uniform(0, np.pi)
  a = canvas.u * np.float32(np.cos(angle)) + canvas.v * np.float32(np.sin(angle))
  if kind == "stripes":
    t = _soft_step(np.sin(a * np.float32(2 * np.pi / period)) * (period / 6.0))
  elif kind == "checks":
    b = -canvas.u * np.float32(np.sin(angle)) + canvas.v * np.float32(np.cos(angle))
    sa = np.sin(a * np.float32(2 * np.pi / period))
    sb = np.sin(b * np.float32(2 * np.pi / period))
    t = 0.5 * _soft_step(sa * (period / 6.0)) + 0.5 * _soft_step(sb * (period / 6.0))
  else:  # dots
    b = -canvas.u * np.float32(np.sin(angle)) + canvas.v * np.float32(np.cos(angle))
    fa = (a / np.float32(period)) % 1.0 - 0.5
    fb = (b / np.float32(period)) % 1.0 - 0.5
    dist = np.sqrt(fa * fa + fb * fb) * np.float32(period)
    t = _soft_step(np.float32(period * rng.uniform(0.15, 0.3)) - dist)
  return albedo * (1.0 - t[..., None]) + second * t[..., None]


def _finish(geom, face: _Face, image, canvas, alpha, albedo, rng):
  """Shades the albedo with the upper face's light and random soft shadows, then composites.

  Nothing here reads the pixels the mask covers (see render.visible_lighting).
  """
  if canvas is None:
    return render.composite(image, None, None, None)
  light = render.visible_lighting(image, geom)
  center, radii = face.ellipsoid()
  shade = render.light_shading(canvas, rng, center, radii, side=light.side)
  shade *= render.soft_shading(canvas.shape, rng, amount=rng.uniform(0.03, 0.12))
  # Darker photos get darker masks; the offset keeps a white mask white in a bright photo.
  shade *= np.float32(np.clip(0.3 + 0.95 * light.level, 0.35, 1.15))
  colour = albedo * shade[..., None]
  # Fine grain, so flat colours do not look painted.
  grain = rng.standard_normal(colour.shape[:2], dtype=np.float32) * np.float32(0.012)
  colour += grain[..., None]
  # Capped just below white (as for templates): a white mask on a blown-out background shows.
  return render.composite(
    image, canvas, alpha, np.clip(colour, 0.0, 0.98), eye_guard_v=face.guard_v
  )


def _ear_loops(face: _Face, top_l, bot_l, top_r, bot_r) -> list[np.ndarray]:
  """Elastic loops from the mask's corners back to just outside the jaw at ear height."""
  loops = []
  for side, top, bot in ((0, top_l, bot_l), (16, top_r, bot_r)):
    ear = push_out(jaw_at(face.jaw, 1.0 if side == 0 else 15.0), face.center, 0.25 * face.iod)
    ear[1] = max(ear[1], face.guard_v + 0.05 * face.iod)
    loops.append(np.stack([top, ear, bot]))
  return loops


class _LoopedShape(typing.NamedTuple):
  """Ranges (low, high) of the uniform draws that shape a soft mask with ear loops."""

  sides: tuple[float, float]  # Where the lower edge leaves the jaw (jaw-point units).
  drops: tuple[tuple[float, float], tuple[float, float]]  # Lower edge below the jaw (iod).
  apex: tuple[float, float]  # How far up the nose bridge the top reaches.
  bulge: tuple[float, float]  # Arch of the top edge (iod).
  thick: float  # Loop thickness (iod).
  loop_at: int  # Lower-edge point where each ear loop's lower strap starts.


_SURGICAL = _LoopedShape(
  (1.2, 2.2), ((0.06, 0.16), (0.05, 0.2)), (0.05, 0.5), (0.0, 0.12), 0.035, 7
)
_CLOTH = _LoopedShape((1.3, 2.4), ((0.03, 0.12), (0.05, 0.25)), (0.1, 0.6), (0.1, 0.25), 0.04, 6)


def _looped_mask(f, geom, image, rng, shape: _LoopedShape):
  """The soft masks' shared shape: a jaw-hugging lower edge, an arched top over the nose
  bridge and two ear loops. Ranges are (low, high) uniform draws, in this order (the order
  fixes which pixels a seed gives); lengths are fractions of the inter-ocular distance.

  Returns (bottom edge, apex, outline, canvas or None when off-image, alpha).
  """
  iod = f.iod
  sides, drops, apex, bulge, thick, loop_at = shape
  s_l, s_r = rng.uniform(*sides, 2)
  bottom = f.lower_jaw(s_l, 16 - s_r, rng.uniform(*drops[0]) * iod, rng.uniform(*drops[1]) * iod)
  apex_point = f.bridge(rng.uniform(*apex))
  arch = rng.uniform(*bulge) * iod
  top = np.concatenate(
    [_arc(bottom[-1], apex_point, arch, _UP), _arc(apex_point, bottom[0], arch, _UP)]
  )
  outline = np.concatenate([bottom, top[1:-1]])
  width = max(2.5, thick * iod)
  loops = _ear_loops(f, bottom[0], bottom[loop_at], bottom[-1], bottom[-1 - loop_at])
  canvas = render.make_canvas(geom, image.shape, [outline, *loops], pad=width)
  if canvas is None:
    return bottom, apex_point, outline, None, None
  alpha = np.maximum(canvas.fill([outline]), canvas.lines(loops, width))
  return bottom, apex_point, outline, canvas, alpha


def surgical(geom: FaceGeometry, image: np.ndarray, rng: np.random.Generator):
  """A pleated surgical mask with a nose wire and ear loops in one of the usual colours."""
  f = _Face(geom)
  iod = f.iod
  bottom, apex, outline, canvas, alpha = _looped_mask(f, geom, image, rng, _SURGICAL)
  if canvas is None:
    return _finish(geom, f, image, None, None, None, rng)
  palette = [(0.55, 0.74, 0.9), (0.93, 0.94, 0.95), (0.55, 0.82, 0.72), (0.95, 0.72, 0.8)]
  palette += [(0.13, 0.13, 0.14), (0.35, 0.5, 0.8)]
  base = _jitter(_pick(rng, palette), rng)
  # Three pleats: a sawtooth in v that darkens the fold under each pleat.
  span = max(float(bottom[:, 1].max() - apex[1]), 1.0)
  phase = (canvas.v - np.float32(apex[1] + rng.uniform(0.1, 0.2) * span)) / np.float32(span / 3.4)
  pleat = 0.9 + 0.12 * (phase % 1.0)
  albedo = base * pleat[..., None]
  # A bound edge and the nose wire, slightly lighter than the body.
  trim = canvas.lines([outline], max(1.5, 0.05 * iod), closed=True)
  albedo = albedo * (1.0 + 0.06 * trim[..., None])
  return _finish(geom, f, image, canvas, alpha, albedo, rng)


def cloth(geom: FaceGeometry, image: np.ndarray, rng: np.random.Generator):
  """A curved fabric mask: solid, striped, checked, dotted or textured, any colour."""
  f = _Face(geom)
  iod = f.iod
  bottom, apex, outline, canvas, alpha = _looped_mask(f, geom, image, rng, _CLOTH)
  if canvas is None:
    return _finish(geom, f, image, None, None, None, rng)
  kind = _pick(rng, ["solid", "solid", "stripes", "checks", "dots", "textured"])
  albedo = _pattern(canvas, rng, _colour(rng, val=(0.12, 0.95)), iod, kind)
  if rng.random() < 0.5:  # A centre seam from the nose to the chin.
    seam = canvas.lines([np.stack([apex, bottom[len(bottom) // 2]])], max(1.5, 0.03 * iod))
    albedo = albedo * (1.0 - 0.25 * seam[..., None])
  return _finish(geom, f, image, canvas, alpha, albedo, rng)


def n95(geom: FaceGeometry, image: np.ndarray, rng: np.random.Generator):
  """A moulded N95 cup with a rim, head straps and, half the time, an exhalation valve."""
  f = _Face(geom)
  iod = f.iod
  s = rng.uniform(1.5, 2.6)
  bottom = f.lower_jaw(s, 16 - s, rng.uniform(0.04, 0.12) * iod, rng.uniform(0.1, 0.3) * iod)
  apex = f.bridge(rng.uniform(0.0, 0.4))
  bulge = rng.uniform(0.25, 0.4) * iod  # The dome of the cup.
  top = np.concatenate([_arc(bottom[-1], apex, bulge, _UP), _arc(apex, bottom[0], bulge, _UP)])
  outline = np.concatenate([bottom, top[1:-1]])
  thick = max(2.5, 0.06 * iod)
  straps = _ear_loops(f, bottom[2], bottom[9], bottom[-3], bottom[-10])
  canvas = render.make_canvas(geom, image.shape, [outline, *straps], pad=thick)
  if canvas is None:
    return _finish(geom, f, image, None, None, None, rng)
  alpha = np.maximum(canvas.fill([outline]), canvas.lines(straps, thick))
  palette = [(0.94, 0.94, 0.92), (0.9, 0.88, 0.82), (0.75, 0.77, 0.8), (0.15, 0.15, 0.16)]
  base = _jitter(_pick(rng, palette), rng)
  albedo = _pattern(canvas, rng, base, iod, "textured")
  strap_colour = _jitter(_pick(rng, [(0.95, 0.85, 0.2), (0.3, 0.5, 0.9), (0.9, 0.9, 0.9)]), rng)
  albedo = np.where(
    (canvas.fill([outline]) < 0.5)[..., None], np.broadcast_to(strap_colour, albedo.shape), albedo
  )
  rim = canvas.lines([outline], max(1.5, 0.07 * iod), closed=True)
  albedo = albedo * (1.0 - 0.15 * rim[..., None])
  if rng.random() < 0.5:
    side = _pick(rng, [-1.0, 1.0])
    cu = f.mid_u + side * rng.uniform(0.3, 0.42) * iod
    cv = float(f.fp[62, 1]) + rng.uniform(-0.05, 0.1) * iod
    r = rng.uniform(0.16, 0.22) * iod
    dist = np.hypot(canvas.u - np.float32(cu), canvas.v - np.float32(cv))
    disk = _soft_step(np.float32(r) - dist)
    ring = _soft_step(np.float32(0.25 * r) - np.abs(dist - np.float32(0.7 * r)))
    valve = _jitter(_pick(rng, [(0.2, 0.2, 0.22), (0.85, 0.3, 0.25), (0.9, 0.9, 0.9)]), rng)
    albedo = (
      albedo * (1.0 - disk[..., None]) + valve * (1.0 - 0.3 * ring)[..., None] * disk[..., None]
    )
  return _finish(geom, f, image, canvas, alpha, albedo, rng)


def kn95(geom: FaceGeometry, image: np.ndarray, rng: np.random.Generator):
  """A folded KN95: pointed at the nose and chin, two panels lit differently, a centre seam."""
  f = _Face(geom)
  iod = f.iod
  s_l, s_r = rng.uniform(1.3, 2.3, 2)
  bottom = f.lower_jaw(s_l, 16 - s_r, rng.uniform(0.04, 0.12) * iod, rng.uniform(0.05, 0.15) * iod)
  apex = f.bridge(rng.uniform(0.0, 0.35))
  mid = len(bottom) // 2
  tip = push_out(bottom[mid], f.center, rng.uniform(0.1, 0.25) * iod)  # The folded point.
  bottom = np.concatenate([bottom[:mid], tip[None], bottom[mid + 1 :]])
  top = np.concatenate([_arc(bottom[-1], apex, 0.0, _UP, 3), _arc(apex, bottom[0], 0.0, _UP, 3)])
  outline = np.concatenate([bottom, top[1:-1]])
  thick = max(2.5, 0.035 * iod)
  loops = _ear_loops(f, bottom[0], bottom[6], bottom[-1], bottom[-7])
  canvas = render.make_canvas(geom, image.shape, [outline, *loops], pad=thick)
  if canvas is None:
    return _finish(geom, f, image, None, None, None, rng)
  alpha = np.maximum(canvas.fill([outline]), canvas.lines(loops, thick))
  palette = [(0.95, 0.95, 0.95), (0.12, 0.12, 0.13), (0.7, 0.72, 0.75), (0.95, 0.75, 0.82)]
  base = _jitter(_pick(rng, palette + [(0.6, 0.75, 0.92)]), rng)
  # Which side of the seam each pixel is on: the two panels face the light differently.
  du, dv = tip - apex
  side = ((canvas.u - np.float32(apex[0])) * np.float32(dv)) - (
    (canvas.v - np.float32(apex[1])) * np.float32(du)
  )
  side /= np.float32(max(np.hypot(du, dv), 1e-6))
  lit = np.float32(rng.uniform(0.8, 0.92))
  panel = np.where((side > 0) == (rng.random() < 0.5), lit, np.float32(1.0))
  seam = _soft_step(np.float32(max(1.0, 0.02 * iod)) - np.abs(side))
  albedo = base * (panel * (1.0 - 0.3 * seam))[..., None]
  stitch = canvas.lines([outline], max(1.5, 0.05 * iod), closed=True)
  albedo = albedo * (1.0 - 0.12 * stitch[..., None])
  return _finish(geom, f, image, canvas, alpha, albedo, rng)


def respirator(geom: FaceGeometry, image: np.ndarray, rng: np.random.Generator):
  """A half-face elastomeric respirator: rubber body, two filter cartridges, a centre valve."""
  f = _Face(geom)
  iod = f.iod
  s = rng.uniform(2.0, 3.0)
  bottom = f.lower_jaw(s, 16 - s, rng.uniform(0.0, 0.06) * iod, rng.uniform(0.1, 0.25) * iod)
  squeeze = rng.uniform(0.8, 0.92)  # The body is narrower than the face.
  bottom[:, 0] = f.mid_u + (bottom[:, 0] - f.mid_u) * squeeze
  apex = f.bridge(rng.uniform(0.0, 0.3))
  bulge = rng.uniform(0.15, 0.3) * iod
  top = np.concatenate([_arc(bottom[-1], apex, bulge, _UP), _arc(apex, bottom[0], bulge, _UP)])
  body = np.concatenate([bottom, top[1:-1]])
  r = rng.uniform(0.3, 0.4) * iod
  carts = []
  centres = []
  for idx in (rng.uniform(4.0, 5.0), 16 - rng.uniform(4.0, 5.0)):
    c = push_out(jaw_at(f.jaw, idx), f.center, rng.uniform(-0.05, 0.1) * iod)
    centres.append(c)
    ang = np.linspace(0, 2 * np.pi, 28, endpoint=False)
    carts.append(c + np.stack([np.cos(ang) * r, np.sin(ang) * r * rng.uniform(0.85, 1.1)], 1))
  canvas = render.make_canvas(geom, image.shape, [body, *carts])
  if canvas is None:
    return _finish(geom, f, image, None, None, None, rng)
  body_a = canvas.fill([body])
  cart_a = canvas.fill(carts)
  alpha = np.maximum(body_a, cart_a)
  body_colour = _jitter(
    _pick(rng, [(0.15, 0.15, 0.17), (0.35, 0.45, 0.6), (0.55, 0.55, 0.58), (0.8, 0.6, 0.6)]), rng
  )
  cart_colour = _jitter(
    _pick(rng, [(0.85, 0.3, 0.6), (0.9, 0.8, 0.3), (0.92, 0.92, 0.9), (0.45, 0.5, 0.3)]), rng
  )
  albedo = np.broadcast_to(body_colour, canvas.shape + (3,)).astype(np.float32)
  # Each cartridge gets a darker rim, a lighter face and a seam ring.
  shade = np.ones(canvas.shape, np.float32)
  for c in centres:
    dist = np.hypot(canvas.u - np.float32(c[0]), canvas.v - np.float32(c[1])) / np.float32(r)
    shade *= 1.0 - 0.3 * _soft_step(np.abs(dist - 0.8) - 0.1, 0.05) * (dist < 1.2)
  albedo = albedo * (1.0 - cart_a[..., None]) + (cart_colour * shade[..., None]) * cart_a[..., None]
  vu, vv = f.mid_u, float(f.fp[57, 1]) + rng.uniform(0.1, 0.25) * iod
  box = np.maximum(
    np.abs(canvas.u - np.float32(vu)) / 0.18, np.abs(canvas.v - np.float32(vv)) / 0.14
  )
  valve = _soft_step(np.float32(iod) - box, np.float32(0.02 * iod / 0.15))
  albedo = albedo * (1.0 - 0.35 * valve[..., None] * (1.0 - cart_a[..., None]))
  return _finish(geom, f, image, canvas, alpha, albedo, rng)


def bandana(geom: FaceGeometry, image: np.ndarray, rng: np.random.Generator):
  """A bandana tied across the nose: a straight top edge, hanging to a point below the chin."""
  f = _Face(geom)
  iod = f.iod
  top_v = float(f.bridge(rng.uniform(0.0, 0.6))[1])
  ext = rng.uniform(0.1, 0.3) * iod
  tl = np.array([float(f.jaw[:4, 0].min()) - ext, top_v])
  tr = np.array([float(f.jaw[13:, 0].max()) + ext, top_v])
  sl = push_out(jaw_at(f.jaw, rng.uniform(4.0, 5.5)), f.center, ext)
  sr = push_out(jaw_at(f.jaw, 16 - rng.uniform(4.0, 5.5)), f.center, ext)
  tip = np.array([f.mid_u + rng.uniform(-0.2, 0.2) * iod, f.chin_v + rng.uniform(0.5, 0.9) * iod])
  chin = push_out(f.jaw[8], f.center, 0.15 * iod)
  tip[1] = max(tip[1], chin[1])
  outline = np.stack([tl, tr, sr, tip, sl])
  # The cloth also wraps the jaw below the chord from the sides to the tip.
  wrap = f.lower_jaw(4.0, 12.0, 0.5 * ext, 0.1 * iod, 12)
  canvas = render.make_canvas(geom, image.shape, [outline, wrap])
  if canvas is None:
    return _finish(geom, f, image, None, None, None, rng)
  alpha = np.maximum(canvas.fill([outline]), canvas.fill([wrap]))
  base = _jitter(
    _pick(rng, [(0.75, 0.1, 0.12), (0.1, 0.15, 0.4), (0.08, 0.08, 0.08), (0.35, 0.4, 0.2)]), rng
  )
  albedo = _pattern(canvas, rng, base, iod, _pick(rng, ["dots", "dots", "solid", "textured"]))
  # Diagonal folds where the cloth gathers towards the knot.
  folds = np.sin((canvas.u * 0.6 + canvas.v) * np.float32(2 * np.pi / (0.35 * iod)))
  albedo = albedo * (0.93 + 0.07 * folds)[..., None]
  return _finish(geom, f, image, canvas, alpha, albedo, rng)


def gaiter(geom: FaceGeometry, image: np.ndarray, rng: np.random.Generator):
  """A neck gaiter pulled up over the nose: a tube from the bridge down over the neck."""
  f = _Face(geom)
  iod = f.iod
  apex = f.bridge(rng.uniform(0.0, 0.6))
  ext = rng.uniform(0.05, 0.2) * iod
  s = rng.uniform(1.5, 2.5)
  tl = push_out(jaw_at(f.jaw, s), f.center, ext)
  tr = push_out(jaw_at(f.jaw, 16 - s), f.center, ext)
  tl[1] = tr[1] = max(min(tl[1], tr[1]), f.guard_v)
  neck_v = f.chin_v + rng.uniform(0.6, 1.2) * iod
  narrow = rng.uniform(0.7, 0.9)  # The neck is narrower than the jaw.
  bl = np.array([f.mid_u + (tl[0] - f.mid_u) * narrow, neck_v])
  br = np.array([f.mid_u + (tr[0] - f.mid_u) * narrow, neck_v])
  # The cheeks, then straight down to the neck (the fabric does not follow the jaw line).
  sides_l = f.lower_jaw(s, s + 1.5, ext, 0.0, 4)
  sides_r = f.lower_jaw(14.5 - s, 16 - s, ext, 0.0, 4)
  bulge = rng.uniform(0.0, 0.15) * iod
  top = np.concatenate([_arc(tr, apex, bulge, _UP), _arc(apex, tl, bulge, _UP)])
  outline = np.concatenate([sides_l, [bl, br], sides_r, top[1:-1]])
  canvas = render.make_canvas(geom, image.shape, [outline])
  if canvas is None:
    return _finish(geom, f, image, None, None, None, rng)
  alpha = canvas.fill([outline])
  kind = _pick(rng, ["solid", "stripes", "textured", "checks"])
  albedo = _pattern(canvas, rng, _colour(rng, val=(0.1, 0.9)), iod, kind)
  folds = np.sin(canvas.v * np.float32(2 * np.pi / (rng.uniform(0.25, 0.45) * iod)))
  albedo = albedo * (0.92 + 0.08 * folds)[..., None]
  return _finish(geom, f, image, canvas, alpha, albedo, rng)


# Procedural families by name, in FAMILY_NAMES order.
FAMILIES = {
  "surgical": surgical,
  "cloth": cloth,
  "n95": n95,
  "kn95": kn95,
  "respirator": respirator,
  "bandana": bandana,
  "gaiter": gaiter,
}
