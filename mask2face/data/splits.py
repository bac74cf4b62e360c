"""Identity-disjoint, seeded train/validation/test splits, written to JSON for audit and reuse.

Upstream sampled train and test independently, so the same photos (and people) appeared in
both. Here whole identities go to one split: first a test set (a number of images, or a
fraction), then `val_fraction` of the rest to validation, the remainder to train. The same
records and seed always give the same splits; the JSON file records keys, counts, identities
and the settings, so a run can be audited and reproduced.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging
from etils import epath

from mask2face import atomic
from mask2face.data.sources import FaceRecord

SPLIT_NAMES = ("train", "validation", "test")

# A fixed test size (the article's 1,000 images) must not swallow a small source.
MAX_TEST_FRACTION = 0.2


class Splits(dict):
  """`{'train': [keys], 'validation': [keys], 'test': [keys]}` plus `.info` (settings, identities)."""

  def __init__(self, splits: Mapping[str, Sequence[str]], info: Mapping | None = None):
    super().__init__((name, list(splits[name])) for name in SPLIT_NAMES)
    self.info = dict(info or {})


def num_test_images(num_images: int, test_size: float) -> int:
  """How many images the test set aims for: a count, or a fraction when `test_size` < 1."""
  if test_size < 0:
    raise ValueError(f"test_size must be >= 0, got {test_size}")
  if test_size < 1:
    return round(test_size * num_images)
  cap = round(MAX_TEST_FRACTION * num_images)
  if test_size > cap:
    logging.info(
      "test_size %d is more than %.0f%% of %d images: using %d",
      test_size,
      100 * MAX_TEST_FRACTION,
      num_images,
      cap,
    )
  return min(int(test_size), cap)


def _take_identities(order, sizes, target):
  """Walks identities in `order`, taking each that still fits in `target` images.

  Skipping an identity that would overshoot keeps a very large one (530 photos of one person
  in LFW) from blowing up a small split; the count ends at most `target`.
  """
  taken, count = [], 0
  for identity in order:
    if count >= target:
      break
    if count + sizes[identity] <= target:
      taken.append(identity)
      count += sizes[identity]
  return taken


def make_splits(
  records: Sequence[FaceRecord], *, seed: int, test_size: float = 1000, val_fraction: float = 0.2
) -> Splits:
  """Splits records by identity into train, validation and test.

  Args:
    records: the source's records (keys unique).
    seed: the split seed; the same records and seed give the same splits.
    test_size: test images: a count (at most 20% of the records), or a fraction if below 1.
    val_fraction: the fraction of the non-test images that goes to validation.

  Returns:
    `Splits`: every key in exactly one split (sorted within it), no identity in two splits;
    `.info` holds the settings, counts and identities per split.
  """
  if not 0 <= val_fraction < 1:
    raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
  if not records:
    raise ValueError("cannot split an empty list of records")
  by_identity = {}
  seen = set()
  for record in records:
    if record.key in seen:
      raise ValueError(f"duplicate key {record.key!r}: keys must be unique to split them")
    seen.add(record.key)
    by_identity.setdefault(record.identity, []).append(record.key)
  sizes = {identity: len(keys) for identity, keys in by_identity.items()}

  # Sorting first makes the order independent of the records' order; the seed then shuffles.
  order = sorted(by_identity)
  order = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
  test_ids = _take_identities(order, sizes, num_test_images(len(records), test_size))
  taken = set(test_ids)
  rest = [identity for identity in order if identity not in taken]
  num_rest = sum(sizes[identity] for identity in rest)
  val_ids = _take_identities(rest, sizes, round(val_fraction * num_rest))
  taken.update(val_ids)
  train_ids = [identity for identity in rest if identity not in taken]

  ids = {"train": sorted(train_ids), "validation": sorted(val_ids), "test": sorted(test_ids)}
  splits = {
    name: sorted(key for identity in ids[name] for key in by_identity[identity])
    for name in SPLIT_NAMES
  }
  info = {
    "seed": int(seed),
    "test_size": test_size,
    "val_fraction": val_fraction,
    "counts": {name: len(splits[name]) for name in SPLIT_NAMES},
    "identity_counts": {name: len(ids[name]) for name in SPLIT_NAMES},
    "identities": ids,
  }
  logging.info(
    "Splits (seed %d): %s images, %s identities", seed, info["counts"], info["identity_counts"]
  )
  return Splits(splits, info)


def check_splits(splits: Mapping[str, Sequence[str]], records: Sequence[FaceRecord]) -> None:
  """Raises ValueError unless `splits` covers `records` exactly once with disjoint identities."""
  identity_of = {record.key: record.identity for record in records}
  owner = {}
  for name in SPLIT_NAMES:
    for key in splits.get(name, ()):
      if key not in identity_of:
        raise ValueError(f"split {name!r} names {key!r}, which is not among the records")
      if key in owner:
        raise ValueError(f"{key!r} is in both {owner[key]!r} and {name!r}")
      owner[key] = name
  missing = len(identity_of) - len(owner)
  if missing:
    raise ValueError(f"{missing} records are in no split")
  split_of_identity = {}
  for key, name in owner.items():
    identity = identity_of[key]
    if split_of_identity.setdefault(identity, name) != name:
      raise ValueError(
        f"identity {identity!r} is in both {split_of_identity[identity]!r} and {name!r}"
      )


def write_splits(path: str | os.PathLike, splits: Mapping[str, Sequence[str]]) -> None:
  """Writes the splits (and their `.info`, if any) to a JSON file, atomically."""
  path = epath.Path(path)  # Local or remote (a gs:// workdir).
  missing = [name for name in SPLIT_NAMES if name not in splits]
  if missing:
    raise ValueError(f"cannot write {path}: splits lack {missing}")
  info = dict(getattr(splits, "info", {}))
  info["counts"] = {name: len(splits[name]) for name in SPLIT_NAMES}
  content = {**info, "splits": {name: list(splits[name]) for name in SPLIT_NAMES}}
  # A half-written file would silently change the split of a resumed run: write, then rename.
  atomic.write_json(path, content, indent=1)


def read_splits(path: str | os.PathLike) -> Splits:
  """Reads splits written by `write_splits`; a malformed file raises ValueError naming it."""
  path = epath.Path(path)
  content = atomic.read_json(path, what="splits file")
  splits = content.get("splits") if isinstance(content, dict) else None
  if not isinstance(splits, dict) or any(
    not isinstance(splits.get(name), list) for name in SPLIT_NAMES
  ):
    raise ValueError(f"splits file {path} lacks a 'splits' object with lists {SPLIT_NAMES}")
  counts = content.get("counts", {})
  for name in SPLIT_NAMES:
    if name in counts and counts[name] != len(splits[name]):
      raise ValueError(
        f"splits file {path}: {name!r} lists {len(splits[name])} keys but counts says "
        f"{counts[name]} (edited or truncated?)"
      )
  info = {k: v for k, v in content.items() if k != "splits"}
  return Splits(splits, info)
