"""CLI: write masked/clean training pairs to disk as PNG, in upstream Mask2Face's layout.

  python -m mask2face.data.export_pairs --source=../shared/data/lfw_gray --num=100 --out=/tmp/pairs
  # Crop and masks as a training config makes them (explicit flags still win):
  python -m mask2face.data.export_pairs --config=configs/unet.py:runlocal --source=... --out=...

writes `inputs/<name>.png` (masked face), `outputs/<name>.png` (clean face) and, beyond
upstream, `masks/<name>.png` (255 under the mask). Landmarks come from `--landmarks_cache`
when given, else dlib runs on the fly. Files that cannot be read and photos without a face are
skipped, counted and listed at the end; every file is written atomically (temp file + rename).
An --out that already holds pairs is refused unless --overwrite (which replaces pairs of the
same names and keeps the rest).
Crop, mask and size settings default to `pairs.PairOptions` (the values of
`configs/common.py`'s `config.data`), or come from `--config`'s `config.data`.
"""

import dataclasses
import multiprocessing
import os
import pathlib
import re
import sys
import time
from collections.abc import Iterator

import numpy as np
from absl import app, flags, logging

from mask2face import atomic, cli, config_files
from mask2face.data import landmarks as landmarks_lib
from mask2face.data import pairs, sources
from mask2face.data.images import ImageError

# Pair settings with a flag of their own: flag name -> `PairOptions` field.
OPTION_FLAGS = {
  "size": "image_size",
  "margin": "margin",
  "level_eyes": "level_eyes",
  "mask_families": "mask_families",
  "templates_dir": "templates_dir",
}


def define_flags():
  """Flags shared by this CLI and `mask2face.data.preview`."""
  defaults = pairs.PairOptions()
  flags.DEFINE_string(
    "config",
    "",
    "A training config (path.py[:arg]) whose config.data gives the pair settings; "
    "the flags given explicitly override it ('' = the defaults below).",
  )
  flags.DEFINE_string("source", None, "tfds:lfw, tfds:celeb_a or a folder of images.")
  flags.DEFINE_string("identity_pattern", "", "Folders: regex whose first group is the identity.")
  flags.DEFINE_string("tfds_data_dir", "", "TFDS data dir ('' = default).")
  flags.DEFINE_string("manual_dir", "", "Folder with a local TFDS archive (e.g. lfw.tgz).")
  flags.DEFINE_string("out", None, "Output folder (export) or PNG file (preview).")
  flags.DEFINE_integer("size", defaults.image_size, "Crop side in pixels.")
  flags.DEFINE_float("margin", defaults.margin, "Face box widened by this fraction per side.")
  flags.DEFINE_bool("level_eyes", defaults.level_eyes, "Rotate crops so the eyes are level.")
  flags.DEFINE_string("mask_families", defaults.mask_families, "'all' or comma-separated names.")
  flags.DEFINE_string("templates_dir", defaults.templates_dir, "MaskTheFace template folder.")
  flags.DEFINE_bool("augment", False, "Apply the training flip and colour jitter.")
  flags.DEFINE_integer("seed", 0, "Masks are seeded by [seed, record position].")
  flags.DEFINE_string("landmarks_cache", "", "A landmark cache; '' = detect with dlib.")
  flags.DEFINE_integer("workers", 1, "Processes (each loads dlib once); 1 = this process.")
  flags.DEFINE_bool("overwrite", False, "Replace what --out already holds (same names only).")
  flags.mark_flags_as_required(["source", "out"])


def options_from_flags(f=flags.FLAGS) -> pairs.PairOptions:
  """`--config`'s pair settings (or the defaults), then the flags (with --config: those given)."""
  if not f.config:
    return dataclasses.replace(
      pairs.PairOptions(), **{field: f[name].value for name, field in OPTION_FLAGS.items()}
    )
  base = pairs.PairOptions.from_config(config_files.load(f.config).data)
  given = {field: f[name].value for name, field in OPTION_FLAGS.items() if f[name].present}
  return dataclasses.replace(base, **given)


@dataclasses.dataclass
class Outcome:
  """One source record's result: a pair, or why there is none."""

  index: int
  key: str
  pair: dict | None = None
  status: str = "ok"  # ok | unreadable | no_face | failed
  reason: str = ""


_WORKER = {}  # Per process: source, options, landmark table or detector.


def _init(source, options, seed, augment, cache_path):
  _WORKER.update(source=source, options=options, seed=seed, augment=augment)
  if cache_path:
    _WORKER["table"] = landmarks_lib.load_cache(cache_path)
  else:
    _WORKER["detector"] = landmarks_lib.LandmarkDetector()


def _make(item) -> Outcome:
  index, key = item
  w = _WORKER
  try:
    image = w["source"].load(key)
  except (ImageError, OSError) as e:
    return Outcome(index, key, status="unreadable", reason=str(e))
  if "table" in w:
    face = w["table"].get(key)
  else:
    face = w["detector"].detect_largest(image)
  if face is None:
    return Outcome(index, key, status="no_face", reason=f"{key}: no face found")
  try:
    rng = np.random.default_rng([w["seed"], index])
    pair = pairs.make_pair(image, face.points, rng, w["options"], augment=w["augment"])
  except Exception as e:  # A painter failure on one odd face must not stop the job.
    logging.exception("Pair for %s failed", key)
    return Outcome(index, key, status="failed", reason=f"{key}: {type(e).__name__}: {e}")
  return Outcome(index, key, pair=pair)


