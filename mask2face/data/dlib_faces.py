"""The one home of dlib in mask2face: its models, face detection, 68 landmarks, descriptors.

Training landmarks (`mask2face.data.landmarks`), the dlib fallbacks for real photos
(`mask2face.detect`) and the identity metric (`mask2face.identity`) all detect faces here, so
they agree on every photo. dlib and its model files are imported on first use only: importing
this module costs nothing.

Coordinates: dlib's integer point (x, y) is the centre of pixel (x, y). A large photo is
detected on a copy downscaled by `cv2.INTER_AREA` (`View`), whose pixel i covers photo pixels
[i / s, (i + 1) / s) for a scale s; its centre, at i + 0.5 in edge coordinates, is photo point
(i + 0.5) / s - 0.5. `View.to_photo` is that map, and the only place points are scaled back.
"""

import dataclasses
import functools

import numpy as np
from absl import logging

DETECTORS = ("hog", "cnn")
# Photos are detected on a copy downscaled to this longer side: dlib's cost grows with the
# pixel count (the CNN takes seconds per megapixel) and faces there are big enough.
MAX_SIDE = 1024
# Upsampling (which finds faces down to ~40 px) only below this longer side: it costs ~4x.
UPSAMPLE_MAX_SIDE = 640


# --- Models, loaded once per process (about a second each) ------------------------------------
@functools.cache
def hog_detector():
  """dlib's HOG frontal face detector."""
  import dlib

  return dlib.get_frontal_face_detector()


@functools.cache
def cnn_detector():
  """dlib's CNN (MMOD) face detector: finds more masked faces than HOG, at ~2 s a photo."""
  import dlib
  import face_recognition_models

  path = face_recognition_models.cnn_face_detector_model_location()
  logging.info("Loading dlib's CNN face detector from %s", path)
  return dlib.cnn_face_detection_model_v1(path)


@functools.cache
def shape_predictor():
  """dlib's 68-point landmark predictor."""
  import dlib
  import face_recognition_models

  path = face_recognition_models.pose_predictor_model_location()
  logging.info("Loading dlib's 68-point predictor from %s", path)
  return dlib.shape_predictor(path)


@functools.cache
def face_encoder():
  """dlib's ResNet face-descriptor network (128-d descriptors)."""
  import dlib
  import face_recognition_models

  path = face_recognition_models.face_recognition_model_location()
  logging.info("Loading dlib's face descriptor network from %s", path)
  return dlib.face_recognition_model_v1(path)


