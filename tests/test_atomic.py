"""Atomic writes leave the old file or the whole new one, and no temp files."""

import json

import numpy as np
import pytest
from PIL import Image

from mask2face import atomic


def test_writes_and_leaves_no_temp_files(tmp_path):
  atomic.write_json(tmp_path / "a" / "r.json", {"b": 1, "a": [1, 2]}, sort_keys=True)
  atomic.write_text(tmp_path / "t.txt", "hello")
  atomic.write_bytes(tmp_path / "b.bin", b"\x00\x01")
  image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
  atomic.write_image(tmp_path / "i.png", image)
  assert json.loads((tmp_path / "a" / "r.json").read_text()) == {"a": [1, 2], "b": 1}
  assert (tmp_path / "t.txt").read_text() == "hello"
  assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "i.png")), image)
  assert not list(tmp_path.rglob("*.tmp"))


def test_a_failed_write_keeps_the_old_file(tmp_path):
  path = tmp_path / "results.json"
  atomic.write_json(path, {"old": True})
  with pytest.raises(TypeError):
    atomic.write_json(path, {"new": object()})  # Not JSON-serialisable: fails mid-write.
  assert json.loads(path.read_text()) == {"old": True}
  assert not list(tmp_path.glob("*.tmp"))


def test_read_json_names_the_file_and_the_problem(tmp_path):
  path = tmp_path / "r.json"
  atomic.write_json(path, {"a": [1, 2]})
  assert atomic.read_json(path) == {"a": [1, 2]}
  path.write_text("{not json")
  with pytest.raises(ValueError, match=r"r\.json: run record is not valid JSON \(Expecting"):
    atomic.read_json(path, what="run record")
  path.write_bytes(b"\xff\xfe")
  with pytest.raises(ValueError, match=r"r\.json: JSON file is not valid JSON"):
    atomic.read_json(path)
  with pytest.raises(FileNotFoundError, match=r"missing\.json: run record not found"):
    atomic.read_json(tmp_path / "missing.json", what="run record")
