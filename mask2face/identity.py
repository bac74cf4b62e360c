"""The identity metric: is the inpainted face still the same person?

Two yardsticks, both on dlib face descriptors (`mask2face.data.dlib_faces`):
- `IdentityScorer`: a prediction against its own clean photo (cosine similarity, distance).
  Saturated: the masked input itself passes dlib's 0.6 distance threshold against its own
  photo 93% of the time (147 LFW people, 256 px), so it cannot say whether a face came back.
- `CrossPhotoVerifier`: face verification, as face recognition is tested. Each test face (the
  clean photo, the masked input, each baseline and each model's output) is compared with
  ANOTHER photo of the same person from the same split, and counts as verified below
  distance 0.6; the same-photo rate and both mean distances come along. Measured as above:
  clean faces 96.6% (the ceiling), masked faces 62.6%, Telea-filled 61.9%. Needs a source with
  several photos per identity (LFW, folders with identity patterns); others get NaN (left
  out of the means, counted as `undefined/...`).

Host-side and slow (dlib's descriptor is about 70 ms a face on a CPU core):
`mask2face.identity_pass.IdentityPass` scores batches in worker processes while the
evaluation goes on, or inline at the end. Hosts without dlib (`dlib_available()`) skip it.
"""

import importlib.util
import time
from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging

from mask2face.data import crop as crop_lib
from mask2face.data import dlib_faces

# IdentityScorer logs its progress every this many pairs.
LOG_EVERY_PAIRS = 200
IDENTITY_METRIC_NAMES = ("identity_similarity", "identity_distance", "identity_fallback")


def dlib_available() -> bool:
  """Whether this host can run the identity metric (dlib and its model files are installed)."""
  return all(importlib.util.find_spec(m) for m in ("dlib", "face_recognition_models"))


def _to_uint8_rgb(image, what: str) -> np.ndarray:
  """uint8 HxWx3 from uint8 or [0, 1] float input; a clear error for anything else."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"{what}: expected an HxWx3 RGB image, got shape {image.shape}")
  if image.dtype == np.uint8:
    return np.ascontiguousarray(image)
  if np.issubdtype(image.dtype, np.floating):
    return np.ascontiguousarray(np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8))
  raise ValueError(f"{what}: expected uint8 or float in [0, 1], got dtype {image.dtype}")


def find_face(
  image, *, fallback_margin: float = 1.0 / 3.0, upsample: int | None = None
) -> tuple[dlib_faces.Face, bool]:
  """The largest face of a crop (68 points in its pixels) and whether it is the fallback.

  HOG detection (upsampled once for crops under 200 px: dlib's HOG misses faces under about
  80 px), then dlib's 68 points. The fallback, when nothing is detected, is the predictor's
  68 points in the face box the crop margin implies: the crop shrunk by
  margin / (1 + 2 * margin) on every side.
  """
  view = dlib_faces.View.of(_to_uint8_rgb(image, "image"))
  if upsample is None:
    upsample = 1 if min(view.photo_size) < 200 else 0
  faces = dlib_faces.find_faces(view, upsample=upsample)
  if faces:
    return faces[0], False
  inset = fallback_margin / (1.0 + 2.0 * fallback_margin)
  box = view.box_from_fractions(inset, inset, 1 - inset, 1 - inset)
  return dlib_faces.face_in_box(view, box), True


class IdentityScorer:
  """Cosine similarity of dlib face descriptors between predictions and their targets.

  The face is located once, on the target (the clean crop): HOG detection, then dlib's 68
  landmarks, and the same landmarks align the face chip of both images, so a blurry
  prediction is judged on the same region as its target. When no face is detected the
  landmarks are fitted to the face box implied by the crop margin (`fallback_margin`; 0 uses
  the whole crop box) and the example is marked `identity_fallback = 1`.

  Args:
    fallback_margin: the margin the crops were made with (config.data.margin): the face box
      is the crop shrunk by margin / (1 + 2 * margin) on every side.
    upsample: HOG upsampling; None picks 1 for crops under 200 px (dlib's HOG misses faces
      under about 80 px) and 0 otherwise.
  """

  def __init__(self, *, fallback_margin: float = 1.0 / 3.0, upsample: int | None = None):
    if fallback_margin < 0:
      raise ValueError(f"fallback_margin must be >= 0, got {fallback_margin}")
    self.fallback_margin = fallback_margin
    self.upsample = upsample
    self.num_scored = 0
    self.num_fallback = 0
    self._start = time.monotonic()

  def find_face(self, image) -> tuple[dlib_faces.Face, bool]:
    """`find_face` with this scorer's margin and upsampling."""
    return find_face(image, fallback_margin=self.fallback_margin, upsample=self.upsample)

  def score(self, pred, target) -> dict[str, float]:
    """Scores one pair: `identity_similarity`, `identity_distance`, `identity_fallback`."""
    pred = _to_uint8_rgb(pred, "prediction")
    target = _to_uint8_rgb(target, "target")
    if pred.shape != target.shape:
      raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    face, fallback = self.find_face(target)
    desc_pred, desc_target = dlib_faces.face_descriptors([pred, target], face)
    norm = np.linalg.norm(desc_pred) * np.linalg.norm(desc_target)
    self.num_scored += 1
    self.num_fallback += int(fallback)
    if self.num_scored % LOG_EVERY_PAIRS == 0:
      # Descriptors cost about 0.1-0.4 s a pair on a CPU: a test split takes minutes.
      rate = self.num_scored / max(time.monotonic() - self._start, 1e-9)
      logging.info(
        "Identity metric: %d pairs scored (%.1f/s), %d without a detected face.",
        self.num_scored,
        rate,
        self.num_fallback,
      )
    return {
      "identity_similarity": float(desc_pred @ desc_target / max(norm, 1e-12)),
      # dlib's own yardstick: the same person is usually closer than 0.6.
      "identity_distance": float(np.linalg.norm(desc_pred - desc_target)),
      "identity_fallback": float(fallback),
    }

  def score_batch(self, preds, targets, valid=None) -> dict[str, np.ndarray]:
    """Scores a batch; [B] arrays ready for `MetricAccumulator.add` (padding gets NaN)."""
    preds = np.asarray(preds)
    targets = np.asarray(targets)
    if preds.shape != targets.shape or preds.ndim != 4:
      raise ValueError(f"preds {preds.shape} and targets {targets.shape} must be [B, H, W, 3]")
    size = preds.shape[0]
    keep = np.ones(size, bool) if valid is None else np.asarray(valid).reshape(-1) > 0
    out = {k: np.full(size, np.nan, np.float32) for k in IDENTITY_METRIC_NAMES}
    for i in np.flatnonzero(keep):
      for key, value in self.score(preds[i], targets[i]).items():
        out[key][i] = value
    return out


