"""Tests for the mask painter on real faces: coverage, mask/pixel agreement, seeds, errors."""

import pathlib
import pickle

import cv2
import numpy as np
import pytest
from PIL import Image

from mask2face import config_files
from mask2face.data import dlib_faces
from mask2face.data.masks import (
  FAMILY_NAMES,
  PROCEDURAL_FAMILIES,
  TEMPLATE_FAMILIES,
  MaskPainter,
  is_grayscale,
  procedural,
  templates,
)
from mask2face.data.masks.geometry import FaceGeometry, six_points

COMMON_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "common.py"
COVERED = [8, 33, *range(48, 68)]  # Chin, nose base, mouth.
EYES = list(range(36, 48))
_KERNEL = np.ones((5, 5), np.uint8)  # 2-px dilation / erosion.


def _landmarks(image):
  """The largest face's 68 points, or None."""
  faces = dlib_faces.find_faces(image, upsample=1)
  return faces[0].points if faces else None


def _rotated(image, points, degrees):
  """The photo rolled about the face centre, with its landmarks: masks must follow the roll."""
  center = tuple(float(c) for c in points.mean(axis=0))
  m = cv2.getRotationMatrix2D(center, degrees, 1.0)
  h, w = image.shape[:2]
  out = cv2.warpAffine(image, m, (w, h), borderMode=cv2.BORDER_REFLECT)
  return out, points @ m[:, :2].T + m[:, 2]


@pytest.fixture(scope="module")
def builtin_faces(astronaut, grace_hopper):
  faces = []
  for image in (astronaut, grace_hopper):
    points = _landmarks(image)
    assert points is not None, "dlib found no face in a built-in test photo"
    faces.append((image, points))
  faces.append(_rotated(*faces[0], 25.0))
  return faces


@pytest.fixture(scope="module")
def shared_faces(shared_data):
  """A few LFW (grayscale -> RGB) and colour photos where dlib finds a face."""
  faces = []
  for folder, pattern, count in (("lfw_gray", "*/*.jpg", 3), ("faces_color", "*.jpg", 3)):
    found = 0
    for path in sorted((shared_data / folder).glob(pattern))[:40]:
      image = np.asarray(Image.open(path).convert("RGB"))
      points = _landmarks(image)
      if points is not None:
        faces.append((image, points))
        found += 1
        if found == count:
          break
    assert found, f"dlib found no face in the first photos of {shared_data / folder}"
  return faces


@pytest.fixture(scope="module")
def template_painter(shared_data):
  return MaskPainter("all", templates_dir=shared_data / "masktheface_templates")


def _check_paint(painter, family, image, points, seed):
  """The contract on one face: coverage, mask == changed pixels, seeds."""
  painted = painter.paint(image, points, np.random.default_rng(seed), family=family)
  assert painted.family == family
  assert painted.image.dtype == np.uint8 and painted.image.shape == image.shape
  assert painted.mask.dtype == bool and painted.mask.shape == image.shape[:2]
  h, w = painted.mask.shape
  for i in COVERED + EYES:
    x, y = np.round(points[i]).astype(int)
    if not (0 <= x < w and 0 <= y < h):
      continue  # Tight crops cut the chin off.
    covered = painted.mask[y, x]
    assert covered == (i not in EYES), f"{family}: landmark {i} covered={covered}"
  changed = np.any(painted.image != image, axis=2)
  mask8 = painted.mask.astype(np.uint8)
  outside = changed & ~cv2.dilate(mask8, _KERNEL).astype(bool)
  assert outside.sum() == 0, f"{family}: {outside.sum()} changed pixels away from the mask"
  inner = cv2.erode(mask8, _KERNEL).astype(bool)
  assert inner.sum() > 100
  assert changed[inner].mean() > 0.95, f"{family}: mask interior left unchanged"
  # Same seed: the same pixels; another seed: different ones.
  again = painter.paint(image, points, np.random.default_rng(seed), family=family)
  np.testing.assert_array_equal(again.image, painted.image)
  np.testing.assert_array_equal(again.mask, painted.mask)
  other = painter.paint(image, points, np.random.default_rng(seed + 1), family=family)
  assert not np.array_equal(other.image, painted.image)


