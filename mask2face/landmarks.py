"""Face landmarks: dlib's HOG detector + 68-point predictor, a tight-crop fallback, a cache.

Training never runs dlib: `compute_cache` (or the CLI below) landmarks a whole `FaceSource` once,
in parallel, and writes a JSON cache that `load_cache` reads back as a `LandmarkTable`.

  python -m mask2face.landmarks --source=../shared/data/lfw_gray --out=/tmp/lfw_landmarks.json

Detection follows upstream (HOG frontal detector, one upsample, 68 points) with three changes:
large photos are detected downscaled (points scaled back); a face the detector misses is tried
again on an edge-padded copy (tight face crops give the HOG window no context); and a tight crop
that is still missed gets landmarks from the predictor on a whole-image box, accepted only when
they are anatomically plausible and a weak HOG response agrees (`fallback=True`).

The cache run is resumable: finished images go to an append-only journal (`<out>.journal.jsonl`,
flushed per chunk); a rerun skips them; the final file and `<out>.report.json` (per-file reasons
for every image without landmarks) are written atomically at the end.
"""

import collections
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import pathlib
import re
import time
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from absl import logging

from mask2face import atomic, cli
from mask2face.data.images import ImageError

CACHE_FORMAT = "mask2face.landmarks/1"
# Outcome of one image in a cache run; every image gets exactly one.
STATUSES = ("one_face", "several_faces", "fallback", "no_face", "unreadable")
_FACE_STATUSES = ("one_face", "several_faces", "fallback")

# The predictor's whole-image box for a tight crop, as fractions of (width, height): the median
# HOG box of tight crops in faces_color that the detector does find (it skips the forehead).
_TIGHT_CROP_BOX = (0.08, 0.12, 0.92, 1.0)

_MODELS = None  # (detector, predictor), loaded once per process: loading takes ~1 s.


def _models():
  """dlib's HOG frontal detector and 68-point predictor, loaded on first use."""
  global _MODELS
  if _MODELS is None:
    import dlib
    import face_recognition_models

    path = face_recognition_models.pose_predictor_model_location()
    _MODELS = (dlib.get_frontal_face_detector(), dlib.shape_predictor(path))
    logging.info("Loaded dlib HOG detector and 68-point predictor from %s", path)
  return _MODELS


@dataclasses.dataclass(frozen=True)
class FaceLandmarks:
  """68 dlib landmarks of one face, in the pixel coordinates of the full image."""

  points: np.ndarray  # float32 (68, 2), (x, y)
  box: tuple[float, float, float, float]  # (x0, y0, x1, y1)
  score: float  # HOG detector score (fallbacks: the weak response that confirmed them)
  fallback: bool  # True: points from the predictor on a whole-image box, no detection
  image_size: tuple[int, int]  # (height, width)
  num_faces: int = 1  # faces detected in the image (the largest is this one)

  def to_json(self) -> dict:
    return {
      "points": np.round(np.asarray(self.points, np.float64), 2).tolist(),
      "box": [round(float(v), 2) for v in self.box],
      "score": round(float(self.score), 4),
      "fallback": bool(self.fallback),
      "image_size": [int(v) for v in self.image_size],
      "num_faces": int(self.num_faces),
    }

  @classmethod
  def from_json(cls, data: dict) -> "FaceLandmarks":
    points = np.asarray(data["points"], dtype=np.float32)
    if points.shape != (68, 2) or not np.all(np.isfinite(points)):
      raise ValueError(f"landmarks must be 68 finite (x, y) points, got shape {points.shape}")
    box = tuple(float(v) for v in data["box"])
    if len(box) != 4:
      raise ValueError(f"box must have 4 values, got {len(box)}")
    height, width = (int(v) for v in data["image_size"])
    return cls(
      points=points,
      box=box,
      score=float(data["score"]),
      fallback=bool(data["fallback"]),
      image_size=(height, width),
      num_faces=int(data.get("num_faces", 1)),
    )


