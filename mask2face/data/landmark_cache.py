"""The landmark cache job: every image of a `FaceSource` landmarked once, in parallel, resumably.

  python -m mask2face.data.landmark_cache --source=../shared/data/lfw_gray \
    --out=/tmp/lfw_landmarks.json --workers=2

Finished images go to an append-only journal (`<out>.journal.jsonl`, flushed per chunk); a
rerun skips them; the cache (read by `mask2face.data.landmarks.load_cache`) and
`<out>.report.json` (per-file reasons for every image without landmarks) are written
atomically at the end.

Every record keeps its image's fingerprint (a folder's file size and modification time), so a
rerun over a source that changed landmarks exactly the images added or changed since, and
drops the removed ones; a cache already up to date is left untouched.
"""

import collections
import json
import multiprocessing
import os
import pathlib
import time
from collections.abc import Mapping, Sequence

from absl import logging

from mask2face import atomic, cli
from mask2face.data import landmarks
from mask2face.data.images import ImageError


def _journal_path(path: pathlib.Path) -> pathlib.Path:
  return path.with_name(path.name + ".journal.jsonl")


def report_path(path: str | os.PathLike) -> pathlib.Path:
  """Where `compute_cache` writes its summary and per-file reasons."""
  path = pathlib.Path(path)
  return path.with_name(path.name + ".report.json")


def landmark_record(source, detector: landmarks.LandmarkDetector, key: str) -> dict:
  """Landmarks one image of a source; never raises on bad files (they become a status)."""
  # Taken before reading: a file replaced meanwhile then looks changed on the next run.
  stamp = {"key": key, "fingerprint": landmarks.fingerprint(source, key)}
  try:
    image = source.load(key)
  except ImageError as e:
    return {**stamp, "status": "unreadable", "reason": str(e)}
  except Exception as e:  # A source bug or odd file must not stop a 13k-image job.
    return {**stamp, "status": "unreadable", "reason": f"{key}: {type(e).__name__}: {e}"}
  try:
    face = detector.detect_largest(image)
  except Exception as e:
    return {
      **stamp,
      "status": "unreadable",
      "reason": f"{key}: landmarking failed ({type(e).__name__}: {e})",
    }
  status = landmarks.classify(face)
  record = {**stamp, "status": status}
  if face is None:
    record["reason"] = f"{key}: no face found"
  else:
    record["landmarks"] = face.to_json()
  return record


_WORKER = {}  # Per worker process: the source and the detector, built once by the initializer.


def _init_worker(source, settings):
  _WORKER["source"] = source
  _WORKER["detector"] = landmarks.LandmarkDetector(**settings)


def _process_chunk(keys: Sequence[str]) -> list[dict]:
  return [landmark_record(_WORKER["source"], _WORKER["detector"], k) for k in keys]


def _read_journal(journal: pathlib.Path, settings: dict) -> dict[str, dict]:
  """Finished records from an interrupted run (a torn last line is ignored)."""
  records = {}
  with open(journal) as f:
    lines = f.read().splitlines()
  bad = 0
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      entry = json.loads(line)
    except json.JSONDecodeError:
      bad += 1
      continue
    if i == 0 and "header" in entry:
      if entry["header"].get("settings") != settings:
        raise ValueError(
          f"{journal}: written with other detector settings ({entry['header'].get('settings')}"
          f" vs {settings}); delete it or choose another --out"
        )
      continue
    if isinstance(entry, dict) and entry.get("status") in landmarks.STATUSES and "key" in entry:
      records[entry.pop("key")] = entry
  if bad:
    logging.warning("%s: ignored %d torn line(s) from an interrupted write", journal, bad)
  return records


def summarize_job(records: Mapping[str, dict], seconds: float | None = None) -> dict:
  """Counts per status, plus the share with landmarks."""
  counts = collections.Counter(r["status"] for r in records.values())
  summary = {s: counts.get(s, 0) for s in landmarks.STATUSES}
  summary["total"] = len(records)
  summary["with_landmarks"] = sum(summary[s] for s in landmarks.FACE_STATUSES)
  summary["fraction_with_landmarks"] = round(summary["with_landmarks"] / max(1, len(records)), 4)
  if seconds is not None:
    summary["seconds"] = round(seconds, 2)
  return summary


def _chunks(keys: Sequence[str], size: int) -> list[list[str]]:
  return [list(keys[i : i + size]) for i in range(0, len(keys), size)]