def test_family_names_fixed_and_complete():
  assert FAMILY_NAMES == PROCEDURAL_FAMILIES + TEMPLATE_FAMILIES
  assert len(set(FAMILY_NAMES)) == len(FAMILY_NAMES)
  required = {"surgical", "cloth", "n95", "kn95", "respirator", "bandana"}
  required |= {f"mtf_{t}" for t in ("surgical", "surgical_blue", "surgical_green")}
  required |= {"mtf_n95", "mtf_kn95", "mtf_cloth", "mtf_gas"}
  assert required <= set(FAMILY_NAMES)
  assert MaskPainter().families == PROCEDURAL_FAMILIES  # 'all' without templates.


@pytest.mark.parametrize("family", PROCEDURAL_FAMILIES)
def test_procedural_builtin_faces(family, builtin_faces):
  painter = MaskPainter([family])
  for k, (image, points) in enumerate(builtin_faces):
    _check_paint(painter, family, image, points, seed=10 * k)


@pytest.mark.parametrize("family", PROCEDURAL_FAMILIES)
def test_procedural_shared_faces(family, shared_faces):
  painter = MaskPainter([family])
  for k, (image, points) in enumerate(shared_faces):
    _check_paint(painter, family, image, points, seed=100 + k)


@pytest.mark.parametrize("family", TEMPLATE_FAMILIES)
def test_template_families(family, template_painter, builtin_faces, shared_faces):
  assert family in template_painter.families
  for k, (image, points) in enumerate(builtin_faces + shared_faces):
    _check_paint(template_painter, family, image, points, seed=k)


def test_gray_photos_get_gray_masks(template_painter, shared_faces):
  """A grayscale photo (LFW's gray copy) gets the luma of the mask's colour; colour photos
  keep coloured masks."""
  gray_faces = [(i, p) for i, p in shared_faces if is_grayscale(i)]
  colour_faces = [(i, p) for i, p in shared_faces if not is_grayscale(i)]
  assert len(gray_faces) == 3 and len(colour_faces) == 3
  for family in template_painter.families:
    for k, (image, points) in enumerate(gray_faces):
      painted = template_painter.paint(image, points, np.random.default_rng(k), family)
      assert is_grayscale(painted.image), family
  image, points = gray_faces[0]
  painted = template_painter.paint(image, points, np.random.default_rng(5), "cloth")
  coloured, _ = procedural.cloth(FaceGeometry.from_points(points), image, np.random.default_rng(5))
  luma = cv2.cvtColor(coloured, cv2.COLOR_RGB2GRAY)
  np.testing.assert_array_equal(painted.image, np.repeat(luma[..., None], 3, axis=2))
  image, points = colour_faces[0]
  blue = template_painter.paint(image, points, np.random.default_rng(0), "mtf_surgical_blue")
  r, _, b = blue.image[blue.mask].astype(float).mean(axis=0)
  assert b > r + 20  # Still blue.


def test_random_family_is_seeded_and_weighted(builtin_faces):
  image, points = builtin_faces[0]
  painter = MaskPainter("all")
  picks = [painter.paint(image, points, np.random.default_rng(s)).family for s in range(12)]
  assert picks == [painter.paint(image, points, np.random.default_rng(s)).family for s in range(12)]
  assert len(set(picks)) > 2
  only_cloth = MaskPainter(["surgical", "cloth"], weights=[0.0, 1.0])
  assert {only_cloth.paint(image, points, np.random.default_rng(s)).family for s in range(5)} == {
    "cloth"
  }


def test_from_config(shared_data):
  config = config_files.load(COMMON_CONFIG).data
  assert MaskPainter.from_config(config).families == PROCEDURAL_FAMILIES
  config.mask_families = "kn95, mtf_gas"
  config.mask_weights = "1, 3"
  config.templates_dir = str(shared_data / "masktheface_templates")
  painter = MaskPainter.from_config(config)
  assert painter.families == ("kn95", "mtf_gas")
  np.testing.assert_allclose(painter.probabilities, [0.25, 0.75])


