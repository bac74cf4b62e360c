"""The identity metric: is the inpainted face still the same person?

`IdentityScorer` compares dlib face descriptors (`mask2face.data.dlib_faces`) of a prediction
and its target, aligned by the same landmarks. Host-side and slow (about 0.1-0.4 s a pair on a
CPU), so it runs on the test split only (`config.identity_metric`).
"""

import time

import numpy as np
from absl import logging

from mask2face.data import dlib_faces

# IdentityScorer logs its progress every this many pairs.
LOG_EVERY_PAIRS = 200
IDENTITY_METRIC_NAMES = ("identity_similarity", "identity_distance", "identity_fallback")


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
    """The largest face of `image` (68 points in its pixels) and whether it is the fallback.

    The fallback (nothing detected) is the predictor's 68 points in the face box that the crop
    margin implies.
    """
    view = dlib_faces.View.of(image)
    upsample = self.upsample
    if upsample is None:
      upsample = 1 if min(view.photo_size) < 200 else 0
    faces = dlib_faces.find_faces(view, upsample=upsample)
    if faces:
      return faces[0], False
    inset = self.fallback_margin / (1.0 + 2.0 * self.fallback_margin)
    box = view.box_from_fractions(inset, inset, 1 - inset, 1 - inset)
    return dlib_faces.face_in_box(view, box), True

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
