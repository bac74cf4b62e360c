"""Tests for mask2face.data.splits: identity-disjoint, seeded, complete, sized, JSON round-trip."""

import json

import numpy as np
import pytest

from mask2face.data import sources, splits
from mask2face.data.sources import FaceRecord


def _records(seed=0, num_identities=300):
  """Identities of 1 to 12 images (one of 60, like LFW's few very common people), shuffled."""
  rng = np.random.default_rng(seed)
  records = []
  for i in range(num_identities):
    count = 60 if i == 7 else int(rng.integers(1, 13))
    records += [FaceRecord(f"p{i:03d}/{j:04d}.jpg", f"p{i:03d}") for j in range(count)]
  return [records[i] for i in rng.permutation(len(records))]


def _assert_valid(result, records):
  identity = {r.key: r.identity for r in records}
  all_keys = [k for name in splits.SPLIT_NAMES for k in result[name]]
  assert sorted(all_keys) == sorted(identity), "every key exactly once"
  ids = {name: {identity[k] for k in result[name]} for name in splits.SPLIT_NAMES}
  assert not ids["train"] & ids["validation"]
  assert not ids["train"] & ids["test"]
  assert not ids["validation"] & ids["test"]
  splits.check_splits(result, records)


def test_splits_identity_disjoint_complete_and_sized():
  records = _records()
  n = len(records)
  result = splits.make_splits(records, seed=3, test_size=0.15, val_fraction=0.2)
  assert set(result) == set(splits.SPLIT_NAMES)
  _assert_valid(result, records)
  # Whole identities (at most 12 images, save the 60) never overshoot the targets.
  test_target = round(0.15 * n)
  assert test_target - 12 < len(result["test"]) <= test_target
  val_target = round(0.2 * (n - len(result["test"])))
  assert val_target - 12 < len(result["validation"]) <= val_target
  assert result.info["counts"] == {k: len(v) for k, v in result.items()}
  assert result.info["seed"] == 3


def test_fixed_test_size_capped_on_small_source():
  records = _records(num_identities=100)
  n = len(records)
  # The article's 1,000 test images: more than 20% of this source, so capped.
  assert n * 0.2 < 1000
  result = splits.make_splits(records, seed=0, test_size=1000, val_fraction=0.2)
  _assert_valid(result, records)
  assert len(result["test"]) <= round(0.2 * n)
  assert len(result["test"]) > round(0.2 * n) - 12
  assert splits.num_test_images(10_000, 1000) == 1000
  assert splits.num_test_images(1000, 0.1) == 100
  assert splits.num_test_images(1000, 0) == 0


def test_splits_deterministic_by_seed_and_order_free():
  records = _records()
  a = splits.make_splits(records, seed=5, test_size=100, val_fraction=0.2)
  b = splits.make_splits(list(reversed(records)), seed=5, test_size=100, val_fraction=0.2)
  assert a == b and a.info == b.info
  c = splits.make_splits(records, seed=6, test_size=100, val_fraction=0.2)
  assert c["test"] != a["test"]


def test_json_round_trip_and_audit_fields(tmp_path):
  records = _records()
  result = splits.make_splits(records, seed=1, test_size=0.1, val_fraction=0.25)
  path = tmp_path / "run" / "splits.json"
  splits.write_splits(path, result)
  assert not [p for p in path.parent.iterdir() if p.name != "splits.json"], "temp file left"
  content = json.loads(path.read_text())
  assert content["seed"] == 1 and content["val_fraction"] == 0.25
  assert content["counts"]["test"] == len(result["test"])
  assert set(content["identities"]["test"]) == {
    r.identity for r in records if r.key in set(result["test"])
  }
  back = splits.read_splits(path)
  assert back == result and back.info == result.info
  # A plain dict (e.g. filtered by the pipeline) writes and reads too.
  splits.write_splits(path, {k: v[:3] for k, v in result.items()})
  assert splits.read_splits(path) == {k: v[:3] for k, v in result.items()}


def test_bad_input_errors(tmp_path):
  with pytest.raises(ValueError, match="duplicate key"):
    splits.make_splits([FaceRecord("a", "x"), FaceRecord("a", "y")], seed=0)
  with pytest.raises(ValueError, match="empty"):
    splits.make_splits([], seed=0)
  with pytest.raises(ValueError, match="val_fraction"):
    splits.make_splits(_records(), seed=0, val_fraction=1.0)
  with pytest.raises(ValueError, match="test_size"):
    splits.make_splits(_records(), seed=0, test_size=-1)
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
    splits.read_splits(bad)
  bad.write_text(json.dumps({"splits": {"train": []}}))
  with pytest.raises(ValueError, match="lacks"):
    splits.read_splits(bad)
  bad.write_text(
    json.dumps({"counts": {"train": 2}, "splits": {"train": ["a"], "validation": [], "test": []}})
  )
  with pytest.raises(ValueError, match="counts says 2"):
    splits.read_splits(bad)
  with pytest.raises(FileNotFoundError, match="missing.json"):
    splits.read_splits(tmp_path / "missing.json")
  records = [FaceRecord("a", "x"), FaceRecord("b", "x"), FaceRecord("c", "y")]
  with pytest.raises(ValueError, match="identity 'x'"):
    splits.check_splits({"train": ["a", "c"], "validation": [], "test": ["b"]}, records)
  with pytest.raises(ValueError, match="in no split"):
    splits.check_splits({"train": ["a", "b"], "validation": [], "test": []}, records)


def test_splits_of_real_lfw_layout(shared_data):
  source = sources.get_source(str(shared_data / "lfw_gray"))
  result = splits.make_splits(source.records, seed=0, test_size=300, val_fraction=0.2)
  _assert_valid(result, source.records)
  assert 300 - 4 < len(result["test"]) <= 300  # LFW's grayscale copy: 2 to 4 images a person.
  assert result.info["identity_counts"]["test"] >= 300 // 4