def plausible_landmarks(points: np.ndarray, image_size: tuple[int, int]) -> bool:
  """Whether 68 points look like an upright-ish frontal face inside the image.

  In the frame of the eye line (so a rolled head still passes): eyes above the nose tip above
  the mouth above the chin, the nose between the eyes, sane proportions, eyes in the image.
  """
  points = np.asarray(points, dtype=np.float64)
  if points.shape != (68, 2) or not np.all(np.isfinite(points)):
    return False
  left_eye, right_eye = points[36:42].mean(0), points[42:48].mean(0)
  axis = right_eye - left_eye
  eye_distance = float(np.hypot(*axis))
  if eye_distance < 4.0:
    return False
  # Head roll beyond 45 degrees (or eyes swapped) is not something the predictor gets right.
  if abs(math.degrees(math.atan2(axis[1], axis[0]))) > 45.0:
    return False
  ux = axis / eye_distance
  uy = np.array([-ux[1], ux[0]])  # Image y grows downwards; this points from eyes to chin.
  eyes = (left_eye + right_eye) / 2

  def frame(p):
    d = p - eyes
    return float(d @ ux) / eye_distance, float(d @ uy) / eye_distance

  nose_x, nose_y = frame(points[33])
  _, mouth_y = frame(points[48:68].mean(0))
  _, chin_y = frame(points[8])
  if not 0.0 < nose_y < mouth_y < chin_y:
    return False
  # Typical eye-to-mouth distance is about 1.1 eye distances; allow wide pose variation.
  if not 0.6 < mouth_y < 2.2 or abs(nose_x) > 0.75:
    return False
  height, width = image_size
  return all(0 <= x < width and 0 <= y < height for x, y in (left_eye, right_eye))


def _box_iou(a, b) -> float:
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def _as_rgb(image) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"expected a uint8 image, got {image.dtype}")
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
  return np.ascontiguousarray(image)


