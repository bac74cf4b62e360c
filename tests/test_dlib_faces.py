"""Tests for mask2face.data.dlib_faces: every dlib path agrees, and points map back exactly."""

import subprocess
import sys

import cv2
import numpy as np
import pytest

from mask2face import detect, identity
from mask2face.data import dlib_faces, landmarks

SCALE = 6


@pytest.fixture(scope="module")
def large_photo(grace_hopper):
  """Grace Hopper at 6x (3600x3072), detected at 0.28x: a rescale that ignores pixel centres
  (x / s instead of (x + 0.5) / s - 0.5) is off by 1.3 px here."""
  return cv2.resize(grace_hopper, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_CUBIC)


def test_every_dlib_path_gives_the_same_landmarks_on_a_large_photo(large_photo, grace_hopper):
  assert max(large_photo.shape[:2]) > dlib_faces.MAX_SIDE
  training = landmarks.LandmarkDetector().detect_largest(large_photo)
  finder = detect.FaceFinder("unused.tflite", fallbacks=("dlib_hog",))
  finder._find_mediapipe = lambda image: []  # Force the dlib fallback.
  (found,) = finder.find(large_photo)
  scored, fallback = identity.IdentityScorer().find_face(large_photo)
  assert not training.fallback and found.detector == "dlib_hog" and not fallback
  for name, points in (("FaceFinder", found.landmarks), ("IdentityScorer", scored.points)):
    assert points.shape == (68, 2)
    error = np.abs(points - training.points).max()
    assert error < 1.0, f"{name} differs from LandmarkDetector by {error:.2f} px"
  np.testing.assert_allclose(found.box, training.box, atol=1.0)
  # And they are this photo's pixels: SCALE times the small photo's points, give or take.
  small = landmarks.LandmarkDetector().detect_largest(grace_hopper)
  eye_distance = np.linalg.norm(small.points[36:42].mean(0) - small.points[42:48].mean(0))
  offset = np.linalg.norm(training.points / SCALE - small.points, axis=1).mean()
  assert offset < 0.1 * eye_distance, offset


def test_points_map_back_through_pixel_centres(grace_hopper):
  """A 4x nearest-neighbour enlargement, detected at 1/4, is exactly the original photo to
  dlib; its points must be the original's through x -> (x + 0.5) * 4 - 0.5 (a plain x * 4 is
  off by 1.5 px)."""
  big = np.repeat(np.repeat(grace_hopper, 4, axis=0), 4, axis=1)
  view = dlib_faces.View.of(big, max_side=max(grace_hopper.shape[:2]))
  np.testing.assert_array_equal(view.image, grace_hopper)
  assert view.scale == (0.25, 0.25)
  (face_big,) = dlib_faces.find_faces(view)
  (face_small,) = dlib_faces.find_faces(grace_hopper)
  np.testing.assert_allclose(face_big.points, (face_small.points + 0.5) * 4 - 0.5, atol=1e-3)
  np.testing.assert_allclose(face_big.box, (face_small.box + 0.5) * 4 - 0.5, atol=1e-3)
  # The training detector (its own max_side) takes the same path.
  detector = landmarks.LandmarkDetector(max_side=max(grace_hopper.shape[:2]))
  np.testing.assert_allclose(detector.detect_largest(big).points, face_big.points, atol=1e-3)


def test_view_geometry():
  view = dlib_faces.View.of(np.zeros((400, 300), np.uint8), max_side=200)
  assert view.image.shape == (200, 150, 3) and view.photo_size == (400, 300)
  padded = view.padded(10)
  assert padded.image.shape == (220, 170, 3) and padded.pad == 10
  # View pixel centre 0 covers photo pixels 0 and 1: its centre is photo x = 0.5.
  np.testing.assert_allclose(view.to_photo([[0, 0], [149, 199]]), [[0.5, 0.5], [298.5, 398.5]])
  np.testing.assert_allclose(padded.to_photo([[10, 10]]), [[0.5, 0.5]])
  np.testing.assert_array_equal(padded.box_from_fractions(0, 0, 1, 1), [10, 10, 159, 209])
  unscaled = dlib_faces.View.of(np.zeros((50, 60, 3), np.uint8))
  np.testing.assert_array_equal(unscaled.to_photo([[3, 4]]), [[3, 4]])
  with pytest.raises(ValueError, match="uint8"):
    dlib_faces.View.of(np.zeros((8, 8, 3), np.float32))


def test_box_iou():
  assert dlib_faces.box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
  assert dlib_faces.box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
  assert dlib_faces.box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
  assert dlib_faces.box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_cnn_detector_finds_the_face(grace_hopper):
  small = cv2.resize(grace_hopper, (256, 300), interpolation=cv2.INTER_AREA)
  (hog,) = dlib_faces.find_faces(small)
  (cnn,) = dlib_faces.find_faces(small, detector="cnn")
  assert cnn.score > 0 and dlib_faces.box_iou(cnn.box, hog.box) > 0.5
  with pytest.raises(ValueError, match="unknown dlib detector"):
    dlib_faces.find_faces(small, detector="mtcnn")


def test_metrics_and_losses_do_not_import_dlib():
  code = (
    "import sys, mask2face.losses, mask2face.metrics, mask2face.data.dlib_faces; "
    "print(sorted(m for m in ('dlib', 'face_recognition_models') if m in sys.modules))"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
  )
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == "[]", result.stdout
