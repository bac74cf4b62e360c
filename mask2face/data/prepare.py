"""From `config.data` to sources ready for the pipeline: landmarks, fixed splits, one key space.

`data.source` names one source or several, comma separated
(`../shared/data/utkface,../shared/data/faces_color`). Each source is opened, gets its own
landmark cache and its own identity-disjoint splits (the same test_size / val_fraction rules,
the same split seed) and its own `max_examples` cap per split. `identity_pattern` takes one
value per source (comma separated, in the same order) or one for all; `landmarks_cache` one
path per source, or '' for the default caches. Training mixes the sources by
`data.source_weights` (mixing.py); evaluation splits are the sources' splits one after
another, each example once.

With several sources, keys are qualified by the source's tag (`utkface/<key>`), so two
folders may hold the same file names, and `workdir/splits.json` records every source's own
splits under `sources`. A single source keeps its keys and its splits file exactly as before.
"""

import dataclasses
import os
import pathlib
import re
from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging
from etils import epath

from mask2face import cli
from mask2face.data import landmark_cache, sources, splits
from mask2face.data import landmarks as landmarks_lib


@dataclasses.dataclass(frozen=True)
class SourceSettings:
  """One source's entries of the comma-separated `config.data` fields."""

  spec: str
  identity_pattern: str = ""
  landmarks_cache: str = ""  # '' = landmarks.default_cache_path(spec).


def _per_source(text, count: int, name: str, *, one_for_all: bool) -> list[str]:
  text = str(text or "")
  if not text.strip():
    return [""] * count
  parts = [p.strip() for p in text.split(",")]
  if len(parts) == count:
    return parts
  if one_for_all:
    return [text.strip()] * count  # One pattern for every source (it may hold commas).
  raise ValueError(
    f"data.{name} {text!r} has {len(parts)} entries for {count} sources: give one per source, "
    "comma separated in the order of data.source, or ''"
  )


def source_settings(data_config) -> list[SourceSettings]:
  """The sources of `config.data`, each with its identity pattern and landmark cache."""
  text = str(data_config.source)
  if "," not in text:
    return [SourceSettings(text, data_config.identity_pattern, data_config.landmarks_cache)]
  specs = [s.strip() for s in text.split(",")]
  if not all(specs):
    raise ValueError(f"data.source {text!r} has an empty entry")
  patterns = _per_source(
    data_config.identity_pattern, len(specs), "identity_pattern", one_for_all=True
  )
  caches = _per_source(
    data_config.landmarks_cache, len(specs), "landmarks_cache", one_for_all=False
  )
  return [SourceSettings(*entry) for entry in zip(specs, patterns, caches)]


def _tags(specs: Sequence[str]) -> list[str]:
  """Short unique names for qualified keys: the folder's name (`utkface`), or `lfw` for tfds."""
  tags = []
  for spec in specs:
    name = spec.removeprefix("tfds:") if spec.startswith("tfds:") else pathlib.Path(spec).name
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "source"
    tag, n = base, 2
    while tag in tags:
      tag, n = f"{base}_{n}", n + 1
    tags.append(tag)
  return tags


class SourceSet(sources.FaceSource):
  """Several sources behind one key space: `<tag>/<key in that source>` (picklable)."""

  def __init__(self, parts: Sequence[tuple[str, sources.FaceSource]]):
    self._sources = dict(parts)
    self.name = " + ".join(source.name for _, source in parts)
    self.records = [
      sources.FaceRecord(f"{tag}/{r.key}", f"{tag}/{r.identity}")
      for tag, source in parts
      for r in source.records
    ]

  def split_key(self, key: str) -> tuple[str, str]:
    """(tag, key within that source)."""
    tag, sep, local = key.partition("/")
    if not sep or tag not in self._sources:
      raise KeyError(f"{key!r} is not a key of {self.name} (expected '<tag>/<key>')")
    return tag, local

  def load(self, key: str) -> np.ndarray:
    tag, local = self.split_key(key)
    return self._sources[tag].load(local)

  def fingerprint(self, key: str) -> str:
    tag, local = self.split_key(key)
    return self._sources[tag].fingerprint(local)


@dataclasses.dataclass
class SourcePart:
  """One source of a run: its landmarks and its (capped) splits, keys local to it."""

  tag: str  # '' for a run's only source (its keys are not qualified).
  source: sources.FaceSource
  landmarks: landmarks_lib.LandmarkTable
  splits: dict[str, list[str]]
  num_without_face: int
  landmarks_path: str