# --- Verification against another photo of the same person. ---------------------------------

# dlib's own threshold: two descriptors closer than this are the same person (its model card:
# 99.38% on the LFW benchmark).
VERIFY_DISTANCE = 0.6
VERIFICATION_METRIC_NAMES = (
  "identity_other_photo_rate",
  "identity_other_photo_distance",
  "identity_same_photo_rate",
  "identity_same_photo_distance",
  "identity_fallback",
)
# Every example's rows are aligned by the landmarks found on this one, and the same-photo
# metrics compare with it.
TARGET_ROW = "clean"


def partner_photos(records, keys: Sequence[str], available=None) -> dict[str, str]:
  """Another photo of the same person for each key: the next one in key order, wrapping.

  Splits are identity-disjoint, so the partner of a test photo is a test photo too (maybe
  one a `max_examples` cap left out of the evaluation).

  Args:
    records: the source's `FaceRecord`s (key, identity).
    keys: the examples that need a partner.
    available: the keys that may serve (e.g. those with landmarks); None = every record.

  Returns:
    {key: partner key}, for the keys whose person has another usable photo.
  """
  by_identity: dict[str, list[str]] = {}
  identity_of = {}
  for record in records:
    identity_of[record.key] = record.identity
    if available is None or record.key in available:
      by_identity.setdefault(record.identity, []).append(record.key)
  out = {}
  for key in keys:
    others = sorted(k for k in by_identity.get(identity_of.get(key), ()) if k != key)
    if others:
      later = [k for k in others if k > key]
      out[key] = later[0] if later else others[0]
  return out