def test_invalid_families_and_weights():
  with pytest.raises(ValueError, match="valid names: surgical, cloth.*mtf_gas"):
    MaskPainter(["surgical", "hazmat"])
  with pytest.raises(ValueError, match="templates_dir"):
    MaskPainter("mtf_surgical")
  with pytest.raises(ValueError, match="2 families"):
    MaskPainter("surgical,cloth", weights="1,2,3")
  with pytest.raises(ValueError, match="non-negative"):
    MaskPainter("surgical,cloth", weights=[-1, 2])
  painter = MaskPainter()
  points = np.zeros((68, 2))
  with pytest.raises(ValueError, match="valid names"):
    painter.paint(np.zeros((8, 8, 3), np.uint8), points, np.random.default_rng(0), "hazmat")
  with pytest.raises(ValueError, match="uint8"):
    painter.paint(np.zeros((8, 8, 3), np.float32), points, np.random.default_rng(0))
  with pytest.raises(ValueError, match=r"\(68, 2\)"):
    painter.paint(np.zeros((8, 8, 3), np.uint8), points[:5], np.random.default_rng(0))


def _write_folder(root, cfg_text, png=None):
  (root / "masks" / "templates").mkdir(parents=True)
  (root / "masks" / "masks.cfg").write_text(cfg_text)
  if png is not None:
    Image.fromarray(png).save(root / "masks" / "templates" / "surgical.png")


_CFG = "[surgical]\ntemplate: masks/templates/surgical.png\n" + "".join(
  f"mask_{k}: {x}, {y}\n" for k, x, y in zip("abcdef", (0, 5, 9, 0, 5, 9), (0, 0, 0, 9, 12, 9))
)


def test_bad_template_folders(tmp_path):
  with pytest.raises(templates.TemplateError, match="does not exist"):
    MaskPainter(templates_dir=tmp_path / "nowhere")
  (tmp_path / "empty").mkdir()
  with pytest.raises(templates.TemplateError, match=r"masks\.cfg"):
    MaskPainter(templates_dir=tmp_path / "empty")
  _write_folder(tmp_path / "nopng", _CFG)
  with pytest.raises(templates.TemplateError, match=r"surgical\.png.*not found"):
    MaskPainter(templates_dir=tmp_path / "nopng")
  _write_folder(tmp_path / "rgb", _CFG, png=np.zeros((12, 12, 3), np.uint8))
  with pytest.raises(templates.TemplateError, match=r"surgical\.png.*alpha"):
    MaskPainter(templates_dir=tmp_path / "rgb")
  _write_folder(tmp_path / "anchor", _CFG.replace("mask_c: 9, 0", "mask_c: nine"))
  with pytest.raises(templates.TemplateError, match=r"masks\.cfg.*mask_c"):
    MaskPainter(templates_dir=tmp_path / "anchor")
  # A valid one-template folder works, and offers only the family it holds.
  _write_folder(tmp_path / "ok", _CFG, png=np.full((12, 12, 4), 200, np.uint8))
  painter = MaskPainter(templates_dir=tmp_path / "ok")
  assert painter.families == PROCEDURAL_FAMILIES + ("mtf_surgical",)
  with pytest.raises(ValueError, match="mtf_gas"):
    MaskPainter("mtf_gas", templates_dir=tmp_path / "ok")


def test_pickled_painter_paints_the_same(template_painter, builtin_faces):
  image, points = builtin_faces[1]
  clone = pickle.loads(pickle.dumps(template_painter))
  for family in ("mtf_cloth", "gaiter"):
    a = template_painter.paint(image, points, np.random.default_rng(3), family)
    b = clone.paint(image, points, np.random.default_rng(3), family)
    np.testing.assert_array_equal(a.image, b.image)


def test_geometry_tilt_and_six_points(builtin_faces):
  image, points = builtin_faces[0]
  geom = FaceGeometry.from_points(points)
  assert geom.variant() == ""  # A frontal face gets the frontal template.
  a, b, c, d, e, f = geom.to_face(six_points(geom))
  assert a[0] < b[0] < c[0] and d[0] < e[0] < f[0]
  assert b[1] < a[1] < d[1] < e[1] and b[1] < c[1] < f[1] < e[1]
  # Moving the nose tip towards the image's left turns the face that way: `_left`.
  turned = points.copy()
  turned[29:31, 0] -= 0.6 * geom.iod
  assert FaceGeometry.from_points(turned).variant() == "_left"
  turned = points.copy()
  turned[29:31, 0] += 0.6 * geom.iod
  assert FaceGeometry.from_points(turned).variant() == "_right"
  # The roll does not change the face-frame shape.
  _, rolled = _rotated(image, points, 30.0)
  np.testing.assert_allclose(
    FaceGeometry.from_points(rolled).face_points, geom.face_points, atol=1e-3
  )