@dataclasses.dataclass
class PreparedData:
  """The run's face source(s), landmarks (faces only) and fixed splits, in one key space."""

  source: sources.FaceSource  # The only source, or a SourceSet of several.
  landmarks: Mapping[str, landmarks_lib.FaceLandmarks]
  splits: dict[str, list[str]]  # Capped at data.max_examples per split (of each source).
  num_without_face: int  # Source records dropped because no face (or landmarks) was found.
  landmarks_path: str = ""  # Comma separated, one per source.
  parts: tuple[SourcePart, ...] = ()  # Per source, in data.source's order.

  def num_examples(self, split: str) -> int:
    return len(self.splits[split])

  def seed_key(self, key: str) -> str:
    """The key within its own source: evaluation masks follow the image, not the mixture."""
    return key.partition("/")[2] if len(self.parts) > 1 else key


def _load_landmarks(source, settings: SourceSettings, data_config):
  """The source's landmark cache, brought up to date: images added, changed or removed since
  it was written are noticed (by file size and time) and only those are landmarked."""
  path = settings.landmarks_cache or landmarks_lib.default_cache_path(settings.spec)
  path = pathlib.Path(path).expanduser()
  logging.info("Landmarks of %s: %s", source.name, path)
  table = landmark_cache.compute_cache(
    source,
    path,
    workers=data_config.worker_count or os.cpu_count() or 1,
    # Worker processes take seconds to start (dlib models): a few images stay in-process.
    min_images_per_worker=50,
    settings_from_cache=True,
    progress=True,
  )
  return table, path


def _check_keys(split_path, the_splits, face_keys, cache_path, where=""):
  for name, keys in the_splits.items():
    missing = [k for k in keys if k not in face_keys]
    if missing:
      raise ValueError(
        f"{split_path}: split {name!r}{where} names {len(missing)} images that have no landmarks "
        f"in {cache_path} (first: {missing[0]!r}); the source or cache changed since the split "
        "was made"
      )


def _stored_source_splits(split_path, stored, opened) -> list[dict]:
  """Each source's splits from a multi-source splits file, checked against the sources."""
  entries = stored.info.get("sources")
  names = [source.name for _, source, _ in opened]
  if not isinstance(entries, list) or [e.get("source") for e in entries] != names:
    found = [e.get("source") for e in entries] if isinstance(entries, list) else "one source"
    raise ValueError(
      f"{split_path} was written for {found}, not for the sources {names}: use another workdir"
    )
  return [
    splits.Splits(e["splits"], {k: v for k, v in e.items() if k != "splits"}) for e in entries
  ]


def _check_split_sizes(per_source, data_config, min_examples, names) -> None:
  """Raises `cli.UserError` when a split (capped, all sources together) is too small."""
  if not min_examples:
    return
  cap = int(data_config.max_examples)
  sizes = {
    split: sum(min(len(s[split]), cap) if cap else len(s[split]) for s in per_source)
    for split in min_examples
  }
  short = [f"{k} has {sizes[k]} (needs {n})" for k, n in min_examples.items() if sizes[k] < n]
  if short:
    raise cli.UserError(
      f"the splits of {' + '.join(names)} are too small for this run: {', '.join(short)}; use "
      "more images, a smaller batch_size, or other data.test_size / data.val_fraction"
    )