class LandmarkDetector:
  """dlib HOG detection + 68 landmarks; the dlib models are shared by every instance.

  Args:
    upsample: HOG upsampling (upstream: 1; finds faces down to ~40 px).
    max_side: images are detected downscaled to this longer side; points are scaled back.
    upsample_max_side: above this longer side (after downscaling) no upsampling: faces there
      are big enough, and upsampling a 1024 px image costs ~4x the time.
    fallback: try padded detection and the tight-crop fallback when nothing is found.
    min_fallback_score: the weakest HOG response (over the fallback box) that confirms it.
  """

  def __init__(
    self,
    *,
    upsample: int = 1,
    max_side: int = 1024,
    upsample_max_side: int = 640,
    fallback: bool = True,
    min_fallback_score: float = -0.8,
  ):
    self.upsample = upsample
    self.max_side = max_side
    self.upsample_max_side = upsample_max_side
    self.fallback = fallback
    self.min_fallback_score = min_fallback_score
    self.detector, self.predictor = _models()

  def settings(self) -> dict:
    """What determines the results (stored in caches, checked on resume)."""
    return {
      "upsample": self.upsample,
      "max_side": self.max_side,
      "upsample_max_side": self.upsample_max_side,
      "fallback": self.fallback,
      "min_fallback_score": self.min_fallback_score,
    }

  def _prepare(self, image) -> tuple[np.ndarray, float, int]:
    """The image dlib sees, its scale relative to the input, and the upsampling to use."""
    image = _as_rgb(image)
    height, width = image.shape[:2]
    scale = 1.0
    if max(height, width) > self.max_side:
      import cv2

      scale = self.max_side / max(height, width)
      size = (max(1, round(width * scale)), max(1, round(height * scale)))
      image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    upsample = self.upsample if max(image.shape[:2]) <= self.upsample_max_side else 0
    return image, scale, upsample

  def _landmarks(self, work, rect, *, offset, scale, score, fallback, image_size):
    shape = self.predictor(work, rect)
    points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
    points = (points - offset) / scale
    box = (
      (rect.left() - offset) / scale,
      (rect.top() - offset) / scale,
      (rect.right() - offset) / scale,
      (rect.bottom() - offset) / scale,
    )
    return FaceLandmarks(points, box, float(score), fallback, image_size)

  def _detect_work(self, work, upsample, *, offset, scale, image_size, threshold=0.0):
    rects, scores, _ = self.detector.run(work, upsample, threshold)
    faces = [
      self._landmarks(
        work, r, offset=offset, scale=scale, score=s, fallback=False, image_size=image_size
      )
      for r, s in zip(rects, scores)
      if s >= 0.0
    ]
    faces.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
    candidates = [(r, s) for r, s in zip(rects, scores) if s < 0.0]
    return faces, candidates

  def detect(self, image) -> list[FaceLandmarks]:
    """All faces the HOG detector finds, largest first (no fallback)."""
    work, scale, upsample = self._prepare(image)
    image_size = tuple(np.shape(image)[:2])
    faces, _ = self._detect_work(work, upsample, offset=0, scale=scale, image_size=image_size)
    return [dataclasses.replace(f, num_faces=len(faces)) for f in faces]

  def detect_largest(self, image) -> FaceLandmarks | None:
    """The largest face, else a padded re-detection, else the tight-crop fallback, else None."""
    work, scale, upsample = self._prepare(image)
    image_size = tuple(np.shape(image)[:2])
    faces, _ = self._detect_work(work, upsample, offset=0, scale=scale, image_size=image_size)
    if faces:
      return dataclasses.replace(faces[0], num_faces=len(faces))
    if not self.fallback:
      return None
    # Tight crops: the HOG window needs some context around the face; padding supplies it.
    pad = max(work.shape[:2]) // 4
    padded = np.pad(work, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    faces, candidates = self._detect_work(
      padded,
      upsample,
      offset=pad,
      scale=scale,
      image_size=image_size,
      threshold=min(self.min_fallback_score, 0.0),
    )
    if faces:
      return dataclasses.replace(faces[0], num_faces=len(faces))
    return self._tight_crop_fallback(work, scale, pad, candidates, image_size)

  def _tight_crop_fallback(self, work, scale, pad, candidates, image_size):
    import dlib

    height, width = work.shape[:2]
    # Only near-square images are plausibly a face crop; a wide photo's face is elsewhere.
    if not 0.6 <= width / height <= 1.67:
      return None
    x0, y0, x1, y1 = _TIGHT_CROP_BOX
    rect = dlib.rectangle(
      round(x0 * width), round(y0 * height), round(x1 * width) - 1, round(y1 * height) - 1
    )
    face = self._landmarks(
      work, rect, offset=0, scale=scale, score=0.0, fallback=True, image_size=image_size
    )
    if not plausible_landmarks(face.points, image_size):
      return None
    # The predictor always draws a face-shaped set of points, even on a wall; a weak HOG
    # response over the same region is the evidence that a face is actually there.
    box = tuple(v * scale for v in face.box)
    best = None
    for r, s in candidates:
      candidate = (r.left() - pad, r.top() - pad, r.right() - pad, r.bottom() - pad)
      if _box_iou(candidate, box) >= 0.3 and (best is None or s > best):
        best = s
    if best is None or best < self.min_fallback_score:
      return None
    return dataclasses.replace(face, score=float(best), num_faces=0)


def classify(face: FaceLandmarks | None) -> str:
  """The cache status of a `detect_largest` result."""
  if face is None:
    return "no_face"
  if face.fallback:
    return "fallback"
  return "several_faces" if face.num_faces > 1 else "one_face"


class LandmarkTable(Mapping):
  """Landmarks by source key, for the images that have a face; plus why the others do not."""

  def __init__(
    self,
    faces: Mapping[str, FaceLandmarks],
    *,
    problems: Mapping[str, tuple[str, str]] | None = None,
    summary: Mapping | None = None,
    source_name: str = "",
    path: str | os.PathLike | None = None,
  ):
    self._faces = dict(faces)
    self.problems = dict(problems or {})  # key -> (status, reason)
    self.summary = dict(summary or {})
    self.source_name = source_name
    self.path = path

  def __getitem__(self, key: str) -> FaceLandmarks:
    return self._faces[key]

  def __iter__(self) -> Iterator[str]:
    return iter(self._faces)

  def __len__(self) -> int:
    return len(self._faces)

  def __repr__(self) -> str:
    return f"LandmarkTable({self.source_name!r}, faces={len(self)}, problems={len(self.problems)})"


def _read_cache_file(path: pathlib.Path) -> dict:
  try:
    data = json.loads(path.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: landmark cache not found") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not a landmark cache (invalid JSON: {e})") from None
  if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
    raise ValueError(f"{path}: not a landmark cache (expected format {CACHE_FORMAT!r})")
  return data


def _table_from_records(records: Mapping[str, dict], **kwargs) -> LandmarkTable:
  faces, problems = {}, {}
  for key, record in records.items():
    if record["status"] in _FACE_STATUSES:
      faces[key] = FaceLandmarks.from_json(record["landmarks"])
    else:
      problems[key] = (record["status"], record.get("reason", ""))
  return LandmarkTable(faces, problems=problems, **kwargs)


def load_cache(path: str | os.PathLike) -> LandmarkTable:
  """Reads a cache written by `compute_cache`; errors name the file and the problem."""
  path = pathlib.Path(path)
  data = _read_cache_file(path)
  try:
    return _table_from_records(
      data["records"], summary=data.get("summary"), source_name=data.get("source", ""), path=path
    )
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{path}: corrupt landmark cache ({type(e).__name__}: {e})") from None


def default_cache_path(source_spec: str) -> pathlib.Path:
  """`~/.cache/mask2face/landmarks/<name>-<hash>.json` for a source spec (folder or tfds:)."""
  spec = source_spec
  if not spec.startswith("tfds:"):
    spec = str(pathlib.Path(spec).expanduser().resolve())
  slug = re.sub(r"[^A-Za-z0-9]+", "_", pathlib.Path(spec).name or spec).strip("_") or "source"
  digest = hashlib.sha1(spec.encode()).hexdigest()[:8]
  return pathlib.Path.home() / ".cache" / "mask2face" / "landmarks" / f"{slug}-{digest}.json"


def _journal_path(path: pathlib.Path) -> pathlib.Path:
  return path.with_name(path.name + ".journal.jsonl")


def report_path(path: str | os.PathLike) -> pathlib.Path:
  """Where `compute_cache` writes its summary and per-file reasons."""
  path = pathlib.Path(path)
  return path.with_name(path.name + ".report.json")


def landmark_record(source, detector: LandmarkDetector, key: str) -> dict:
  """Landmarks one image of a source; never raises on bad files (they become a status)."""
  try:
    image = source.load(key)
  except ImageError as e:
    return {"key": key, "status": "unreadable", "reason": str(e)}
  except Exception as e:  # A source bug or odd file must not stop a 13k-image job.
    return {"key": key, "status": "unreadable", "reason": f"{key}: {type(e).__name__}: {e}"}
  try:
    face = detector.detect_largest(image)
  except Exception as e:
    return {
      "key": key,
      "status": "unreadable",
      "reason": f"{key}: landmarking failed ({type(e).__name__}: {e})",
    }
  status = classify(face)
  record = {"key": key, "status": status}
  if face is None:
    record["reason"] = f"{key}: no face found"
  else:
    record["landmarks"] = face.to_json()
  return record


_WORKER = {}  # Per worker process: the source and the detector, built once by the initializer.


def _init_worker(source, settings):
  _WORKER["source"] = source
  _WORKER["detector"] = LandmarkDetector(**settings)


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
    if isinstance(entry, dict) and entry.get("status") in STATUSES and "key" in entry:
      records[entry.pop("key")] = entry
  if bad:
    logging.warning("%s: ignored %d torn line(s) from an interrupted write", journal, bad)
  return records


def summarize(records: Mapping[str, dict], seconds: float | None = None) -> dict:
  """Counts per status, plus the share with landmarks."""
  counts = collections.Counter(r["status"] for r in records.values())
  summary = {s: counts.get(s, 0) for s in STATUSES}
  summary["total"] = len(records)
  summary["with_landmarks"] = sum(summary[s] for s in _FACE_STATUSES)
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
  **detector_settings,
) -> LandmarkTable:
  """Landmarks every image of a source once and caches the result; resumes interrupted runs.

  Args:
    source: a `FaceSource` (`.name`, `.records` of `FaceRecord(key, identity)`, `.load(key)`);
      picklable when `workers > 1`.
    path: the cache file (JSON). `<path>.report.json` gets the summary and per-file reasons.
    workers: processes (each loads the dlib models once); 1 runs in this process.
    chunk_size: images per work unit; the journal is flushed after each.
    progress: show a tqdm bar with the rate.
    **detector_settings: `LandmarkDetector` keyword arguments.

  Returns:
    The `LandmarkTable`; its `.summary` counts one_face, several_faces, fallback, no_face and
    unreadable images.
  """
  from tqdm import tqdm

  path = pathlib.Path(path)
  settings = LandmarkDetector(**detector_settings).settings()
  journal = _journal_path(path)
  keys = [r.key for r in source.records]
  if len(set(keys)) != len(keys):
    raise ValueError(f"source {source.name!r} has duplicate keys")

  done: dict[str, dict] = {}
  if path.exists():
    data = _read_cache_file(path)
    if data.get("settings") != settings:
      raise ValueError(
        f"{path}: cache written with other detector settings ({data.get('settings')} vs "
        f"{settings}); delete it or choose another path"
      )
    done.update(data["records"])
  if journal.exists():
    done.update(_read_journal(journal, settings))
  todo = [k for k in keys if k not in done]
  if done:
    logging.info(
      "%s: %d of %d images already done, %d to go",
      path,
      len(keys) - len(todo),
      len(keys),
      len(todo),
    )

  start = time.time()
  if todo:
    path.parent.mkdir(parents=True, exist_ok=True)
    new_journal = not journal.exists()
    with open(journal, "a") as log:
      if new_journal:
        header = {"header": {"format": CACHE_FORMAT, "source": source.name, "settings": settings}}
        log.write(json.dumps(header) + "\n")
      else:
        # A run killed mid-line leaves a torn last line: start ours on a fresh one.
        log.write("\n")
      bar = tqdm(total=len(todo), unit="img", desc=f"landmarks {source.name}", disable=not progress)
      chunks = _chunks(todo, chunk_size)
      if workers <= 1:
        detector = LandmarkDetector(**settings)
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
  summary = summarize(records)
  if todo:
    summary["seconds"] = round(seconds, 2)
    summary["images_per_second"] = round(len(todo) / max(seconds, 1e-9), 2)
  atomic.write_json(
    path,
    {
      "format": CACHE_FORMAT,
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
  return _table_from_records(records, summary=summary, source_name=source.name, path=path)


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
      faces += record["status"] in _FACE_STATUSES
    bar.update(len(chunk))
    bar.set_postfix(new_faces=faces, refresh=False)


def main(argv):
  from absl import flags

  from mask2face.data import sources

  del argv
  f = flags.FLAGS
  source = sources.get_source(
    f.source,
    identity_pattern=f.identity_pattern,
    tfds_data_dir=f.tfds_data_dir,
    manual_dir=f.manual_dir,
  )
  out = f.out or default_cache_path(f.source)
  table = compute_cache(
    source,
    out,
    workers=f.workers,
    chunk_size=f.chunk_size,
    upsample=f.upsample,
    max_side=f.max_side,
    fallback=f.fallback,
  )
  cli.emit(
    json.dumps({"cache": str(out), "report": str(report_path(out)), **table.summary}, indent=2)
  )


def _define_flags():
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

  _define_flags()
  app.run(main)
