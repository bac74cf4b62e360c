"""Tests for mask2face.data.crop: box geometry, eye levelling, alignment, borders."""

import math

import cv2
import numpy as np
import pytest

from mask2face.data import crop, dlib_faces


@pytest.fixture(scope="module")
def astronaut_points(astronaut):
  """dlib's 68 landmarks of the astronaut's face (the largest detection)."""
  faces = dlib_faces.find_faces(astronaut, upsample=0)
  assert faces, "dlib found no face on the astronaut photo"
  return faces[0].points


def _rotate(image, points, degrees):
  h, w = image.shape[:2]
  m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
  return cv2.warpAffine(image, m, (w, h)), crop.transform_points(points, m)


@pytest.mark.parametrize("size", [64, 100, 256])
@pytest.mark.parametrize("margin", [0.0, 1.0 / 3.0, 0.5])
def test_box_is_square_centred_with_margin(astronaut_points, size, margin):
  m = crop.crop_transform(astronaut_points, size=size, margin=margin)
  linear = m[:, :2]
  # Square, unrotated, no shear: the linear part is a multiple of the identity.
  np.testing.assert_allclose(linear, linear[0, 0] * np.eye(2), atol=1e-12)
  q = crop.transform_points(astronaut_points, m).astype(np.float64)
  lo, hi = q.min(axis=0), q.max(axis=0)
  # The landmark box's longer side fills size / (1 + 2 margin), centred in the crop.
  assert (hi - lo).max() == pytest.approx(size / (1 + 2 * margin), rel=1e-5)
  np.testing.assert_allclose((lo + hi) / 2, [(size - 1) / 2] * 2, atol=1e-3)


def test_warp_output_size_and_dtype(astronaut, astronaut_points):
  for size in (37, 128):
    m = crop.crop_transform(astronaut_points, size=size)
    out = crop.warp(astronaut, m, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert crop.warp_mask(np.ones(astronaut.shape[:2], bool), m, size).shape == (size, size)


def test_crop_content_matches_box(astronaut, astronaut_points):
  """Without rotation, the crop equals resizing the square box cut out of the photo."""
  size, margin = 64, 0.25
  m = crop.crop_transform(astronaut_points, size=size, margin=margin)
  scale = m[0, 0]
  # Box edges in array coordinates: the crop's edge -0.5 maps back to x0 - 0.5.
  x0, y0 = (-m[:, 2] - 0.5) / scale + 0.5
  side = size / scale
  box = astronaut[round(y0) : round(y0 + side), round(x0) : round(x0 + side)]
  expected = cv2.resize(box, (size, size), interpolation=cv2.INTER_AREA).astype(float)
  got = crop.warp(astronaut, m, size).astype(float)
  assert np.abs(got - expected).mean() < 8.0


@pytest.mark.parametrize("degrees", [-25.0, 15.0])
def test_level_eyes_makes_eyes_horizontal(astronaut, astronaut_points, degrees):
  image, points = _rotate(astronaut, astronaut_points, degrees)
  assert abs(math.degrees(crop.eye_angle(points))) > 10
  m = crop.crop_transform(points, size=96, level_eyes=True)
  assert abs(math.degrees(crop.eye_angle(crop.transform_points(points, m)))) < 1e-3
  # The same crop without levelling keeps the tilt.
  m0 = crop.crop_transform(points, size=96, level_eyes=False)
  assert abs(math.degrees(crop.eye_angle(crop.transform_points(points, m0)))) > 10
  # Levelling undoes the photo's rotation: the crop looks like the crop of the upright photo.
  upright = crop.warp(
    astronaut, crop.crop_transform(astronaut_points, size=96, level_eyes=True), 96
  )
  levelled = crop.warp(image, m, 96)
  assert np.abs(upright.astype(float) - levelled.astype(float))[16:-16, 16:-16].mean() < 12


def test_mask_and_images_aligned(astronaut_points):
  """The same matrix keeps a binary mask on the pixels it marks in the photo."""
  rng = np.random.default_rng(0)
  height, width = 480, 520
  mask = np.zeros((height, width), bool)
  cx, cy = astronaut_points[30]
  yy, xx = np.mgrid[:height, :width]
  mask[(xx - cx) ** 2 / 40**2 + (yy - cy) ** 2 / 25**2 < 1] = True
  image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
  image[mask] = 250
  m = crop.crop_transform(astronaut_points, size=128, level_eyes=True)
  warped_mask = crop.warp_mask(mask, m, 128)
  bright = crop.warp(image, m, 128).mean(axis=-1) > 155
  iou = (warped_mask & bright).sum() / (warped_mask | bright).sum()
  assert warped_mask.sum() > 100 and iou > 0.97


def test_out_of_image_borders(astronaut_points):
  """A face at the photo's corner: images replicate the edge, masks are 0 outside."""
  points = astronaut_points - astronaut_points.min(axis=0)  # Face touches the top-left corner.
  image = np.full((300, 300, 3), 200, np.uint8)
  m = crop.crop_transform(points, size=64, margin=0.5)
  out = crop.warp(image, m, 64)
  assert out.min() == 200  # Replicated, no black band.
  black = crop.warp(image, m, 64, border="constant")
  assert (black == 0).all(axis=-1)[0].all()  # Top row lies outside the photo.
  covered = crop.warp_mask(np.ones((300, 300), bool), m, 64)
  assert not covered[0].any() and covered[-1, -1]


def test_strong_downscaling_does_not_alias(astronaut_points):
  checker = (np.indices((2000, 2000)).sum(axis=0) % 2 * 255).astype(np.uint8)
  points = astronaut_points * 8  # A face about 700 px wide, cropped to 64 px.
  out = crop.warp(checker, crop.crop_transform(points, size=64), 64).astype(float)
  assert abs(out.mean() - 127.5) < 5 and out.std() < 10


def test_bad_input_is_rejected():
  with pytest.raises(ValueError, match="68"):
    crop.crop_transform(np.zeros((5, 2)), size=64)
  with pytest.raises(ValueError, match="NaN"):
    crop.crop_transform(np.full((68, 2), np.nan), size=64)
  with pytest.raises(ValueError, match="size"):
    crop.crop_transform(np.random.rand(68, 2), size=0)
  with pytest.raises(ValueError, match="interpolation"):
    crop.warp(np.zeros((8, 8, 3), np.uint8), np.eye(2, 3), 4, interpolation="lanczos")
