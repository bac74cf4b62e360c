"""MaskTheFace template folders: reading `masks/masks.cfg` and placing a template on a face.

A folder holds `masks/masks.cfg`, an INI file with one section per template (`[surgical]`,
`[surgical_left]`, ...), each naming an RGBA png (`template:`, relative to the folder) and
six anchors `mask_a` ... `mask_f` (`x, y` in template pixels). A template is placed the
MaskTheFace way: the variant is picked by the head's tilt, a homography maps its six anchors
onto the face's six points, and the warped alpha is the mask. Unlike upstream, the brightness
is matched to the visible upper face (not the whole photo, and never the skin the mask hides),
the light's side comes from it too, and the edges keep their anti-aliasing.
"""

import configparser
import dataclasses
import os
import pathlib

import cv2
import numpy as np
from absl import logging
from PIL import Image

from mask2face.data.masks import render
from mask2face.data.masks.geometry import FaceGeometry, six_points

# Template types MaskTheFace ships, by section name (without `_left`/`_right`) -> family.
TEMPLATE_FAMILIES = {
  "surgical": "mtf_surgical",
  "surgical_blue": "mtf_surgical_blue",
  "surgical_green": "mtf_surgical_green",
  "n95": "mtf_n95",
  "kn95": "mtf_kn95",
  "cloth": "mtf_cloth",
  "gas": "mtf_gas",
}
CONFIG_PATH = os.path.join("masks", "masks.cfg")
_ANCHORS = ("mask_a", "mask_b", "mask_c", "mask_d", "mask_e", "mask_f")
# Templates are shrunk once on load: faces in training photos are a few hundred pixels wide,
# and warping from a 1,800-pixel template would alias and cost time for nothing.
MAX_TEMPLATE_SIDE = 512
CHIN_DROP = 0.2  # In eye distances, see paint_template.


class TemplateError(ValueError):
  """A template folder is unusable; the message names the file and the problem."""


@dataclasses.dataclass
class _Template:
  path: pathlib.Path
  anchors: np.ndarray  # (6, 2) rows a..f, in the template file's pixels.
  scale: float = 1.0  # Shrink factor applied on load (anchors scale with it).
  rgba: np.ndarray | None = None  # float32 premultiplied RGB + alpha, loaded on first use.
  brightness: float = 0.0  # Mean HSV value of the opaque pixels, in [0, 1].


def _parse_point(text: str, where: str) -> np.ndarray:
  parts = [p.strip() for p in text.split(",")]
  try:
    if len(parts) != 2:
      raise ValueError
    return np.array([float(parts[0]), float(parts[1])], np.float64)
  except ValueError:
    raise TemplateError(f"{where}: expected 'x, y', got {text!r}") from None


class TemplateLibrary:
  """The templates of one MaskTheFace folder, grouped by family.

  Every image's header is checked on construction; pixels load on first use (and a pickled
  copy drops them), so building a painter and sending it to workers stays cheap.
  """

  def __init__(self, root):
    self.root = pathlib.Path(root)
    cfg_path = self.root / CONFIG_PATH
    if not self.root.is_dir():
      raise TemplateError(f"{self.root}: templates folder does not exist")
    if not cfg_path.is_file():
      raise TemplateError(f"{cfg_path}: missing (a MaskTheFace folder needs {CONFIG_PATH})")
    parser = configparser.ConfigParser(comment_prefixes=(";", "#"), inline_comment_prefixes=(";",))
    try:
      parser.read(cfg_path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError) as e:
      raise TemplateError(f"{cfg_path}: not a valid INI file: {e}") from None
    # family -> {'' | '_left' | '_right': _Template}
    self.variants: dict[str, dict[str, _Template]] = {}
    for section in parser.sections():
      entry = parser[section]
      if "template" not in entry:
        continue  # MaskTheFace's 'empty' and 'inpaint' sections carry no image.
      name = section.lower()
      suffix = next((s for s in ("_left", "_right") if name.endswith(s)), "")
      base = name[: len(name) - len(suffix)]
      family = TEMPLATE_FAMILIES.get(base)
      if family is None:
        logging.warning("%s: template [%s] is not a known type, ignored", cfg_path, section)
        continue
      missing = [k for k in _ANCHORS if k not in entry]
      if missing:
        raise TemplateError(f"{cfg_path}: [{section}] lacks {', '.join(missing)}")
      anchors = np.stack([_parse_point(entry[k], f"{cfg_path} [{section}] {k}") for k in _ANCHORS])
      path = self.root / entry["template"].strip()
      if not path.is_file():
        raise TemplateError(f"{path}: template image of [{section}] in {cfg_path} not found")
      self.variants.setdefault(family, {})[suffix] = _Template(path, anchors)
    if not self.variants:
      raise TemplateError(f"{cfg_path}: no usable template sections")
    # Check every image now, so a broken file fails here rather than mid-training.
    for options in self.variants.values():
      for t in options.values():
        self._check(t)

  @property
  def families(self) -> tuple[str, ...]:
    return tuple(f for f in TEMPLATE_FAMILIES.values() if f in self.variants)

  def __getstate__(self):
    # Loaded pixels stay in the process that loaded them; workers reload lazily.
    state = dict(self.__dict__)
    state["variants"] = {
      f: {k: dataclasses.replace(t, rgba=None) for k, t in v.items()}
      for f, v in self.variants.items()
    }
    return state

  def template(self, family: str, variant: str) -> _Template:
    """The loaded template for a family and tilt variant (frontal if the variant is missing)."""
    options = self.variants[family]
    t = options.get(variant) or options.get("") or next(iter(options.values()))
    if t.rgba is None:
      self._load(t)
    return t

  @staticmethod
  def _check(t: _Template) -> None:
    """Reads only the png header: a missing alpha channel or an unreadable file fails early."""
    try:
      with Image.open(t.path) as im:
        mode, info = im.mode, im.info
    except (OSError, ValueError) as e:
      raise TemplateError(f"{t.path}: cannot be read as an image ({e})") from None
    if mode not in ("RGBA", "LA", "PA") and "transparency" not in info:
      raise TemplateError(f"{t.path}: template needs an alpha channel, image mode is {mode}")

  @staticmethod
  def _load(t: _Template) -> None:
    try:
      with Image.open(t.path) as im:
        raw = np.asarray(im.convert("RGBA"))
    except (OSError, ValueError) as e:
      raise TemplateError(f"{t.path}: cannot be read as an image ({e})") from None
    # Premultiply before shrinking so transparent pixels' colours do not bleed into the edges.
    pre = raw.copy()
    pre[..., :3] = cv2.multiply(raw[..., :3], np.repeat(raw[..., 3:], 3, axis=2), scale=1 / 255)
    scale = min(1.0, MAX_TEMPLATE_SIDE / max(raw.shape[:2]))
    if scale < 1.0:
      size = (max(1, round(raw.shape[1] * scale)), max(1, round(raw.shape[0] * scale)))
      pre = cv2.resize(pre, size, interpolation=cv2.INTER_AREA)
    rgba = pre.astype(np.float32) * np.float32(1 / 255)
    opaque = rgba[..., 3] > 0.5
    if not opaque.any():
      raise TemplateError(f"{t.path}: template is fully transparent")
    value = rgba[..., :3][opaque].max(axis=1) / rgba[..., 3][opaque]
    t.brightness = float(value.mean())
    t.scale = scale
    t.rgba = rgba