def compute_cache(
  source,
  path: str | os.PathLike,
  *,
  workers: int = 1,
  chunk_size: int = 32,
  progress: bool = True,
  min_images_per_worker: int = 1,
  settings_from_cache: bool = False,
  **detector_settings,
) -> landmarks.LandmarkTable:
  """Landmarks every image of a source once and caches the result; resumes interrupted runs.

  Images added to the source, changed (another fingerprint) or removed since the cache was
  written are noticed: the first two are landmarked, the last dropped. A cache that is
  already up to date is returned without being rewritten.

  Args:
    source: a `FaceSource` (`.name`, `.records` of `FaceRecord(key, identity)`, `.load(key)`);
      picklable when `workers > 1`.
    path: the cache file (JSON). `<path>.report.json` gets the summary and per-file reasons.
    workers: processes (each loads the dlib models once); 1 runs in this process.
    chunk_size: images per work unit; the journal is flushed after each.
    progress: show a tqdm bar with the rate.
    min_images_per_worker: fewer images to landmark per worker than this use fewer workers
      (starting one takes seconds).
    settings_from_cache: an existing cache keeps the detector settings it was made with
      (training reads caches the CLI may have made with other flags).
    **detector_settings: `landmarks.LandmarkDetector` keyword arguments.

  Returns:
    The `LandmarkTable`; its `.summary` counts one_face, several_faces, fallback, no_face and
    unreadable images.
  """
  from tqdm import tqdm

  path = pathlib.Path(path)
  settings = landmarks.LandmarkDetector(**detector_settings).settings()
  journal = _journal_path(path)
  keys = [r.key for r in source.records]
  if len(set(keys)) != len(keys):
    raise ValueError(f"source {source.name!r} has duplicate keys")

  done: dict[str, dict] = {}
  stored = None
  if path.exists():
    stored = landmarks.read_cache_file(path)
    if settings_from_cache and isinstance(stored.get("settings"), dict):
      settings = landmarks.LandmarkDetector(**stored["settings"]).settings()
    if stored.get("settings") != settings:
      raise ValueError(
        f"{path}: cache written with other detector settings ({stored.get('settings')} vs "
        f"{settings}); delete it or choose another path"
      )
    done.update(stored["records"])
  if journal.exists():
    done.update(_read_journal(journal, settings))
  if stored is not None and stored.get("format") != landmarks.CACHE_FORMAT:
    logging.warning("%s: a cache without file fingerprints; its images are checked again", path)
  changed = _drop_changed(source, keys, done)
  todo = [k for k in keys if k not in done]
  removed = len(set(done) - set(keys))
  if done or changed:
    logging.info(
      "%s: %d of %d images already done, %d to go (%d changed and %d removed since)",
      path,
      len(keys) - len(todo),
      len(keys),
      len(todo),
      changed,
      removed,
    )
  up_to_date = (
    stored is not None
    and stored.get("format") == landmarks.CACHE_FORMAT
    and not todo
    and set(stored["records"]) == set(keys)
    and not journal.exists()
  )
  if up_to_date:
    # No rewrite: runs sharing the cache only ever read it.
    records = {k: done[k] for k in keys}
    try:
      return landmarks.table_from_records(
        records, summary=stored.get("summary"), source_name=source.name, path=path
      )
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{path}: corrupt landmark cache ({type(e).__name__}: {e})") from None

  start = time.time()
  workers = max(1, min(workers, len(todo) // max(1, min_images_per_worker)))
  if todo:
    path.parent.mkdir(parents=True, exist_ok=True)
    new_journal = not journal.exists()
    with open(journal, "a") as log:
      if new_journal:
        header = {
          "header": {"format": landmarks.CACHE_FORMAT, "source": source.name, "settings": settings}
        }
        log.write(json.dumps(header) + "\n")
      else:
        # A run killed mid-line leaves a torn last line: start ours on a fresh one.
        log.write("\n")
      bar = tqdm(total=len(todo), unit="img", desc=f"landmarks {source.name}", disable=not progress)
      chunks = _chunks(todo, chunk_size)
      if workers <= 1:
        detector = landmarks.LandmarkDetector(**settings)
        results = (_process_chunk_local(source, detector, c) for c in chunks)
        _drain(results, done, log, bar)
      else:
        # spawn, not fork: the parent may hold JAX/TF threads, which fork can deadlock.
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, initializer=_init_worker, initargs=(source, settings)) as pool:
          _drain(pool.imap_unordered(_process_chunk, chunks), done, log, bar)
      bar.close()
  seconds = time.time() - start

  records = {k: done[k] for k in keys}
  summary = summarize_job(records)
  if todo:
    summary["seconds"] = round(seconds, 2)
    summary["images_per_second"] = round(len(todo) / max(seconds, 1e-9), 2)
  atomic.write_json(
    path,
    {
      "format": landmarks.CACHE_FORMAT,
      "source": source.name,
      "settings": settings,
      "summary": summary,
      "records": records,
    },
    indent=None,  # Tens of MB for a big source: compact.
  )
  problems = {
    k: r.get("reason", "") for k, r in records.items() if r["status"] in ("no_face", "unreadable")
  }
  atomic.write_json(
    report_path(path),
    {
      "source": source.name,
      "cache": str(path),
      "summary": summary,
      "problems": {k: {"status": records[k]["status"], "reason": v} for k, v in problems.items()},
      "several_faces": [k for k, r in records.items() if r["status"] == "several_faces"],
      "fallback": [k for k, r in records.items() if r["status"] == "fallback"],
    },
  )
  if journal.exists():
    journal.unlink()
  logging.info("Landmarks for %s -> %s: %s", source.name, path, summary)
  return landmarks.table_from_records(records, summary=summary, source_name=source.name, path=path)


def _drop_changed(source, keys, done: dict[str, dict]) -> int:
  """Removes from `done` every record whose image's fingerprint changed; returns how many.

  A record without one (a /1 cache) counts as '': kept for sources without fingerprints.
  """
  changed = 0
  for key in keys:
    if key in done and done[key].get("fingerprint", "") != landmarks.fingerprint(source, key):
      del done[key]
      changed += 1
  return changed


def _process_chunk_local(source, detector, keys):
  return [landmark_record(source, detector, k) for k in keys]


def _drain(results, done, log, bar):
  """Journals each finished chunk (flushed, so an interruption loses at most one chunk)."""
  faces = 0
  for chunk in results:
    for record in chunk:
      log.write(json.dumps(record, separators=(",", ":")) + "\n")
    log.flush()
    os.fsync(log.fileno())
    for record in chunk:
      record = dict(record)
      done[record.pop("key")] = record
      faces += record["status"] in landmarks.FACE_STATUSES
    bar.update(len(chunk))
    bar.set_postfix(new_faces=faces, refresh=False)


@cli.one_line_errors
def main(argv):
  """The CLI: computes (or completes, or brings up to date) the cache of one source."""
  from absl import flags

  from mask2face.data import sources

  del argv
  f = flags.FLAGS
  out = f.out or landmarks.default_cache_path(f.source)
  try:
    source = sources.get_source(
      f.source,
      identity_pattern=f.identity_pattern,
      tfds_data_dir=f.tfds_data_dir,
      manual_dir=f.manual_dir,
    )
    table = compute_cache(
      source,
      out,
      workers=f.workers,
      chunk_size=f.chunk_size,
      upsample=f.upsample,
      max_side=f.max_side,
      fallback=f.fallback,
    )
  except (OSError, ValueError) as e:  # No such source, --out not a cache (never replaced).
    raise cli.UserError(str(e)) from e
  cli.emit(
    json.dumps({"cache": str(out), "report": str(report_path(out)), **table.summary}, indent=2)
  )


def define_flags():
  """The CLI's flags (defined only when run as a script, so importing never clashes)."""
  from absl import flags

  flags.DEFINE_string("source", None, "A folder of images, tfds:lfw or tfds:celeb_a.")
  flags.DEFINE_string("out", "", "Cache file ('' = under ~/.cache/mask2face/landmarks).")
  flags.DEFINE_integer("workers", os.cpu_count() or 1, "Worker processes.")
  flags.DEFINE_string("identity_pattern", "", "Folders: regex whose first group is the identity.")
  flags.DEFINE_string("tfds_data_dir", "", "TFDS data dir ('' = default).")
  flags.DEFINE_string("manual_dir", "", "Folder with a local archive for TFDS.")
  flags.DEFINE_integer("chunk_size", 32, "Images per work unit (journal flush interval).")
  flags.DEFINE_integer("upsample", 1, "HOG detector upsampling (upstream: 1).")
  flags.DEFINE_integer("max_side", 1024, "Detect on images downscaled to this longer side.")
  flags.DEFINE_bool("fallback", True, "Padded re-detection and the tight-crop fallback.")
  flags.mark_flag_as_required("source")


if __name__ == "__main__":
  from absl import app

  define_flags()
  app.run(main)