def prepare_data(data_config, *, workdir=None, min_examples=None) -> PreparedData:
  """Opens the source(s), loads (or computes) each landmark cache and fixes the splits.

  Args:
    data_config: the `config.data` section (see configs/common.py).
    workdir: when given, the splits are written to `workdir/splits.json` on the first run and
      read back on later runs, so a resumed run never sees a different split.
    min_examples: {split: fewest examples} (after the max_examples cap); a smaller split is
      refused (`cli.UserError`) before anything is written, not found after training.

  Returns:
    PreparedData; records without a face are dropped and counted.
  """
  settings = source_settings(data_config)
  multi = len(settings) > 1
  tags = _tags([s.spec for s in settings]) if multi else [""]
  opened = []  # (settings, source, records with a face)
  tables = []
  for entry in settings:
    source = sources.get_source(
      entry.spec,
      identity_pattern=entry.identity_pattern,
      tfds_data_dir=data_config.tfds_data_dir,
      manual_dir=data_config.manual_dir,
    )
    table, path = _load_landmarks(source, entry, data_config)
    # The table holds faces only; `table.problems` says why the others are not there.
    records = [r for r in source.records if r.key in table]
    dropped = len(source.records) - len(records)
    if dropped:
      logging.warning(
        "%d of %d images of %s have no face landmarks and are dropped",
        dropped,
        len(source.records),
        source.name,
      )
    if not records:
      raise ValueError(f"no image of {source.name} has face landmarks (cache: {path})")
    opened.append((entry, source, records))
    tables.append((table, path))

  split_path = epath.Path(workdir) / "splits.json" if workdir else None  # Maybe gs://.
  if split_path is not None and split_path.exists():
    logging.info("Reading the splits of a previous run from %s", split_path)
    stored = splits.read_splits(split_path)
    if multi:
      per_source = _stored_source_splits(split_path, stored, opened)
    elif "sources" in stored.info:
      raise ValueError(f"{split_path} was written for several sources: use another workdir")
    else:
      per_source = [stored]
    for (_, source, records), (_, path), the_splits in zip(opened, tables, per_source):
      where = f" of {source.name}" if multi else ""
      _check_keys(split_path, the_splits, {r.key for r in records}, path, where)
    _check_split_sizes(per_source, data_config, min_examples, [s.name for _, s, _ in opened])
  else:
    per_source = [
      splits.make_splits(
        records,
        seed=data_config.split_seed,
        test_size=data_config.test_size,
        val_fraction=data_config.val_fraction,
      )
      for _, _, records in opened
    ]
    _check_split_sizes(per_source, data_config, min_examples, [s.name for _, s, _ in opened])
    if split_path is not None:
      split_path.parent.mkdir(parents=True, exist_ok=True)
      splits.write_splits(
        split_path, _combined(per_source, opened, tags) if multi else per_source[0]
      )

  parts = []
  for tag, (_, source, records), (table, path), the_splits in zip(tags, opened, tables, per_source):
    # The cap applies after the split is fixed (and written), so quick runs share its test set.
    capped = {
      k: _cap(list(v), int(data_config.max_examples), data_config.split_seed)
      for k, v in the_splits.items()
    }
    logging.info("Splits of %s: %s", source.name, {k: len(v) for k, v in capped.items()})
    parts.append(
      SourcePart(tag, source, table, capped, len(source.records) - len(records), str(path))
    )
  if not multi:
    part = parts[0]
    return PreparedData(
      part.source,
      part.landmarks,
      part.splits,
      part.num_without_face,
      part.landmarks_path,
      tuple(parts),
    )
  combined = _combined([p.splits for p in parts], opened, tags)
  return PreparedData(
    source=SourceSet([(p.tag, p.source) for p in parts]),
    landmarks={f"{p.tag}/{k}": face for p in parts for k, face in p.landmarks.items()},
    splits={name: list(keys) for name, keys in combined.items()},
    num_without_face=sum(p.num_without_face for p in parts),
    landmarks_path=",".join(p.landmarks_path for p in parts),
    parts=tuple(parts),
  )


def _combined(per_source, opened, tags) -> splits.Splits:
  """Every source's splits one after another, keys qualified; `info['sources']` keeps each."""
  combined = {
    name: [f"{tag}/{k}" for tag, s in zip(tags, per_source) for k in s[name]]
    for name in splits.SPLIT_NAMES
  }
  entries = [
    {
      "source": source.name,
      "tag": tag,
      "identity_pattern": entry.identity_pattern,
      **getattr(s, "info", {}),
      "splits": {name: list(s[name]) for name in splits.SPLIT_NAMES},
    }
    for tag, s, (entry, source, _) in zip(tags, per_source, opened)
  ]
  return splits.Splits(combined, {"sources": entries})


def _cap(keys: list[str], cap: int, seed: int) -> list[str]:
  """At most `cap` keys (0 = all): a seeded sample, in the split's order, rather than the
  first keys (which would be a handful of identities)."""
  if not cap or len(keys) <= cap:
    return keys
  chosen = np.random.default_rng([seed, len(keys)]).choice(len(keys), cap, replace=False)
  return [keys[i] for i in sorted(chosen)]
