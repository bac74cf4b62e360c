"""Face landmarks for training: dlib's 68 points per photo, and the cache that stores them.

Training never runs dlib: `mask2face.data.landmark_cache` landmarks a whole `FaceSource` once
and writes a JSON cache that `load_cache` reads back here as a `LandmarkTable`.

`LandmarkDetector` follows upstream (HOG frontal detector, one upsample, 68 points, all through
`mask2face.data.dlib_faces`) with three changes: large photos are detected downscaled (points
scaled back); a face the detector misses is tried again on an edge-padded copy (tight face
crops give the HOG window no context); and a tight crop that is still missed gets landmarks
from the predictor on a whole-image box, accepted only when they are anatomically plausible
and a weak HOG response agrees (`fallback=True`).
"""

import dataclasses
import hashlib
import math
import os
import pathlib
import re
from collections.abc import Iterator, Mapping

import numpy as np

from mask2face import atomic
from mask2face.data import dlib_faces

# The cache files' format tag (a name in the files, not this module's path: caches stay valid).
# /2 adds each image's `fingerprint` (`FaceSource.fingerprint`); /1 caches are still read, and
# their folder images (no fingerprint to compare) are landmarked again by `compute_cache`.
CACHE_FORMAT = "mask2face.landmarks/2"
READABLE_FORMATS = ("mask2face.landmarks/1", CACHE_FORMAT)
# Outcome of one image in a cache; every image gets exactly one.
STATUSES = ("one_face", "several_faces", "fallback", "no_face", "unreadable")
FACE_STATUSES = ("one_face", "several_faces", "fallback")

# The predictor's whole-image box for a tight crop, as fractions of (width, height): the median
# HOG box of tight crops in faces_color that the detector does find (it skips the forehead).
_TIGHT_CROP_BOX = (0.08, 0.12, 0.92, 1.0)


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


class LandmarkDetector:
  """dlib HOG detection + 68 landmarks (the dlib models are loaded once per process).

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
    max_side: int = dlib_faces.MAX_SIDE,
    upsample_max_side: int = dlib_faces.UPSAMPLE_MAX_SIDE,
    fallback: bool = True,
    min_fallback_score: float = -0.8,
  ):
    self.upsample = upsample
    self.max_side = max_side
    self.upsample_max_side = upsample_max_side
    self.fallback = fallback
    self.min_fallback_score = min_fallback_score

  def settings(self) -> dict:
    """What determines the results (stored in caches, checked on resume)."""
    return {
      "upsample": self.upsample,
      "max_side": self.max_side,
      "upsample_max_side": self.upsample_max_side,
      "fallback": self.fallback,
      "min_fallback_score": self.min_fallback_score,
    }

  def _find(self, view, upsample, threshold=0.0):
    """(Faces scoring >= 0, largest first; weaker responses as (photo box, score))."""
    found = dlib_faces.detect(view, upsample=upsample, threshold=threshold)
    faces = [dlib_faces.face_in_box(view, box, s) for box, s in found if s >= 0.0]
    faces.sort(key=lambda f: f.area, reverse=True)
    return faces, [(view.box_to_photo(box), s) for box, s in found if s < 0.0]

  @staticmethod
  def _landmarks(face, view, *, num_faces, fallback=False) -> FaceLandmarks:
    """A `dlib_faces.Face` (already in photo pixels) as `FaceLandmarks`."""
    return FaceLandmarks(
      points=face.points,
      box=tuple(float(v) for v in face.box),
      score=face.score,
      fallback=fallback,
      image_size=view.photo_size,
      num_faces=num_faces,
    )

  def detect(self, image) -> list[FaceLandmarks]:
    """All faces the HOG detector finds, largest first (no fallback)."""
    view = dlib_faces.View.of(image, max_side=self.max_side)
    faces, _ = self._find(view, view.default_upsample(self.upsample, self.upsample_max_side))
    return [self._landmarks(f, view, num_faces=len(faces)) for f in faces]

  def detect_largest(self, image) -> FaceLandmarks | None:
    """The largest face, else a padded re-detection, else the tight-crop fallback, else None."""
    view = dlib_faces.View.of(image, max_side=self.max_side)
    upsample = view.default_upsample(self.upsample, self.upsample_max_side)
    faces, _ = self._find(view, upsample)
    if faces:
      return self._landmarks(faces[0], view, num_faces=len(faces))
    if not self.fallback:
      return None
    # Tight crops: the HOG window needs some context around the face; padding supplies it.
    padded = view.padded(max(view.image.shape[:2]) // 4)
    faces, candidates = self._find(padded, upsample, min(self.min_fallback_score, 0.0))
    if faces:
      return self._landmarks(faces[0], view, num_faces=len(faces))
    return self._tight_crop_fallback(view, candidates)

  def _tight_crop_fallback(self, view, candidates):
    height, width = view.image.shape[:2]
    # Only near-square images are plausibly a face crop; a wide photo's face is elsewhere.
    if not 0.6 <= width / height <= 1.67:
      return None
    face = dlib_faces.face_in_box(view, view.box_from_fractions(*_TIGHT_CROP_BOX))
    if not plausible_landmarks(face.points, view.photo_size):
      return None
    # The predictor always draws a face-shaped set of points, even on a wall; a weak HOG
    # response over the same region is the evidence that a face is actually there.
    scores = [s for box, s in candidates if dlib_faces.box_iou(box, face.box) >= 0.3]
    if not scores or max(scores) < self.min_fallback_score:
      return None
    face = dataclasses.replace(face, score=max(scores))
    return self._landmarks(face, view, num_faces=0, fallback=True)


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


def table_from_records(records: Mapping[str, dict], **kwargs) -> LandmarkTable:
  """A `LandmarkTable` from a cache's per-key records (status, landmarks or reason)."""
  faces, problems = {}, {}
  for key, record in records.items():
    if record["status"] in FACE_STATUSES:
      faces[key] = FaceLandmarks.from_json(record["landmarks"])
    else:
      problems[key] = (record["status"], record.get("reason", ""))
  return LandmarkTable(faces, problems=problems, **kwargs)


def read_cache_file(path: str | os.PathLike) -> dict:
  """The raw JSON of a landmark cache; errors name the file and the problem."""
  data = atomic.read_json(path, what="landmark cache")
  if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
    raise ValueError(f"{path}: not a landmark cache (expected format {CACHE_FORMAT!r})")
  return data


def fingerprint(source, key: str) -> str:
  """`source.fingerprint(key)`, or '' for a source without one (its images never change)."""
  method = getattr(source, "fingerprint", None)
  return method(key) if method is not None else ""


def load_cache(path: str | os.PathLike) -> LandmarkTable:
  """Reads a cache written by `landmark_cache.compute_cache`; errors name the file."""
  path = pathlib.Path(path)
  data = read_cache_file(path)
  try:
    return table_from_records(
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