def paint_template(
  library: TemplateLibrary,
  family: str,
  geom: FaceGeometry,
  image: np.ndarray,
  rng: np.random.Generator,
):
  """Places a template of `family` on the face; returns (image, mask)."""
  t = library.template(family, geom.variant())
  # Slight jitter of the fit, so repeated paints of one face differ a little.
  target = six_points(geom) + rng.normal(0.0, 0.01 * geom.iod, (6, 2))
  # Upstream's e sits on the chin outline, leaving the chin itself half-covered; real masks
  # wrap under it, so e moves a little further down the face axis.
  target[4] += geom.ey * CHIN_DROP * geom.iod
  # MaskTheFace pairs the points in the order a, b, c, f, e, d (round the outline). The chin
  # point is repeated: six points over-determine the homography, and a least-squares fit that
  # lets e drift up leaves the chin bare on turned faces.
  order = [0, 1, 2, 5, 4, 3, 4, 4]
  hmat, _ = cv2.findHomography(t.anchors[order] * t.scale, target[order], 0)
  if hmat is None or not np.all(np.isfinite(hmat)):
    raise ValueError(f"cannot place template {t.path}: degenerate face points")
  th, tw = t.rgba.shape[:2]
  corners = np.array([[0, 0], [tw, 0], [tw, th], [0, th]], np.float64).reshape(-1, 1, 2)
  warped_corners = cv2.perspectiveTransform(corners, hmat).reshape(-1, 2)
  canvas = render.make_canvas(geom, image.shape, [geom.to_face(warped_corners)], pad=2.0)
  guard = geom.eye_guard_v()
  if canvas is None:
    return render.composite(image, None, None, None)
  shift = np.array([[1, 0, -canvas.x0], [0, 1, -canvas.y0], [0, 0, 1]], np.float64)
  h, w = canvas.shape
  warped = cv2.warpPerspective(
    t.rgba, shift @ hmat, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
  )
  alpha = warped[..., 3]
  colour = warped[..., :3]
  light = render.visible_lighting(image, geom)
  # Upstream's brightness rule (1 + difference of mean HSV values), with the face's value
  # measured on the visible upper face: never on the skin the mask hides.
  delta = float(np.clip(1.0 + light.value - t.brightness, 0.3, 1.5))
  fp = geom.face_points
  mid_u, half_w = float(fp[[0, 16], 0].mean()), max(float(np.ptp(fp[[0, 16], 0])) / 2.0, 1.0)
  across = np.clip((canvas.u - np.float32(mid_u)) / np.float32(half_w), -1.0, 1.0)
  # The side the light comes from is brighter; the rest of the shading is random.
  shade = 1.0 + np.float32(0.25 * render.light_direction(rng, light.side)) * across
  shade *= render.soft_shading(canvas.shape, rng, amount=rng.uniform(0.02, 0.08))
  shade *= np.float32(delta)
  # Capped just below white: a lit white mask on a blown-out background still shows.
  colour = np.minimum(colour * shade[..., None], 0.98 * alpha[..., None])
  return render.composite(image, canvas, alpha, colour, premultiplied=True, eye_guard_v=guard)
