"""Tests for mask2face.data.images.load_image on good and awkward files."""

import io

import numpy as np
import pytest
from bad_inputs import EXPECTED, HUGE_SIDE, make_bad_inputs
from PIL import Image

from mask2face.data.images import ImageError, load_image


@pytest.fixture(scope="module")
def face(grace_hopper):
  # Half size keeps the files small and the tests fast; the face stays ~150 px wide.
  return np.asarray(Image.fromarray(grace_hopper).resize((256, 300)))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, face):
  return make_bad_inputs(tmp_path_factory.mktemp("bad_inputs"), face)


def _png_bytes(array, mode=None):
  buf = io.BytesIO()
  Image.fromarray(array, mode).save(buf, "PNG")
  return buf.getvalue()


@pytest.mark.parametrize("case", [c for c, e in EXPECTED.items() if e == "unreadable"])
def test_unreadable_files_raise_naming_the_file(bad_files, case):
  with pytest.raises(ImageError) as info:
    load_image(bad_files[case])
  message = str(info.value)
  assert str(bad_files[case]) in message
  # The reason follows the file name.
  assert len(message) > len(str(bad_files[case])) + 5


def test_reasons_say_what_is_wrong(bad_files, tmp_path):
  reasons = {}
  for case in ("empty", "text", "tiny", "truncated"):
    with pytest.raises(ImageError) as info:
      load_image(bad_files[case])
    reasons[case] = str(info.value)
  assert "empty" in reasons["empty"]
  assert "not an image" in reasons["text"]
  assert "1x1" in reasons["tiny"]
  assert "truncated" in reasons["truncated"]
  with pytest.raises(ImageError, match="no such file"):
    load_image(tmp_path / "missing.jpg")
  with pytest.raises(ImageError, match="directory"):
    load_image(tmp_path)
  with pytest.raises(ImageError, match="bytes"):
    load_image(b"GIF89a garbage")


def test_grayscale_becomes_rgb(bad_files, face):
  image = load_image(bad_files["gray"])
  assert image.dtype == np.uint8 and image.shape == face.shape
  np.testing.assert_array_equal(image[..., 0], image[..., 1])
  np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_alpha_is_dropped(bad_files, face):
  image = load_image(bad_files["rgba"])
  assert image.shape == face.shape
  # PNG is lossless: the RGB under transparent pixels comes through unchanged.
  np.testing.assert_array_equal(image, face)


def test_16_bit_png_is_scaled_to_8_bit(bad_files, face):
  image = load_image(bad_files["png16"])
  gray = np.asarray(Image.fromarray(face).convert("L"))
  assert image.dtype == np.uint8
  np.testing.assert_array_equal(image[..., 1], gray)


def test_16_bit_values_use_the_full_range():
  ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
  image = load_image(_png_bytes(ramp))
  assert image.min() == 0 and image.max() == 255
  np.testing.assert_allclose(image[..., 0], ramp / 257.0, atol=0.51)


def test_exif_orientation_is_applied(bad_files, face):
  image = load_image(bad_files["exif_rotated"])
  # Stored 90 degrees sideways: only applying the tag brings back the upright shape and pixels.
  assert image.shape == face.shape
  assert np.abs(image.astype(float) - face).mean() < 6.0
  stored = np.asarray(Image.open(bad_files["exif_rotated"]))
  assert stored.shape[:2] == face.shape[1::-1]


def test_palette_and_bytes_inputs(face):
  palette = Image.fromarray(face).convert("P")
  buf = io.BytesIO()
  palette.save(buf, "PNG")
  image = load_image(buf.getvalue())
  assert image.shape == face.shape and image.dtype == np.uint8
  np.testing.assert_array_equal(image, np.asarray(palette.convert("RGB")))


def test_huge_image_loads_and_downscales(bad_files):
  small = load_image(bad_files["huge"], max_side=1000)
  assert max(small.shape[:2]) == 1000 and small.shape[2] == 3
  # The solid background colour survives (JPEG is lossy: a few levels off).
  np.testing.assert_allclose(small[10, 10], (90, 140, 200), atol=6)
  full = load_image(bad_files["huge"])
  assert full.shape == (HUGE_SIDE, HUGE_SIDE, 3) and full.flags["C_CONTIGUOUS"]


def test_small_images_are_left_alone_by_max_side(face):
  image = load_image(_png_bytes(face), max_side=1000)
  np.testing.assert_array_equal(image, face)