# --- Geometry -------------------------------------------------------------------------------
def as_rgb(image) -> np.ndarray:
  """A contiguous uint8 HxWx3 image (grayscale is repeated); what dlib's functions accept."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"expected a uint8 image, got {image.dtype}")
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
  return np.ascontiguousarray(image)


def box_iou(a, b) -> float:
  """Intersection over union of two (x0, y0, x1, y1) boxes; 0 when either is empty."""
  ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = ix * iy
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return float(inter / union) if union > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class View:
  """A photo as dlib sees it (downscaled, maybe edge-padded) and the map back to the photo.

  Attributes:
    image: uint8 HxWx3, what dlib runs on.
    scale: (x, y) view pixels per photo pixel (per axis: the resized sides are rounded).
    pad: edge padding on every side, in view pixels.
    photo_size: (height, width) of the photo.
  """

  image: np.ndarray
  scale: tuple[float, float]
  pad: int
  photo_size: tuple[int, int]

  @classmethod
  def of(cls, photo, *, max_side: int | None = MAX_SIDE) -> "View":
    """The photo, downscaled (INTER_AREA) to `max_side` when its longer side is above it."""
    photo = as_rgb(photo)
    height, width = photo.shape[:2]
    image = photo
    if max_side is not None and max(height, width) > max_side:
      import cv2

      factor = max_side / max(height, width)
      size = (max(1, round(width * factor)), max(1, round(height * factor)))
      image = np.ascontiguousarray(cv2.resize(photo, size, interpolation=cv2.INTER_AREA))
    scale = (image.shape[1] / width, image.shape[0] / height)
    return cls(image, scale, 0, (height, width))

  def padded(self, pad: int) -> "View":
    """The same view with `pad` more edge-replicated pixels on every side (context for HOG)."""
    image = np.pad(self.image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return dataclasses.replace(self, image=image, pad=self.pad + pad)

  def to_photo(self, points) -> np.ndarray:
    """(..., 2) view points (x, y) -> photo pixels (pixel centres map onto pixel centres)."""
    points = np.asarray(points, np.float64) - self.pad
    return ((points + 0.5) / np.asarray(self.scale) - 0.5).astype(np.float32)

  def box_to_photo(self, box) -> np.ndarray:
    """A view box (x0, y0, x1, y1) -> float32 photo pixels."""
    return self.to_photo(np.reshape(box, (2, 2))).reshape(4)

  def box_from_fractions(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """The box covering these fractions of the (unpadded) view, in view pixels."""
    height, width = self.image.shape[0] - 2 * self.pad, self.image.shape[1] - 2 * self.pad
    return np.array(
      [
        self.pad + round(x0 * width),
        self.pad + round(y0 * height),
        self.pad + round(x1 * width) - 1,
        self.pad + round(y1 * height) - 1,
      ],
      np.float64,
    )

  def default_upsample(self, upsample: int = 1, max_side: int = UPSAMPLE_MAX_SIDE) -> int:
    """`upsample` for small views; 0 above `max_side` (faces there are big enough)."""
    return upsample if max(self.image.shape[:2]) <= max_side else 0


# --- Detection and landmarks ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Face:
  """One face, in photo pixels.

  Attributes:
    points: float32 (68, 2) dlib landmarks as (x, y).
    box: float32 (x0, y0, x1, y1) detector box (dlib's corners are inclusive pixel centres).
    score: the detector's score (HOG: its margin; CNN: its confidence; 0 for a given box).
  """

  points: np.ndarray
  box: np.ndarray
  score: float

  @property
  def area(self) -> float:
    x0, y0, x1, y1 = (float(v) for v in self.box)
    return max(x1 - x0, 0.0) * max(y1 - y0, 0.0)


def detect(
  view: View, *, detector: str = "hog", upsample: int = 0, threshold: float = 0.0
) -> list[tuple[np.ndarray, float]]:
  """Face boxes (x0, y0, x1, y1) in view pixels with their scores, in dlib's order.

  `threshold` is the HOG detector's (negative values also return weak responses); the CNN
  returns what it finds.
  """
  if detector == "hog":
    rects, scores, _ = hog_detector().run(view.image, upsample, threshold)
    found = list(zip(rects, scores))
  elif detector == "cnn":
    found = [(d.rect, d.confidence) for d in cnn_detector()(view.image, upsample)]
  else:
    raise ValueError(f"unknown dlib detector {detector!r}; valid: {DETECTORS}")
  return [
    (np.array([r.left(), r.top(), r.right(), r.bottom()], np.float64), float(s)) for r, s in found
  ]


def face_in_box(view: View, box, score: float = 0.0) -> Face:
  """The 68 landmarks of the face in `box` (view pixels); the result in photo pixels."""
  import dlib

  rect = dlib.rectangle(*(round(float(v)) for v in box))
  shape = shape_predictor()(view.image, rect)
  points = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
  return Face(view.to_photo(points), view.box_to_photo(box), float(score))


def find_faces(
  photo,
  *,
  detector: str = "hog",
  max_side: int | None = MAX_SIDE,
  upsample: int | None = None,
  threshold: float = 0.0,
) -> list[Face]:
  """Every face dlib finds in a photo (or a `View` of one), largest first, in photo pixels.

  Args:
    photo: uint8 HxWx3 (or HxW) image, or a `View`.
    detector: "hog" or "cnn".
    max_side: the photo is detected downscaled to this longer side (None: never).
    upsample: detector upsampling; None: 1 when the view is at most UPSAMPLE_MAX_SIDE.
    threshold: the HOG detector's score threshold.
  """
  view = photo if isinstance(photo, View) else View.of(photo, max_side=max_side)
  if upsample is None:
    upsample = view.default_upsample()
  found = detect(view, detector=detector, upsample=upsample, threshold=threshold)
  faces = [face_in_box(view, box, score) for box, score in found]
  return sorted(faces, key=lambda f: f.area, reverse=True)


def face_descriptors(images, face: Face, *, size: int = 150, padding: float = 0.25) -> np.ndarray:
  """float64 [N, 128] dlib descriptors of the same face region in images of one shape.

  Every image is aligned by the same landmarks (`face`, in their pixels), so a blurry
  prediction is judged on exactly the region of its target.
  """
  import dlib

  points = np.round(np.asarray(face.points, np.float64)).astype(int)
  x0, y0, x1, y1 = (round(float(v)) for v in face.box)
  shape = dlib.full_object_detection(
    dlib.rectangle(x0, y0, x1, y1), [dlib.point(int(x), int(y)) for x, y in points]
  )
  chips = [dlib.get_face_chip(as_rgb(i), shape, size=size, padding=padding) for i in images]
  return np.array(
    [np.asarray(d, np.float64) for d in face_encoder().compute_face_descriptor(chips)]
  )
