"""Where faces come from: a folder of images, or TFDS `lfw` / `celeb_a`, behind one interface.

A `FaceSource` lists `FaceRecord(key, identity)`s and loads any record by key as uint8 RGB.
Sources are picklable (grain worker processes and landmark workers get a copy), so they hold
paths and names, and reopen files lazily in each process.

TFDS datasets are prepared once into the TFDS data dir with `file_format='array_record'`, which
gives the random access grain needs. A local archive (e.g. `lfw.tgz`) in `manual_dir` is used
instead of downloading; with no archive and no network, preparation fails fast with a message
saying how to use a local archive or a folder of images, instead of TFDS retrying for minutes.
"""

from __future__ import annotations

import abc
import concurrent.futures
import dataclasses
import os
import pathlib
import re
import socket
import urllib.parse
from collections.abc import Sequence

import numpy as np
import tqdm
from absl import logging

from mask2face.data.images import ImageError, load_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

# Named identity patterns for folders whose file names carry the identity. `maskdetect`: the
# Face-Mask-Detection crops, `X_Y_<name>_NNNN.jpg` (e.g. `0_0_anhu_0004.jpg` -> `anhu`).
# `utkface`: UTKFace's `<age>_<gender>_<race>_<datetime>.jpg.chip.jpg` crops carry no identity
# label, so each file is its own identity (the whole name before `.jpg.chip.jpg`).
IDENTITY_PATTERNS = {
  "maskdetect": r"^\d+_\d+_(.+)_\d+\.[A-Za-z]+$",
  "utkface": r"^(.+)\.jpg\.chip\.jpg$",
}

# The TFDS datasets this project reads, and the feature holding each one's identity.
TFDS_DATASETS = ("lfw", "celeb_a")

CONNECT_TIMEOUT_S = 3.0


@dataclasses.dataclass(frozen=True)
class FaceRecord:
  """One face image: `key` is unique and stable within its source; `identity` names the person."""

  key: str
  identity: str


class FaceSource(abc.ABC):
  """A list of face records, each loadable by key as uint8 HxWx3 RGB."""

  name: str
  records: list[FaceRecord]

  def __len__(self) -> int:
    return len(self.records)

  @abc.abstractmethod
  def load(self, key: str) -> np.ndarray:
    """Returns the image of `key` as uint8 HxWx3 RGB; raises `ImageError` if it can't."""

  def fingerprint(self, key: str) -> str:
    """What changes when the image of `key` changes; '' where it cannot (a TFDS version).

    Landmark caches store it per image and recompute an image whose fingerprint changed.
    """
    del key
    return ""

  def __repr__(self) -> str:
    return f"{type(self).__name__}({self.name!r}, {len(self)} images)"


def _resolve_identity_pattern(identity_pattern: str) -> re.Pattern | None:
  """A preset name or a regex whose first group is the identity; '' means none."""
  if not identity_pattern:
    return None
  pattern = IDENTITY_PATTERNS.get(identity_pattern, identity_pattern)
  try:
    compiled = re.compile(pattern)
  except re.error as e:
    raise ValueError(
      f"identity_pattern {identity_pattern!r} is not a valid regex ({e}); use a regex whose "
      f"first group is the identity, or one of the presets {sorted(IDENTITY_PATTERNS)}"
    ) from e
  if compiled.groups < 1:
    raise ValueError(
      f"identity_pattern {identity_pattern!r} has no group: its first group must capture the "
      "identity, e.g. r'^\\d+_\\d+_(.+)_\\d+\\.jpg$'"
    )
  return compiled


