"""Tests for mask2face.data.landmarks: detection, the tight-crop fallback, the cache format."""

import json

import numpy as np
import pytest
from landmark_checks import assert_anatomical
from PIL import Image

from mask2face.data import landmarks


@pytest.fixture(scope="module")
def detector():
  return landmarks.LandmarkDetector()


@pytest.mark.parametrize("fixture", ["astronaut", "grace_hopper"])
def test_wheel_faces(detector, request, fixture):
  image = request.getfixturevalue(fixture)
  face = detector.detect_largest(image)
  assert face is not None and not face.fallback
  assert face.image_size == image.shape[:2]
  assert face.score > 0
  assert_anatomical(face)
  # The largest face is the real one (HOG can also fire on the astronaut's mission patch).
  assert (face.box[2] - face.box[0]) > image.shape[1] / 8


def test_detect_sorts_largest_first(detector, grace_hopper):
  small = np.asarray(Image.fromarray(grace_hopper).resize((256, 300)))
  canvas = np.full((700, 1200, 3), 200, np.uint8)
  canvas[50 : 50 + grace_hopper.shape[0], 30 : 30 + grace_hopper.shape[1]] = grace_hopper
  canvas[300:600, 850:1106] = small
  faces = detector.detect(canvas)
  assert len(faces) == 2
  widths = [f.box[2] - f.box[0] for f in faces]
  assert widths[0] > widths[1]
  assert faces[0].box[0] < 600 < faces[1].box[0]
  assert all(f.num_faces == 2 for f in faces)
  largest = detector.detect_largest(canvas)
  assert landmarks.classify(largest) == "several_faces"
  np.testing.assert_array_equal(largest.points, faces[0].points)


def test_large_images_are_detected_downscaled(grace_hopper):
  detector = landmarks.LandmarkDetector(max_side=600)
  big = np.asarray(Image.fromarray(grace_hopper).resize((1024, 1200), Image.Resampling.BILINEAR))
  face_big = detector.detect_largest(big)
  face_small = detector.detect_largest(grace_hopper)
  assert face_big.image_size == (1200, 1024)
  # Points come back in the big image's pixels: twice the small image's, give or take.
  eye_distance = np.linalg.norm(face_big.points[36:42].mean(0) - face_big.points[42:48].mean(0))
  error = np.linalg.norm(face_big.points - 2 * face_small.points, axis=1).mean()
  assert error < 0.1 * eye_distance
  assert_anatomical(face_big)


def test_tight_crop_fallback_and_rejection(detector, grace_hopper):
  face = detector.detect_largest(grace_hopper)
  x0, y0, x1, y1 = (int(v) for v in face.box)
  # A crop tighter than the detector's box: HOG cannot fire on it even padded.
  crop = np.ascontiguousarray(grace_hopper[y0 + 10 : y1 + 5, x0 + 5 : x1 - 5])
  result = detector.detect_largest(crop)
  assert result is not None
  assert landmarks.classify(result) in ("one_face", "fallback")
  assert landmarks.plausible_landmarks(result.points, result.image_size)
  assert not landmarks.LandmarkDetector(fallback=False).detect_largest(
    np.full((150, 150, 3), 128, np.uint8)
  )
  rng = np.random.default_rng(0)
  for image in (np.full((150, 150, 3), 128, np.uint8), rng.integers(0, 256, (150, 150, 3))):
    assert detector.detect_largest(image.astype(np.uint8)) is None


def test_plausibility_rejects_broken_shapes(detector, grace_hopper):
  face = detector.detect_largest(grace_hopper)
  assert landmarks.plausible_landmarks(face.points, face.image_size)
  flipped = face.points.copy()
  flipped[:, 1] = face.image_size[0] - flipped[:, 1]  # Upside down.
  assert not landmarks.plausible_landmarks(flipped, face.image_size)
  collapsed = np.repeat(face.points[:1], 68, axis=0)
  assert not landmarks.plausible_landmarks(collapsed, face.image_size)
  outside = face.points + np.float32(face.image_size[1])
  assert not landmarks.plausible_landmarks(outside, face.image_size)
  assert not landmarks.plausible_landmarks(face.points[:60], face.image_size)


def test_json_round_trip(detector, grace_hopper):
  face = detector.detect_largest(grace_hopper)
  back = landmarks.FaceLandmarks.from_json(json.loads(json.dumps(face.to_json())))
  np.testing.assert_allclose(back.points, face.points, atol=0.01)
  assert back.image_size == face.image_size and back.fallback == face.fallback
  with pytest.raises(ValueError, match="68"):
    landmarks.FaceLandmarks.from_json({**face.to_json(), "points": [[1, 2]] * 5})