class CrossPhotoVerifier:
  """Face verification of each row of a test example against another photo of its person.

  For one example, `images` holds its rows: the clean crop (`TARGET_ROW`), the masked input,
  a baseline's or a model's output, any names. The face is found once, on the clean crop, and
  its landmarks align the descriptor chip of every row (as `IdentityScorer` does). The
  partner photo is cropped exactly as the pipeline crops (its cached landmarks,
  `image_size`, `margin`, `level_eyes`) and its own face found. Per row:
  `identity_other_photo_rate` (1 when the distance to the partner is below `threshold`),
  `identity_other_photo_distance`, `identity_same_photo_rate` and `_distance` (against the
  clean crop), `identity_fallback` (no face detected on the clean crop). Without a partner the
  other-photo values are NaN.

  Picklable (it crosses into `identity_pass.IdentityPass`'s workers); partner descriptors
  are cached.

  Args:
    source: the `FaceSource` the keys belong to (partner photos are loaded from it).
    keys: the split's keys in order: `batch['index']` points into them.
    partners: {key: (partner key, its (68, 2) landmarks in its photo)}.
    image_size, margin, level_eyes: the pipeline's crop (`config.data`).
    threshold: the verification distance.
    upsample: HOG upsampling (None: `find_face`'s choice).
  """

  def __init__(
    self,
    source,
    keys: Sequence[str],
    partners: Mapping[str, tuple[str, np.ndarray]],
    *,
    image_size: int,
    margin: float = 1.0 / 3.0,
    level_eyes: bool = False,
    threshold: float = VERIFY_DISTANCE,
    upsample: int | None = None,
  ):
    self.source = source
    self.keys = list(keys)
    self.partners = dict(partners)
    self.image_size = int(image_size)
    self.margin = float(margin)
    self.level_eyes = bool(level_eyes)
    self.threshold = float(threshold)
    self.upsample = upsample
    self.num_scored = 0
    self._descriptors: dict[str, np.ndarray | None] = {}
    self._start = time.monotonic()

  @classmethod
  def from_prepared(cls, prepared, data_config, split: str = "test", **kwargs):
    """The verifier of one split of `pipeline.prepare_data`'s result, cropping as `data_config`."""
    keys = list(prepared.splits[split])
    pairs = partner_photos(prepared.source.records, keys, available=prepared.landmarks)
    partners = {
      k: (p, np.asarray(prepared.landmarks[p].points, np.float32)) for k, p in pairs.items()
    }
    logging.info(
      "Identity verification: %d of %d %s faces have another photo of their person.",
      len(partners),
      len(keys),
      split,
    )
    return cls(
      prepared.source,
      keys,
      partners,
      image_size=int(data_config.image_size),
      margin=float(data_config.margin),
      level_eyes=bool(data_config.get("level_eyes", False)),
      **kwargs,
    )

  @property
  def num_with_partner(self) -> int:
    """How many of the split's examples have another photo of their person."""
    return sum(k in self.partners for k in self.keys)

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_descriptors"] = {}  # A worker computes its own; the cache need not travel.
    return state

  def partner_crop(self, key: str) -> np.ndarray | None:
    """`key`'s partner photo cropped as the pipeline crops it (uint8), or None."""
    if key not in self.partners:
      return None
    partner, points = self.partners[key]
    photo = self.source.load(partner)
    matrix = crop_lib.crop_transform(
      points, size=self.image_size, margin=self.margin, level_eyes=self.level_eyes
    )
    return crop_lib.warp(photo, matrix, self.image_size)

  def _reference(self, key: str) -> np.ndarray | None:
    """The partner's descriptor, once per partner photo (several faces may share one)."""
    if key not in self.partners:
      return None
    partner = self.partners[key][0]
    if partner not in self._descriptors:
      try:
        image = self.partner_crop(key)
      except (ValueError, OSError) as e:  # ImageError is a ValueError.
        logging.error(
          "Identity: partner photo %s of %s unreadable (%s); no other-photo row.", partner, key, e
        )
        image = None
      if image is not None:
        face, _ = find_face(image, fallback_margin=self.margin, upsample=self.upsample)
        self._descriptors[partner] = dlib_faces.face_descriptors([image], face)[0]
      else:
        self._descriptors[partner] = None
    return self._descriptors[partner]

  def score(self, key: str, images: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """{row: {metric: value}} for one example; `images` must hold `TARGET_ROW`."""
    if TARGET_ROW not in images:
      raise ValueError(f"images need the clean crop as {TARGET_ROW!r}; got rows {sorted(images)}")
    rows = {name: _to_uint8_rgb(image, name) for name, image in images.items()}
    shapes = {image.shape for image in rows.values()}
    if len(shapes) != 1:
      raise ValueError(f"the rows of {key!r} differ in shape: {sorted(shapes)}")
    face, fallback = find_face(
      rows[TARGET_ROW], fallback_margin=self.margin, upsample=self.upsample
    )
    names = list(rows)
    descriptors = dlib_faces.face_descriptors([rows[n] for n in names], face)
    target = descriptors[names.index(TARGET_ROW)]
    reference = self._reference(key)
    out = {}
    for name, descriptor in zip(names, descriptors):
      same = float(np.linalg.norm(descriptor - target))
      other = float(np.linalg.norm(descriptor - reference)) if reference is not None else np.nan
      out[name] = {
        "identity_other_photo_rate": float(other < self.threshold)
        if np.isfinite(other)
        else np.nan,
        "identity_other_photo_distance": other,
        "identity_same_photo_rate": float(same < self.threshold),
        "identity_same_photo_distance": same,
        "identity_fallback": float(fallback),
      }
    self.num_scored += 1
    if self.num_scored % LOG_EVERY_PAIRS == 0:
      rate = self.num_scored / max(time.monotonic() - self._start, 1e-9)
      logging.info("Identity verification: %d faces scored (%.2f/s).", self.num_scored, rate)
    return out

  def score_batch(
    self, index, images: Mapping[str, np.ndarray], valid=None
  ) -> dict[str, dict[str, np.ndarray]]:
    """{row: {metric: [B]}} for a batch; `index` [B] points into `keys` (padding: NaN)."""
    index = np.asarray(index).reshape(-1)
    size = index.shape[0]
    keep = index >= 0
    if valid is not None:
      keep &= np.asarray(valid).reshape(-1) > 0
    out = {
      row: {m: np.full(size, np.nan, np.float32) for m in VERIFICATION_METRIC_NAMES}
      for row in images
    }
    for i in np.flatnonzero(keep):
      scores = self.score(
        self.keys[int(index[i])], {row: batch[i] for row, batch in images.items()}
      )
      for row, values in scores.items():
        for metric, value in values.items():
          out[row][metric][i] = value
    return out