class FolderSource(FaceSource):
  """Every image under a folder (recursive). Keys are paths relative to the folder.

  The identity is the name of the image's parent folder (LFW's `<Person>/<Person>_0001.jpg`
  layout), or the first group of `identity_pattern` matched against the file name. An image
  with no identity (directly in the root without a pattern, or not matching the pattern) is
  its own identity, so it can never leak across splits.
  """

  def __init__(self, root: str | os.PathLike, *, identity_pattern: str = ""):
    root_path = pathlib.Path(root).expanduser()
    if not root_path.is_dir():
      raise FileNotFoundError(
        f"face source {str(root)!r} is not a folder (a source is 'tfds:lfw', 'tfds:celeb_a' or "
        "a folder of images)"
      )
    self.root = str(root_path.resolve())
    self.name = self.root
    self.identity_pattern = identity_pattern
    pattern = _resolve_identity_pattern(identity_pattern)
    keys = _scan_images(root_path)
    if not keys:
      raise ValueError(
        f"no images found under {self.root} (looked for {', '.join(IMAGE_EXTENSIONS)}, any case)"
      )
    self.records = []
    unmatched = []
    for key in keys:
      parent, _, file_name = key.rpartition("/")
      if pattern is not None:
        match = pattern.search(file_name)
        if match and match.group(1):
          identity = match.group(1)
        else:
          identity = key
          unmatched.append(key)
      else:
        # Only the innermost folder names the person: `train/Ann/1.jpg` and `test/Ann/2.jpg`
        # are the same identity, which keeps splits conservative.
        identity = parent.rpartition("/")[2] if parent else key
      self.records.append(FaceRecord(key, identity))
    if pattern is not None and len(unmatched) == len(keys):
      raise ValueError(
        f"identity_pattern {identity_pattern!r} matched none of the {len(keys)} file names "
        f"under {self.root} (e.g. {keys[0]!r})"
      )
    if unmatched:
      logging.warning(
        "%d of %d images under %s do not match identity_pattern %r (e.g. %r): each is its own "
        "identity",
        len(unmatched),
        len(keys),
        self.root,
        identity_pattern,
        unmatched[0],
      )
    self._keys = None
    logging.info(
      "Folder source %s: %d images, %d identities",
      self.root,
      len(self.records),
      len({r.identity for r in self.records}),
    )

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_keys"] = None  # Rebuilt on demand; no need to ship it to every worker.
    return state

  def load(self, key: str) -> np.ndarray:
    if self._keys is None:
      self._keys = frozenset(r.key for r in self.records)
    # Only listed keys: a key from another source (or '../x') must not reach the disk.
    if key not in self._keys:
      raise KeyError(f"{key!r} is not an image of the folder source {self.root}")
    return load_image(os.path.join(self.root, key))

  def fingerprint(self, key: str) -> str:
    """`size:mtime_ns` of the file (as make and rsync decide that a file changed)."""
    try:
      stat = os.stat(os.path.join(self.root, key))
    except OSError:
      return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _scan_images(root: pathlib.Path) -> list[str]:
  """Relative posix paths of the images under `root`, sorted; hidden files and folders skipped."""
  keys = []
  for dirpath, dirnames, filenames in os.walk(root):
    # Hidden folders hold thumbnails and macOS `._` copies, not faces.
    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    rel = os.path.relpath(dirpath, root)
    for file_name in filenames:
      if file_name.startswith(".") or not file_name.lower().endswith(IMAGE_EXTENSIONS):
        continue
      path = file_name if rel == "." else os.path.join(rel, file_name)
      keys.append(pathlib.PurePath(path).as_posix())
  return sorted(keys)


