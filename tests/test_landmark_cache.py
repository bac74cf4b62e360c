"""Tests for mask2face.data.landmark_cache: real-data samples, resuming, reading back, the CLI."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from landmark_checks import SubsetSource, assert_anatomical
from PIL import Image

from mask2face.data import landmark_cache, landmarks
from mask2face.data.sources import FaceRecord, get_source

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_lfw_gray_sample(shared_data, tmp_path):
  source = get_source(str(shared_data / "lfw_gray"))
  keys = [r.key for r in source.records][::10]  # Deterministic: every 10th of ~2,900 images.
  assert len(keys) >= 250
  sample = SubsetSource(source, keys)
  table = landmark_cache.compute_cache(sample, tmp_path / "lfw.json", workers=2, progress=False)
  summary = table.summary
  assert summary["total"] == len(keys)
  assert summary["with_landmarks"] >= 0.95 * len(keys), summary
  assert summary["unreadable"] == 0
  for key in table:
    assert_anatomical(table[key])


def test_faces_color_sample(shared_data, tmp_path):
  source = get_source(str(shared_data / "faces_color"), identity_pattern="maskdetect")
  keys = [r.key for r in source.records][3::40]
  table = landmark_cache.compute_cache(
    SubsetSource(source, keys), tmp_path / "color.json", workers=1, progress=False
  )
  # Mostly tight crops: measured ~90% with landmarks (a third of them from the fallback).
  assert table.summary["with_landmarks"] >= 0.75 * len(keys), table.summary
  assert table.summary["fallback"] > 0
  for key in table:
    face = table[key]
    assert_anatomical(face)
    assert face.fallback == (
      key in json.loads(landmark_cache.report_path(table.path).read_text())["fallback"]
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
  full = landmark_cache.compute_cache(source, tmp_path / "full.json", progress=False)
  assert full.summary["one_face"] == 6 and full.summary["unreadable"] == 1
  assert "broken.jpg" in full.problems["person0/broken.jpg"][1]

  out = tmp_path / "resumed.json"
  interrupted = SubsetSource(source, [r.key for r in source.records], fail_after=3)
  with pytest.raises(KeyboardInterrupt):
    landmark_cache.compute_cache(interrupted, out, chunk_size=2, progress=False)
  journal = out.with_name(out.name + ".journal.jsonl")
  assert not out.exists() and journal.exists()
  # One finished chunk of two survived; add a torn line like a kill mid-write leaves.
  with open(journal, "a") as f:
    f.write('{"key": "person1/img')
  resumed_source = SubsetSource(source, [r.key for r in source.records])
  table = landmark_cache.compute_cache(resumed_source, out, chunk_size=2, progress=False)
  assert len(resumed_source.loaded) == len(source) - 2
  assert not journal.exists()
  assert _records(out) == _records(tmp_path / "full.json")
  assert sorted(table.keys()) == sorted(full.keys())
  # A finished cache is reused without loading a single image.
  again = SubsetSource(source, [r.key for r in source.records])
  landmark_cache.compute_cache(again, out, progress=False)
  assert again.loaded == []


def test_load_cache_round_trip_and_errors(tmp_path, grace_hopper):
  folder = _face_folder(tmp_path / "faces", grace_hopper, count=2)
  out = tmp_path / "lm.json"
  table = landmark_cache.compute_cache(get_source(str(folder)), out, progress=False)
  loaded = landmarks.load_cache(out)
  assert sorted(loaded.keys()) == sorted(table.keys()) and len(loaded) == 2
  key = next(iter(table))
  assert key in loaded and "person0/broken.jpg" not in loaded
  np.testing.assert_allclose(loaded[key].points, table[key].points)
  assert loaded.problems["person0/broken.jpg"][0] == "unreadable"
  report = json.loads(landmark_cache.report_path(out).read_text())
  assert report["summary"]["unreadable"] == 1
  assert "person0/broken.jpg" in report["problems"]

  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="bad.json"):
    landmarks.load_cache(bad)
  with pytest.raises(FileNotFoundError, match="missing.json"):
    landmarks.load_cache(tmp_path / "missing.json")
  with pytest.raises(ValueError, match="settings"):
    landmark_cache.compute_cache(get_source(str(folder)), out, upsample=0, progress=False)


def test_cli_end_to_end(tmp_path, grace_hopper):
  folder = _face_folder(tmp_path / "faces", grace_hopper, count=4)
  out = tmp_path / "cache" / "lm.json"
  env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "mask2face.data.landmark_cache",
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
  assert landmark_cache.report_path(out).exists()
  assert FaceRecord("person0/img0.jpg", "person0").key in table
