"""Tests for mask2face.landmarks: detection, the tight-crop fallback, the cache and its CLI."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mask2face import landmarks
from mask2face.data.sources import FaceRecord, get_source

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def assert_anatomical(face: landmarks.FaceLandmarks):
  """Eyes above the nose tip above the mouth above the chin; eyes inside the face box."""
  p = face.points
  assert p.shape == (68, 2) and p.dtype == np.float32
  eyes_y = p[36:48, 1].mean()
  nose_y, mouth_y, chin_y = p[33, 1], p[48:68, 1].mean(), p[8, 1]
  assert eyes_y < nose_y < mouth_y < chin_y, (eyes_y, nose_y, mouth_y, chin_y)
  assert p[36:42, 0].mean() < p[42:48, 0].mean()  # Subject's right eye on the image's left.
  x0, y0, x1, y1 = face.box
  eyes = p[36:48]
  assert np.all((eyes[:, 0] >= x0) & (eyes[:, 0] <= x1) & (eyes[:, 1] >= y0) & (eyes[:, 1] <= y1))
  assert landmarks.plausible_landmarks(p, face.image_size)


@pytest.fixture(scope="module")
def detector():
  return landmarks.LandmarkDetector()


class SubsetSource:
  """A picklable view of some records of another source (the test's deterministic sample)."""

  def __init__(self, base, keys, fail_after=None):
    self.base = base
    self.name = f"{base.name}[subset]"
    wanted = set(keys)
    self.records = [r for r in base.records if r.key in wanted]
    self.fail_after = fail_after  # Raise KeyboardInterrupt on this load, to simulate a kill.
    self.loaded = []

  def __len__(self):
    return len(self.records)

  def load(self, key):
    if self.fail_after is not None and len(self.loaded) >= self.fail_after:
      raise KeyboardInterrupt
    self.loaded.append(key)
    return self.base.load(key)


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


def test_lfw_gray_sample(shared_data, tmp_path):
  source = get_source(str(shared_data / "lfw_gray"))
  keys = [r.key for r in source.records][::10]  # Deterministic: every 10th of ~2,900 images.
  assert len(keys) >= 250
  sample = SubsetSource(source, keys)
  table = landmarks.compute_cache(sample, tmp_path / "lfw.json", workers=2, progress=False)
  summary = table.summary
  assert summary["total"] == len(keys)
  assert summary["with_landmarks"] >= 0.95 * len(keys), summary
  assert summary["unreadable"] == 0
  for key in table:
    assert_anatomical(table[key])


def test_faces_color_sample(shared_data, tmp_path):
  source = get_source(str(shared_data / "faces_color"), identity_pattern="maskdetect")
  keys = [r.key for r in source.records][3::40]
  table = landmarks.compute_cache(
    SubsetSource(source, keys), tmp_path / "color.json", workers=1, progress=False
  )
  # Mostly tight crops: measured ~90% with landmarks (a third of them from the fallback).
  assert table.summary["with_landmarks"] >= 0.75 * len(keys), table.summary
  assert table.summary["fallback"] > 0
  for key in table:
    face = table[key]
    assert_anatomical(face)
    assert face.fallback == (
      key in json.loads(landmarks.report_path(table.path).read_text())["fallback"]
    )


def _face_folder(root, face, count=6):
  """A small folder source: the face at a few sizes and flips, plus one unreadable file."""
  root.mkdir()
  for i in range(count):
    image = Image.fromarray(face).resize((200 + 20 * i, 240 + 24 * i))
    if i % 2:
      image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    (root / f"person{i % 3}").mkdir(exist_ok=True)
    image.save(root / f"person{i % 3}" / f"img{i}.jpg")
  (root / "person0" / "broken.jpg").write_bytes(b"not a jpeg")
  return root


def _records(path):
  data = json.loads(pathlib.Path(path).read_text())
  return data["records"]


def test_cache_resumes_after_interruption(tmp_path, grace_hopper):
  folder = _face_folder(tmp_path / "faces", grace_hopper)
  source = get_source(str(folder))
  full = landmarks.compute_cache(source, tmp_path / "full.json", progress=False)
  assert full.summary["one_face"] == 6 and full.summary["unreadable"] == 1
  assert "broken.jpg" in full.problems["person0/broken.jpg"][1]

  out = tmp_path / "resumed.json"
  interrupted = SubsetSource(source, [r.key for r in source.records], fail_after=3)
  with pytest.raises(KeyboardInterrupt):
    landmarks.compute_cache(interrupted, out, chunk_size=2, progress=False)
  journal = out.with_name(out.name + ".journal.jsonl")
  assert not out.exists() and journal.exists()
  # One finished chunk of two survived; add a torn line like a kill mid-write leaves.
  with open(journal, "a") as f:
    f.write('{"key": "person1/img')
  resumed_source = SubsetSource(source, [r.key for r in source.records])
  table = landmarks.compute_cache(resumed_source, out, chunk_size=2, progress=False)
  assert len(resumed_source.loaded) == len(source) - 2
  assert not journal.exists()
  assert _records(out) == _records(tmp_path / "full.json")
  assert sorted(table.keys()) == sorted(full.keys())
  # A finished cache is reused without loading a single image.
  again = SubsetSource(source, [r.key for r in source.records])
  landmarks.compute_cache(again, out, progress=False)
  assert again.loaded == []


def test_load_cache_round_trip_and_errors(tmp_path, grace_hopper):
  folder = _face_folder(tmp_path / "faces", grace_hopper, count=2)
  out = tmp_path / "lm.json"
  table = landmarks.compute_cache(get_source(str(folder)), out, progress=False)
  loaded = landmarks.load_cache(out)
  assert sorted(loaded.keys()) == sorted(table.keys()) and len(loaded) == 2
  key = next(iter(table))
  assert key in loaded and "person0/broken.jpg" not in loaded
  np.testing.assert_allclose(loaded[key].points, table[key].points)
  assert loaded.problems["person0/broken.jpg"][0] == "unreadable"
  report = json.loads(landmarks.report_path(out).read_text())
  assert report["summary"]["unreadable"] == 1
  assert "person0/broken.jpg" in report["problems"]

  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="bad.json"):
    landmarks.load_cache(bad)
  with pytest.raises(FileNotFoundError, match="missing.json"):
    landmarks.load_cache(tmp_path / "missing.json")
  with pytest.raises(ValueError, match="settings"):
    landmarks.compute_cache(get_source(str(folder)), out, upsample=0, progress=False)


def test_cli_end_to_end(tmp_path, grace_hopper):
  folder = _face_folder(tmp_path / "faces", grace_hopper, count=4)
  out = tmp_path / "cache" / "lm.json"
  env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "mask2face.landmarks",
      f"--source={folder}",
      f"--out={out}",
      "--workers=2",
      "--chunk_size=2",
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=240,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout[result.stdout.index("{") :])
  assert summary["one_face"] == 4 and summary["unreadable"] == 1 and summary["total"] == 5
  table = landmarks.load_cache(out)
  assert len(table) == 4
  assert landmarks.report_path(out).exists()
  assert FaceRecord("person0/img0.jpg", "person0").key in table