class TfdsSource(FaceSource):
  """Every split of a prepared TFDS dataset (`lfw`, `celeb_a`), read by random access.

  Keys are `<split>/<index>/<identity>`: the position in TFDS's deterministic order, plus the
  label so that a key read in a splits file says whose face it is.
  """

  def __init__(self, dataset: str, *, data_dir: str = ""):
    if dataset not in TFDS_DATASETS:
      raise ValueError(f"unsupported TFDS dataset {dataset!r}; supported: {TFDS_DATASETS}")
    self.dataset = dataset
    self.data_dir = data_dir
    self.name = f"tfds:{dataset}"
    self._sources = {}
    builder = _tfds_builder(dataset, data_dir)
    if not builder.is_prepared():
      raise FileNotFoundError(
        f"TFDS dataset {dataset!r} is not prepared in {builder.data_dir}: use "
        "get_source() or prepare_tfds() first"
      )
    self.records = []
    self.splits = sorted(builder.info.splits)
    for split in self.splits:
      source = self._data_source(split)
      # Reads the labels in chunks; images are left encoded so this only parses the records.
      chunk = 1024
      # celeb_a's 160k-image train split takes a while: show a bar for big splits only.
      with tqdm.tqdm(
        total=len(source),
        desc=f"{dataset}[{split}] labels",
        unit="img",
        disable=len(source) < 20_000,
      ) as bar:
        for start in range(0, len(source), chunk):
          indices = list(range(start, min(start + chunk, len(source))))
          for index, example in zip(indices, source.__getitems__(indices)):
            identity = _tfds_identity(dataset, example)
            self.records.append(FaceRecord(f"{split}/{index}/{identity}", identity))
          bar.update(len(indices))
      logging.info("TFDS %s[%s]: %d images", dataset, split, len(source))

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_sources"] = {}  # Open array_record readers stay in their process.
    return state

  def _data_source(self, split: str):
    if split not in self._sources:
      import tensorflow_datasets as tfds

      builder = _tfds_builder(self.dataset, self.data_dir)
      # Images stay encoded: `load_image` decodes them like every other source's files.
      self._sources[split] = builder.as_data_source(
        split=split, decoders={"image": tfds.decode.SkipDecoding()}
      )
    return self._sources[split]

  def load(self, key: str) -> np.ndarray:
    split, _, rest = key.partition("/")
    index, _, _ = rest.partition("/")
    if split not in self.splits or not index.isdigit():
      raise KeyError(f"{key!r} is not a key of {self.name} (expected '<split>/<index>/<label>')")
    source = self._data_source(split)
    if int(index) >= len(source):
      raise KeyError(f"{key!r}: index {index} out of range for {self.name}[{split}]")
    example = source[int(index)]
    try:
      return load_image(example["image"])
    except ImageError as e:
      raise ImageError(f"{self.name} {key}: {e}") from e


def _tfds_identity(dataset: str, example) -> str:
  if dataset == "lfw":
    label = example["label"]
  else:
    label = example["identity"]["Identity_No"]
  if isinstance(label, bytes):
    label = label.decode("utf-8")
  return str(label.item() if isinstance(label, np.generic | np.ndarray) else label)


def _tfds_builder(dataset: str, data_dir: str):
  import tensorflow_datasets as tfds

  try:
    return tfds.builder(dataset, data_dir=data_dir or None, file_format="array_record")
  except ValueError as e:
    if "File format is already set" not in str(e):
      raise
    # A copy made by a plain `tfds.load` is TFRecord, which has no random access for grain.
    raise ValueError(
      f"TFDS {dataset!r} in {data_dir or 'the default TFDS data dir'} was prepared as TFRecord; "
      "mask2face needs array_record. Use another --config.data.tfds_data_dir (it is prepared "
      "there again), or convert it: tfds convert_format --dataset_version_dir=<that dataset's "
      "version folder> --out_file_format=array_record"
    ) from e