def iter_outcomes(
  source, options, *, seed=0, augment=False, cache_path="", workers=1
) -> Iterator[Outcome]:
  """Every record of `source` in order, as an `Outcome`; the caller stops when it has enough."""
  items = [(i, r.key) for i, r in enumerate(source.records)]
  args = (source, options, seed, augment, cache_path)
  if workers <= 1:
    _init(*args)
    yield from map(_make, items)
    return
  with multiprocessing.get_context("spawn").Pool(workers, _init, args) as pool:
    # imap keeps the source order; small chunks keep the early stop prompt.
    yield from pool.imap(_make, items, chunksize=4)


class Tally:
  """Counts outcomes and keeps the reasons for the final report."""

  def __init__(self):
    self.counts = {"ok": 0, "unreadable": 0, "no_face": 0, "failed": 0}
    self.problems = []

  def add(self, outcome: Outcome):
    self.counts[outcome.status] += 1
    if outcome.status != "ok":
      self.problems.append(f"{outcome.status}: {outcome.reason}")
      logging.warning("Skipped %s", outcome.reason)

  def report(self, limit=20) -> str:
    skipped = {k: v for k, v in self.counts.items() if k != "ok" and v}
    lines = [f"skipped {sum(skipped.values())} file(s): {skipped or 'none'}"]
    lines += ["  " + p for p in self.problems[:limit]]
    if len(self.problems) > limit:
      lines.append(f"  ... and {len(self.problems) - limit} more")
    return "\n".join(lines)


def write_png(path: pathlib.Path, array: np.ndarray):
  """Writes a uint8 image atomically: a temp file in the same folder, then a rename."""
  atomic.write_image(path, array)


def to_uint8(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def file_stem(key: str, used: set) -> str:
  """A file name from a source key (`Aaron/Aaron_0001.jpg` -> `Aaron_Aaron_0001`), unique."""
  stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.splitext(key)[0]).strip("_.") or "image"
  name, n = stem, 1
  while name in used:
    n += 1
    name = f"{stem}_{n}"
  used.add(name)
  return name


def write_pairs(
  source, options, out, *, num, seed=0, augment=False, cache_path="", workers=1, overwrite=False
):
  """Writes up to `num` pairs (0 = all) under `out`; returns the `Tally`.

  Raises:
    cli.UserError: `out` already holds pairs and `overwrite` is False.
  """
  from tqdm import tqdm

  out = pathlib.Path(out)
  dirs = {name: out / name for name in ("inputs", "outputs", "masks")}
  held = [p for d in dirs.values() if d.is_dir() for p in sorted(d.iterdir())]
  cli.refuse_existing(held, overwrite=overwrite)
  for d in dirs.values():
    d.mkdir(parents=True, exist_ok=True)
  tally, used = Tally(), set()
  target = num or len(source.records)
  outcomes = iter_outcomes(
    source, options, seed=seed, augment=augment, cache_path=cache_path, workers=workers
  )
  try:
    with tqdm(total=target, desc="pairs", unit="pair") as bar:
      for outcome in outcomes:
        tally.add(outcome)
        if outcome.pair is None:
          continue
        stem = file_stem(outcome.key, used)
        write_png(dirs["inputs"] / f"{stem}.png", to_uint8(outcome.pair["masked"]))
        write_png(dirs["outputs"] / f"{stem}.png", to_uint8(outcome.pair["clean"]))
        write_png(dirs["masks"] / f"{stem}.png", to_uint8(outcome.pair["mask"]))
        bar.update(1)
        if tally.counts["ok"] >= target:
          break
  finally:
    outcomes.close()  # Stops the worker pool when we leave early.
  return tally


def open_source(f=flags.FLAGS):
  try:
    return sources.get_source(
      f.source,
      identity_pattern=f.identity_pattern,
      tfds_data_dir=f.tfds_data_dir,
      manual_dir=f.manual_dir,
    )
  except (OSError, ValueError) as e:  # No such folder, no images, a bad pattern.
    raise cli.UserError(str(e)) from e


@cli.one_line_errors
def main(argv):
  del argv
  f = flags.FLAGS
  start = time.time()
  source = open_source(f)
  tally = write_pairs(
    source,
    options_from_flags(f),
    f.out,
    num=f.num,
    seed=f.seed,
    augment=f.augment,
    cache_path=f.landmarks_cache,
    workers=f.workers,
    overwrite=f.overwrite,
  )
  cli.emit(f"wrote {tally.counts['ok']} pairs to {f.out} in {time.time() - start:.1f} s")
  cli.emit(tally.report())
  if tally.counts["ok"] == 0:
    sys.exit(f"no pair could be made from {source.name}")


if __name__ == "__main__":
  define_flags()
  flags.DEFINE_integer("num", 100, "Pairs to write (0 = one per usable photo).")
  app.run(main)
