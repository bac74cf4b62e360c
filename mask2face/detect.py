"""Finding faces in real photos, masked ones included, and the training crop around each.

dlib's HOG detector (what the training pairs use) misses most masked faces, so real photos go
through MediaPipe's BlazeFace short-range detector first (186/200 masked faces found in our
measurements, 7 ms a photo), with dlib's CNN (MMOD) and HOG detectors as fallbacks for photos
where it finds nothing.

The training crop is defined from 68 dlib landmarks (`mask2face.data.crop.crop_transform`), half
of which lie under the mask on a real photo. `crop_transform_from_face` predicts the same square
from what stays visible (the eyes, the ear tragions and the detector's box) with a linear map
fitted on unmasked faces, where both dlib and MediaPipe work (`benchmarks/fit_crop_mapping.py`).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import urllib.error
import urllib.request
from collections.abc import Sequence

import numpy as np
from absl import logging

from mask2face import atomic
from mask2face.data import dlib_faces

MODEL_URL = (
  "https://storage.googleapis.com/mediapipe-models/face_detector/blaze_face_short_range/"
  "float16/latest/blaze_face_short_range.tflite"
)
MODEL_FILENAME = "blaze_face_short_range.tflite"
# MediaPipe's keypoint order. "right"/"left" are the person's: the right eye is on the image's
# left in a frontal photo.
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")
DETECTOR_NAMES = ("mediapipe", "dlib_cnn", "dlib_hog")

# --- The crop mapping: detector geometry -> training crop (centre and side of the square). ---
# Fitted by `python benchmarks/fit_crop_mapping.py` (least squares, no intercept, so the map
# commutes with translating and scaling the photo) on unmasked faces where dlib's HOG detector
# and 68-point model and MediaPipe both found exactly one face; the target is the square of
# `crop_transform(points68, margin=1/3)`. Features are relative to the box centre (bx, by):
#   centre x - bx   ~ [eye_mid_x - bx, ear_mid_x - bx]
#   centre y - by   ~ [eye_mid_y - by, ear_mid_y - by, box_size]
#   side            ~ [box_size, eye_distance, ear_distance]
# Only the eyes, the ears and the box are used: the nose tip and mouth lie under the mask.
FIT_MARGIN = 1.0 / 3.0
CENTER_X_COEFS = (0.0403, 0.1148)
CENTER_Y_COEFS = (0.6190, -0.3480, 0.1557)
SIDE_COEFS = (0.4051, 0.2626, 1.2395)
# Fitted on 1,081 faces (800 images each from faces_color and lfw_gray, 1,600 tried). On the
# held-out half (fitted on the other): centre offset median 0.017 of the side (p90 0.034);
# predicted / landmark side median 1.007 (p10-p90 0.898-1.067).


class DetectorError(RuntimeError):
  """The face detector model cannot be found, downloaded or loaded."""


@dataclasses.dataclass(frozen=True)
class FoundFace:
  """One face in a photo.

  Attributes:
    box: (x0, y0, x1, y1) float pixels.
    keypoints: float32 (6, 2) (x, y) pixels in `KEYPOINT_NAMES` order.
    score: detector confidence (MediaPipe: 0..1; dlib: the detector's own scale).
    detector: which detector found it, one of `DETECTOR_NAMES`.
    landmarks: float32 (68, 2) dlib points for faces from the dlib fallbacks, else None.
  """

  box: np.ndarray
  keypoints: np.ndarray
  score: float
  detector: str
  landmarks: np.ndarray | None = None

  @property
  def area(self) -> float:
    x0, y0, x1, y1 = self.box
    return float(max(x1 - x0, 0) * max(y1 - y0, 0))


def default_cache_dir() -> pathlib.Path:
  """`~/.cache/mask2face/models` (honours XDG_CACHE_HOME)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "mask2face" / "models"


def download_model(url: str, dest: pathlib.Path, *, timeout: float = 10.0) -> pathlib.Path:
  """Downloads `url` to `dest` through `atomic` (a half download never lands at `dest`)."""
  logging.info("Downloading the face detector from %s to %s", url, dest)
  try:
    with (
      atomic.open_for_write(dest, "wb") as out,
      urllib.request.urlopen(url, timeout=timeout) as response,
    ):
      size = 0
      while chunk := response.read(1 << 16):
        out.write(chunk)
        size += len(chunk)
      if size == 0:
        raise DetectorError(f"downloaded an empty file from {url}")
  except (urllib.error.URLError, OSError, TimeoutError) as e:
    raise DetectorError(
      f"cannot download the face detector model from {url} ({e}); are you offline? Download it "
      f"by hand to {dest}, or pass its path (--detector_model / FaceFinder(model_path=...))"
    ) from e
  return dest


def resolve_model_path(
  model_path: str | os.PathLike | None = None,
  *,
  cache_dir: str | os.PathLike | None = None,
  download: bool = True,
  timeout: float = 10.0,
) -> pathlib.Path:
  """Finds the MediaPipe detector: the given path, else the cache, else a one-time download."""
  if model_path:
    path = pathlib.Path(model_path).expanduser()
    if not path.is_file():
      raise DetectorError(f"{path}: face detector model not found")
    return path
  cached = pathlib.Path(cache_dir or default_cache_dir()) / MODEL_FILENAME
  if cached.is_file() and cached.stat().st_size > 0:
    return cached
  if not download:
    raise DetectorError(f"{cached}: face detector model not cached and downloads are disabled")
  return download_model(MODEL_URL, cached, timeout=timeout)


def _non_max_suppression(faces: list[FoundFace], iou: float = 0.3) -> list[FoundFace]:
  """Keeps the best-scoring face of each group of overlapping boxes (tiles overlap)."""
  kept = []
  for face in sorted(faces, key=lambda f: -f.score):
    if all(dlib_faces.box_iou(face.box, k.box) < iou for k in kept):
      kept.append(face)
  return kept


def _keypoints_from_landmarks(points: np.ndarray) -> np.ndarray:
  """MediaPipe-style keypoints from 68 dlib points (the jaw ends stand in for the tragions)."""
  return np.stack(
    [
      points[36:42].mean(0),  # The person's right eye (image left).
      points[42:48].mean(0),
      points[30],
      points[48:68].mean(0),
      points[0],
      points[16],
    ]
  ).astype(np.float32)


class FaceFinder:
  """Finds faces with MediaPipe, falling back to dlib's detectors when it finds none.

  Models are loaded on first use and kept; not thread-safe (one per worker).
  """

  def __init__(
    self,
    model_path: str | os.PathLike | None = None,
    fallbacks: Sequence[str] = ("dlib_cnn", "dlib_hog"),
    *,
    min_score: float = 0.5,
    download: bool = True,
  ):
    unknown = [f for f in fallbacks if f not in DETECTOR_NAMES[1:]]
    if unknown:
      raise ValueError(f"unknown fallback detectors {unknown}; valid: {DETECTOR_NAMES[1:]}")
    self.model_path = model_path
    self.fallbacks = tuple(fallbacks)
    self.min_score = min_score
    self.download = download
    self._mediapipe = None

  # -- MediaPipe ------------------------------------------------------------------------------
  def _mediapipe_detector(self):
    if self._mediapipe is None:
      from mediapipe.tasks.python import BaseOptions, vision

      path = resolve_model_path(self.model_path, download=self.download)
      try:
        options = vision.FaceDetectorOptions(
          base_options=BaseOptions(model_asset_path=str(path)),
          min_detection_confidence=self.min_score,
        )
        self._mediapipe = vision.FaceDetector.create_from_options(options)
      except Exception as e:  # MediaPipe raises bare RuntimeErrors for bad model files.
        raise DetectorError(f"{path}: cannot load the face detector model ({e})") from e
    return self._mediapipe

  def _detect_mediapipe(self, image: np.ndarray, offset: tuple[int, int] = (0, 0)):
    import mediapipe as mp

    h, w = image.shape[:2]
    result = self._mediapipe_detector().detect(
      mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
    )
    faces = []
    for d in result.detections:
      b = d.bounding_box
      box = np.array(
        [b.origin_x, b.origin_y, b.origin_x + b.width, b.origin_y + b.height], np.float32
      )
      kp = np.array([[k.x * w, k.y * h] for k in d.keypoints], np.float32)
      box -= np.array(offset * 2, np.float32)
      kp -= np.array(offset, np.float32)
      faces.append(FoundFace(box, kp, float(d.categories[0].score), "mediapipe"))
    return faces

  def _find_mediapipe(self, image: np.ndarray) -> list[FoundFace]:
    faces = self._detect_mediapipe(image)
    h, w = image.shape[:2]
    touches = [f for f in faces if f.box[0] <= 1 or f.box[1] <= 1 or f.box[2] >= w - 1]
    if not faces or touches:
      # A face filling the frame gets a box clipped at the border (which skews the crop) or
      # is missed: a grey border puts the whole head inside the detector's view.
      pad = max(h, w) // 4
      padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), constant_values=128)
      again = self._detect_mediapipe(padded, offset=(pad, pad))
      if len(again) >= len(faces):
        faces = again
    if not faces:
      faces = self._find_in_tiles(image)
    return faces

  def _find_in_tiles(self, image: np.ndarray) -> list[FoundFace]:
    """Overlapping tiles, coarse to fine: the detector sees the whole photo at 128 px, where a
    face that is small in a big photo (a group shot, an 8000 px scan) is a few pixels wide."""
    h, w = image.shape[:2]
    for k in (2, 4):
      side = int(np.ceil(max(h, w) / k))
      if side < 128:
        break
      stride = side // 2
      faces = []
      for y in range(0, max(h - side, 0) + stride, stride):
        for x in range(0, max(w - side, 0) + stride, stride):
          tile = image[y : y + side, x : x + side]
          if min(tile.shape[:2]) >= 32:
            faces += self._detect_mediapipe(tile, offset=(-x, -y))
      faces = _non_max_suppression(faces)
      if faces:
        return faces
    return []

  # -- dlib fallbacks -------------------------------------------------------------------------
  def _find_dlib(self, image: np.ndarray, name: str) -> list[FoundFace]:
    # Detected on a copy downscaled to dlib_faces.MAX_SIDE (the CNN takes seconds per
    # megapixel), upsampling only small photos; points and box come back in photo pixels.
    faces = dlib_faces.find_faces(image, detector=name.removeprefix("dlib_"))
    return [
      FoundFace(f.box, _keypoints_from_landmarks(f.points), f.score, name, f.points) for f in faces
    ]

  # -- Public ---------------------------------------------------------------------------------
  def find(self, image: np.ndarray) -> list[FoundFace]:
    """Every face in a uint8 RGB image (H, W, 3), largest first; [] when none."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
      raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
    faces = self._find_mediapipe(image)
    for name in self.fallbacks:
      if faces:
        break
      faces = self._find_dlib(image, name)
      if faces:
        logging.info("MediaPipe found no face; %s found %d", name, len(faces))
    return sorted(faces, key=lambda f: -f.area)

  def load(self) -> None:
    """Loads the MediaPipe detector now (downloading it once if allowed).

    Raises:
      DetectorError: the model file cannot be found, downloaded or loaded.
    """
    self._mediapipe_detector()

  def close(self):
    """Releases the MediaPipe graph (its own __del__ fails at interpreter exit)."""
    if self._mediapipe is not None:
      self._mediapipe.close()
      self._mediapipe = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# --- The crop -------------------------------------------------------------------------------
def crop_features(face: FoundFace) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """(box centre, x features, y features, side features) for the crop mapping."""
  x0, y0, x1, y1 = np.asarray(face.box, np.float64)
  kp = np.asarray(face.keypoints, np.float64)
  bx, by = (x0 + x1) / 2, (y0 + y1) / 2
  eye_mid = (kp[0] + kp[1]) / 2
  ear_mid = (kp[4] + kp[5]) / 2
  fx = np.array([eye_mid[0] - bx, ear_mid[0] - bx])
  # MediaPipe's boxes are square: one box size, not width and height (collinear in the fit).
  box_size = ((x1 - x0) + (y1 - y0)) / 2
  fy = np.array([eye_mid[1] - by, ear_mid[1] - by, box_size])
  fs = np.array([box_size, np.linalg.norm(kp[1] - kp[0]), np.linalg.norm(kp[5] - kp[4])])
  return np.array([bx, by]), fx, fy, fs


def crop_square_from_face(face: FoundFace, *, margin: float = FIT_MARGIN):
  """(centre x, centre y, side) in image pixels of the training crop around a found face."""
  (bx, by), fx, fy, fs = crop_features(face)
  side = float(fs @ np.asarray(SIDE_COEFS))
  # The landmark crop's side grows as (1 + 2 * margin) with the margin on every side.
  side *= (1 + 2 * margin) / (1 + 2 * FIT_MARGIN)
  return (
    bx + float(fx @ np.asarray(CENTER_X_COEFS)),
    by + float(fy @ np.asarray(CENTER_Y_COEFS)),
    side,
  )


def square_transform(
  cx: float, cy: float, side: float, size: int, angle: float = 0.0
) -> np.ndarray:
  """The (2, 3) image -> crop map of a square, with `crop_transform`'s conventions.

  Integer coordinates are pixel centres; the square's edges map onto [-0.5, size - 0.5]; a
  non-zero `angle` (radians, the eye line's) rotates the crop about its centre.
  """
  cos, sin = np.cos(angle), np.sin(angle)
  linear = (size / side) * np.array([[cos, sin], [-sin, cos]])
  offset = (size - 1) / 2.0 - linear @ np.array([cx, cy])
  return np.concatenate([linear, offset[:, None]], axis=1)


def square_from_transform(matrix: np.ndarray, size: int) -> tuple[float, float, float]:
  """(centre x, centre y, side) in image pixels of the crop a (2, 3) matrix makes."""
  matrix = np.asarray(matrix, np.float64)
  side = size / np.sqrt(abs(np.linalg.det(matrix[:, :2])))
  cx, cy = np.linalg.solve(matrix[:, :2], (size - 1) / 2.0 - matrix[:, 2])
  return float(cx), float(cy), float(side)


def crop_transform_from_face(
  face: FoundFace, *, size: int, margin: float = FIT_MARGIN, level_eyes: bool = False
) -> np.ndarray:
  """The (2, 3) image -> crop affine map for a found face, matching the training crop.

  Faces from the dlib fallbacks carry 68 landmarks and use `crop_transform` itself; MediaPipe
  faces use the fitted mapping from the eyes, ears and box.
  """
  if face.landmarks is not None:
    from mask2face.data import crop

    return np.asarray(
      crop.crop_transform(face.landmarks, size=size, margin=margin, level_eyes=level_eyes)
    )
  cx, cy, side = crop_square_from_face(face, margin=margin)
  angle = 0.0
  if level_eyes:
    dx, dy = face.keypoints[1] - face.keypoints[0]
    angle = float(np.arctan2(dy, dx))
  return square_transform(cx, cy, side, size, angle)