def _can_connect(url: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
  """Whether a TCP connection to `url`'s host opens within `timeout` (DNS included)."""
  parsed = urllib.parse.urlparse(url)
  port = parsed.port or (443 if parsed.scheme == "https" else 80)

  def connect():
    with socket.create_connection((parsed.hostname, port), timeout=timeout):
      return True

  # A thread bounds the DNS lookup too, which `create_connection`'s timeout does not cover.
  pool = concurrent.futures.ThreadPoolExecutor(1)
  try:
    return pool.submit(connect).result(timeout=timeout + 1)
  except (OSError, concurrent.futures.TimeoutError):
    return False
  finally:
    pool.shutdown(wait=False)


def prepare_tfds(dataset: str, *, data_dir: str = "", manual_dir: str = "") -> None:
  """Prepares a TFDS dataset as array_record, from archives in `manual_dir` or by downloading.

  Archives in `manual_dir` under TFDS's registered names (`lfw.tgz`; for celeb_a
  `img_align_celeba.zip`, `list_eval_partition.txt`, `list_attr_celeba.txt`,
  `list_landmarks_align_celeba.txt`, `identity_CelebA.txt`) are used as they are: one whose
  checksum differs from TFDS's registered one is accepted with a warning.

  Raises:
    ConnectionError: files are missing from `manual_dir` and their host cannot be reached.
  """
  import tensorflow_datasets as tfds

  builder = _tfds_builder(dataset, data_dir)
  if builder.is_prepared():
    return
  url_infos = dict(builder.url_infos or {})
  manual = pathlib.Path(manual_dir).expanduser() if manual_dir else None
  local_infos = {}
  missing = {}
  for url, info in url_infos.items():
    path = manual / info.filename if manual and info.filename else None
    if path is not None and path.is_file():
      local = tfds.download.checksums.compute_url_info(path)
      if local != info:
        logging.warning(
          "%s differs from the archive TFDS registered for %s (expected %s bytes, sha256 %s; "
          "got %s bytes, sha256 %s): using it as given",
          path,
          dataset,
          int(info.size),
          info.checksum,
          int(local.size),
          local.checksum,
        )
      local_infos[url] = local
    else:
      missing[url] = info
  if missing:
    hosts = sorted({urllib.parse.urlparse(url).hostname for url in missing})
    if not _can_connect(next(iter(missing))):
      names = ", ".join(sorted(str(i.filename) for i in missing.values()))
      raise ConnectionError(
        f"cannot prepare TFDS {dataset!r}: {names} not found in manual_dir "
        f"({str(manual) if manual else 'not set'}) and {', '.join(hosts)} is unreachable. "
        f"Put {names} in a folder DIR and pass --config.data.manual_dir=DIR, or train from a "
        "folder of images with --config.data.source=/path/to/faces."
      )
    logging.info("Downloading %s from %s (this can take a while)", dataset, ", ".join(hosts))

  if local_infos:
    make_download_manager = builder._make_download_manager

    def make_download_manager_with_local(*args, **kwargs):
      manager = make_download_manager(*args, **kwargs)
      if not isinstance(getattr(manager, "_url_infos", None), dict):
        raise RuntimeError(
          "this tensorflow-datasets version changed DownloadManager; cannot use the local "
          f"archives in {manual}: prepare {dataset} with `tfds build` instead"
        )
      # TFDS has no public hook for a user's own copy of an archive: record its checksum as
      # the expected one, so the copy in manual_dir is used instead of failing validation.
      manager._url_infos.update(local_infos)
      return manager

    builder._make_download_manager = make_download_manager_with_local

  logging.info("Preparing TFDS %s (array_record) in %s", dataset, builder.data_dir)
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual) if manual else None, try_download_gcs=False
    ),
    file_format="array_record",
  )


def get_source(
  spec: str, *, identity_pattern: str = "", tfds_data_dir: str = "", manual_dir: str = ""
) -> FaceSource:
  """Returns the face source named by `spec`.

  Args:
    spec: `tfds:lfw`, `tfds:celeb_a`, or a folder of images (searched recursively).
    identity_pattern: folders only: a regex whose first group is the identity (matched
      against the file name), or a preset name from `IDENTITY_PATTERNS`; '' = parent folder.
    tfds_data_dir: TFDS data dir ('' = TFDS's default).
    manual_dir: a folder holding local TFDS archives (e.g. `lfw.tgz`), used instead of a
      download when the dataset is not prepared yet.

  Returns:
    A picklable `FaceSource`.
  """
  if spec.startswith("tfds:"):
    dataset = spec.removeprefix("tfds:")
    if dataset not in TFDS_DATASETS:
      raise ValueError(
        f"unknown TFDS face source {spec!r}; supported: "
        f"{', '.join('tfds:' + d for d in TFDS_DATASETS)}, or a folder of images"
      )
    if identity_pattern:
      logging.warning("identity_pattern is ignored for %s (TFDS gives the identity)", spec)
    prepare_tfds(dataset, data_dir=tfds_data_dir, manual_dir=manual_dir)
    return TfdsSource(dataset, data_dir=tfds_data_dir)
  return FolderSource(spec, identity_pattern=identity_pattern)


def identities(records: Sequence[FaceRecord]) -> dict[str, list[str]]:
  """Maps each identity to its keys, in record order."""
  out = {}
  for record in records:
    out.setdefault(record.identity, []).append(record.key)
  return out
