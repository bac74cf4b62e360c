"""Tests of mask2face.detect: finding masked faces, the model file, the crop mapping."""

import pathlib

import cv2
import numpy as np
import pytest
from absl import logging

from mask2face import detect
from mask2face.data import crop, images

MODEL = pathlib.Path("models") / "face_detection_short_range.tflite"


@pytest.fixture(scope="module")
def finder(shared_data):
  with detect.FaceFinder(shared_data / MODEL, fallbacks=()) as f:
    yield f


def test_explicit_model_path_missing_names_it(tmp_path):
  missing = tmp_path / "nope.tflite"
  with pytest.raises(detect.DetectorError, match="nope.tflite"):
    detect.resolve_model_path(missing)


def test_cached_model_is_used_without_download(tmp_path):
  cached = tmp_path / detect.MODEL_FILENAME
  cached.write_bytes(b"model")
  assert detect.resolve_model_path(cache_dir=tmp_path, download=False) == cached


def test_offline_download_fails_fast_and_leaves_nothing(tmp_path, monkeypatch):
  # Port 9 on the loopback refuses at once: an "offline" error without touching the network.
  monkeypatch.setattr(detect, "MODEL_URL", "http://127.0.0.1:9/blaze_face_short_range.tflite")
  with pytest.raises(detect.DetectorError, match="offline"):
    detect.resolve_model_path(cache_dir=tmp_path, timeout=2.0)
  assert list(tmp_path.iterdir()) == []


def test_download_writes_the_file(tmp_path, monkeypatch):
  source = tmp_path / "published.tflite"
  source.write_bytes(b"tflite bytes")
  monkeypatch.setattr(detect, "MODEL_URL", source.as_uri())
  path = detect.resolve_model_path(cache_dir=tmp_path / "cache")
  assert path.read_bytes() == b"tflite bytes"
  assert [p.name for p in path.parent.iterdir()] == [detect.MODEL_FILENAME]
  # An empty download is an error and leaves nothing behind (atomic writes).
  source.write_bytes(b"")
  with pytest.raises(detect.DetectorError, match="empty"):
    detect.download_model(source.as_uri(), tmp_path / "empty" / "model.tflite")
  assert list((tmp_path / "empty").iterdir()) == []


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown fallback"):
    detect.FaceFinder(fallbacks=("mtcnn",))
  with pytest.raises(ValueError, match="uint8 RGB"):
    detect.FaceFinder(fallbacks=()).find(np.zeros((8, 8), np.uint8))


def test_square_transform_reproduces_crop_transform(grace_hopper):
  rng = np.random.default_rng(0)
  points = rng.uniform(100, 300, (68, 2))
  for level_eyes in (False, True):
    matrix = crop.crop_transform(points, size=64, level_eyes=level_eyes)
    cx, cy, side = detect.square_from_transform(matrix, 64)
    angle = crop.eye_angle(points) if level_eyes else 0.0
    np.testing.assert_allclose(detect.square_transform(cx, cy, side, 64, angle), matrix, atol=1e-9)


def test_finds_most_masked_faces(shared_data, finder):
  paths = sorted((shared_data / "masked_real").iterdir())
  found = 0
  for path in paths:
    faces = finder.find(images.load_image(path))
    found += bool(faces)
    for face in faces:
      assert face.detector == "mediapipe" and 0.5 <= face.score <= 1.0
      assert face.keypoints.shape == (6, 2) and face.landmarks is None
      x0, y0, x1, y1 = face.box
      eyes = face.keypoints[:2]
      assert np.all((eyes >= (x0, y0)) & (eyes <= (x1, y1)))
  # Measured: 27 of 27 (MediaPipe short-range, min score 0.5).
  assert found >= 25, f"faces found in only {found} of {len(paths)} masked photos"


def test_dlib_fallback_uses_the_landmark_crop(grace_hopper):
  finder = detect.FaceFinder("unused.tflite", fallbacks=("dlib_hog",))
  finder._find_mediapipe = lambda image: []  # Force the fallback path.
  faces = finder.find(grace_hopper)
  assert len(faces) == 1 and faces[0].detector == "dlib_hog"
  assert faces[0].landmarks.shape == (68, 2)
  np.testing.assert_allclose(
    detect.crop_transform_from_face(faces[0], size=64),
    crop.crop_transform(faces[0].landmarks, size=64),
  )
  # A big photo is detected downscaled (dlib_faces.MAX_SIDE); points come back in its own pixels.
  big = cv2.resize(grace_hopper, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
  (big_face,) = finder.find(big)
  eyes = big_face.keypoints[:2] / 4
  assert np.abs(eyes - faces[0].keypoints[:2]).max() < 4, (eyes, faces[0].keypoints[:2])


def test_crop_mapping_agrees_with_landmark_crop(shared_data, finder):
  from mask2face.data.landmarks import LandmarkDetector

  landmarker = LandmarkDetector()
  offsets, ratios = [], []
  for folder in ("faces_color", "lfw_gray"):
    paths = sorted(p for p in (shared_data / folder).rglob("*.jpg"))
    # Every 97th file: spread over identities, disjoint from most of the fitting sample.
    for path in paths[5::97][:16]:
      image = images.load_image(path)
      marks = [m for m in landmarker.detect(image) if not m.fallback]
      faces = finder.find(image)
      if len(marks) != 1 or len(faces) != 1:
        continue
      want = detect.square_from_transform(crop.crop_transform(marks[0].points, size=64), 64)
      got = detect.square_from_transform(detect.crop_transform_from_face(faces[0], size=64), 64)
      offsets.append(np.hypot(got[0] - want[0], got[1] - want[1]) / want[2])
      ratios.append(got[2] / want[2])
  logging.info(
    "crop mapping on %d faces: centre offset/side median %.3f, side ratio median %.3f",
    len(offsets),
    np.median(offsets),
    np.median(ratios),
  )
  assert len(offsets) >= 12
  # Fitting report (held-out half): median offset 0.017, side ratio p10-p90 0.90-1.07.
  assert np.median(offsets) < 0.04
  assert np.quantile(offsets, 0.9) < 0.08
  assert 0.93 < np.median(ratios) < 1.07
