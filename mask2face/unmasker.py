"""The Unmasker: every face of a photo found, cropped as in training, predicted, blended back.

Each face found by `mask2face.detect.FaceFinder` is cropped with the training crop's geometry
(`detect.crop_transform_from_face`), all crops of a photo go through the model in one batch at
the model's size, and each prediction is warped back into the photo.

Blending: only where the face changed. In crop coordinates the blend weight is the set of
pixels where the prediction differs from the crop by more than `change_threshold` (mean over
channels), closed and dilated so the region has no holes, restricted to an ellipse around the
face (the crop is the face box widened by 1/3 on every side, so this ellipse keeps hair,
background and neighbours out of reach), then feathered with a Gaussian blur. A trained model
reproduces the unmasked skin and background, so the region is the mask. Pixels with zero
weight are copied from the input untouched: everything away from the faces is bit-identical.

`load_run` gives a training run's (config, model, variables) and refuses weights that do not fit
the config's model. The command line over photos and folders is `mask2face.predict`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import cv2
import numpy as np

from mask2face import cli, detect
from mask2face.data import crop as crop_lib


@dataclasses.dataclass
class FaceResult:
  """What happened to one face of a photo.

  Attributes:
    box: (x0, y0, x1, y1) detector box in photo pixels.
    detector: which detector found it.
    score: detector confidence.
    matrix: (2, 3) photo -> crop affine map.
    crop: uint8 (S, S, 3) the model's input.
    prediction: uint8 (S, S, 3) the model's output.
    weight: float32 (S, S) blend weight in crop coordinates (0 = photo kept).
    unmasked: whether anything of the prediction went into the photo.
    skipped: why the face was not processed ('' when it was).
  """

  box: np.ndarray
  detector: str
  score: float
  matrix: np.ndarray | None = None
  crop: np.ndarray | None = None
  prediction: np.ndarray | None = None
  weight: np.ndarray | None = None
  unmasked: bool = False
  skipped: str = ""


def _infer(model, variables, crops):
  pred, _ = model.apply(variables, crops, train=False)
  return pred


class Unmasker:
  """Unmasks every face of a photo with a trained mask2face model.

  Args:
    model: a Flax module from `mask2face.models.get_model`.
    variables: its variables ({'params': ..., optionally 'batch_stats': ...}).
    image_size: the side of the model's square input (config.data.image_size).
    finder: a `detect.FaceFinder` (default: MediaPipe with dlib fallbacks).
    margin, level_eyes: the training crop's settings (config.data).
    batch_size: faces per forward pass.
    change_threshold: |prediction - crop| (0..1, mean over channels) that counts as changed.
    min_face: faces whose box is smaller than this (pixels) are skipped.
  """

  def __init__(
    self,
    model,
    variables,
    image_size: int,
    *,
    finder: detect.FaceFinder | None = None,
    margin: float = 1.0 / 3.0,
    level_eyes: bool = False,
    batch_size: int = 8,
    change_threshold: float = 0.06,
    min_face: int = 20,
  ):
    import jax

    self.model = model
    self.variables = variables
    self.image_size = int(image_size)
    self.finder = finder or detect.FaceFinder()
    self.margin = margin
    self.level_eyes = level_eyes
    self.batch_size = batch_size
    self.change_threshold = change_threshold
    self.min_face = min_face
    self._apply = jax.jit(functools.partial(_infer, model))

  @classmethod
  def from_checkpoint(cls, workdir, *, which: str = "best", **kwargs) -> Unmasker:
    """Restores the model of a training run from `workdir` (written by mask2face.train).

    Reads `workdir/config.json` for the model and crop settings and the weights (params and
    BatchNorm statistics) of `workdir/checkpoints/best/<step>` when `which='best'` and it
    exists, else of the latest `workdir/checkpoints/<step>`.
    """
    return cls.from_run(*load_run(workdir, which=which), **kwargs)

  @classmethod
  def pretrained(cls, name: str = "", **kwargs) -> Unmasker:
    """The model that ships with the package (`mask2face/pretrained/`, see docs/model_card.md).

    `Unmasker.pretrained().unmask(rgb_uint8)` needs no training and no checkpoint.
    """
    from mask2face import bundled

    return cls.from_run(*bundled.load(name or bundled.DEFAULT), **kwargs)

  @classmethod
  def from_run(cls, config, model, variables, **kwargs) -> Unmasker:
    """From `load_run`'s (config, model, variables): the crop settings come from the config."""
    data = config.data
    kwargs.setdefault("margin", data.get("margin", 1.0 / 3.0))
    kwargs.setdefault("level_eyes", data.get("level_eyes", False))
    return cls(model, variables, data.image_size, **kwargs)

  # -- Inference ------------------------------------------------------------------------------
  def predict_crops(self, crops: np.ndarray) -> np.ndarray:
    """uint8 (N, S, S, 3) crops -> float32 (N, S, S, 3) predictions in [0, 1]."""
    out = []
    for start in range(0, len(crops), self.batch_size):
      chunk = crops[start : start + self.batch_size].astype(np.float32) / 255.0
      n = len(chunk)
      # Pad to a power of two (at most batch_size): few distinct shapes, few compilations.
      padded = min(self.batch_size, 1 << (n - 1).bit_length())
      chunk = np.concatenate([chunk, np.zeros((padded - n, *chunk.shape[1:]), chunk.dtype)])
      out.append(np.asarray(self._apply(self.variables, chunk))[:n])
    return np.concatenate(out) if out else np.zeros((0,) + crops.shape[1:], np.float32)

  def blend_weight(self, crop: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """float32 (S, S) in [0, 1]: where the prediction replaces the crop (see module doc)."""
    s = self.image_size
    diff = np.abs(pred - crop.astype(np.float32) / 255.0).mean(-1)
    changed = (diff > self.change_threshold).astype(np.uint8)
    k = max(3, s // 32) | 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    changed = cv2.morphologyEx(changed, cv2.MORPH_CLOSE, kernel, iterations=2)
    changed = cv2.dilate(changed, kernel)
    # The face box spans the middle 1 / (1 + 2 margin) of the crop; the ellipse reaches a
    # little past it (jaw, cheeks) but not to the crop's edges.
    face = np.zeros((s, s), np.uint8)
    half = 0.5 * s / (1 + 2 * self.margin)
    axes = (round(1.1 * half), round(1.25 * half))
    cv2.ellipse(face, (s // 2, s // 2), axes, 0, 0, 360, 1, -1)
    weight = (changed & face).astype(np.float32)
    sigma = max(1.0, s / 64)
    weight = cv2.GaussianBlur(weight, (0, 0), sigma)
    # Feathering must not spill outside the face ellipse, or it could touch the crop's edge.
    weight *= cv2.GaussianBlur(face.astype(np.float32), (0, 0), sigma) > 0.99
    return np.clip(weight, 0.0, 1.0)

  def _paste(self, out: np.ndarray, result: FaceResult) -> bool:
    """Blends one prediction into `out` in place; False when its weight is all zero."""
    h, w = out.shape[:2]
    s = self.image_size
    inverse = cv2.invertAffineTransform(result.matrix)
    corners = np.array([[-0.5, -0.5], [s - 0.5, -0.5], [-0.5, s - 0.5], [s - 0.5, s - 0.5]])
    photo = crop_lib.transform_points(corners, inverse)
    x0, y0 = np.maximum(np.floor(photo.min(0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(photo.max(0)).astype(int) + 1, (w, h))
    if x1 <= x0 or y1 <= y0:
      return False
    # The crop -> region map: the photo -> crop matrix with the region's offset folded in.
    to_crop = result.matrix @ np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], np.float64)
    size = (x1 - x0, y1 - y0)
    flags_ = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    alpha = cv2.warpAffine(result.weight, to_crop, size, flags=flags_, borderValue=0)
    pred = result.prediction.astype(np.float32)
    pred = cv2.warpAffine(pred, to_crop, size, flags=flags_, borderMode=cv2.BORDER_REPLICATE)
    inside = alpha > 1e-3
    if not inside.any():
      return False
    region = out[y0:y1, x0:x1]
    a = alpha[inside][:, None]
    mixed = region[inside].astype(np.float32) * (1 - a) + pred[inside] * a
    region[inside] = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    return True

  def unmask(self, image: np.ndarray) -> tuple[np.ndarray, list[FaceResult]]:
    """Unmasks every face in a uint8 RGB image.

    Returns:
      (the new image, same shape and dtype; one `FaceResult` per face found, largest first).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
      raise ValueError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
    results = []
    for face in self.finder.find(image):
      result = FaceResult(face.box, face.detector, face.score)
      x0, y0, x1, y1 = face.box
      if min(x1 - x0, y1 - y0) < self.min_face:
        result.skipped = f"face too small ({x1 - x0:.0f}x{y1 - y0:.0f} px)"
      else:
        result.matrix = detect.crop_transform_from_face(
          face, size=self.image_size, margin=self.margin, level_eyes=self.level_eyes
        )
        result.crop = crop_lib.warp(image, result.matrix, self.image_size)
      results.append(result)
    todo = [r for r in results if not r.skipped]
    out = image.copy()
    if todo:
      preds = self.predict_crops(np.stack([r.crop for r in todo]))
      for result, pred in zip(todo, preds):
        result.prediction = np.clip(np.round(pred * 255), 0, 255).astype(np.uint8)
        result.weight = self.blend_weight(result.crop, pred)
        result.unmasked = self._paste(out, result)
        if not result.unmasked:
          result.skipped = "prediction did not change the face"
    return out, results


def load_run(workdir, *, which: str = "best"):
  """(config, model, variables) of a training run in `workdir` (written by mask2face.train).

  The model comes from `workdir/config.json`, its weights from the run's best checkpoint
  (`which='best'`, when one exists) or its latest one (`checkpointing.restore_weights`).
  `bundled:NAME` (`bundled.PREFIX`) names a model shipped inside the package instead.
  """
  import ml_collections

  from mask2face import bundled, checkpointing, models

  if str(workdir).startswith(bundled.PREFIX):
    try:
      return bundled.load(str(workdir)[len(bundled.PREFIX) :] or bundled.DEFAULT)
    except ValueError as e:
      raise cli.UserError(str(e)) from e
  workdir = pathlib.Path(workdir).expanduser()
  config_path = workdir / "config.json"
  try:
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  except (OSError, ValueError) as e:
    raise cli.UserError(f"{config_path}: cannot read the run's config ({e})") from e
  try:
    variables = checkpointing.restore_weights(workdir / "checkpoints", which=which)
  except (OSError, ValueError) as e:
    raise cli.UserError(str(e).strip().splitlines()[0]) from e
  try:
    model = models.model_from_config(config, axis_name=None)
  except (ValueError, AttributeError, KeyError, TypeError) as e:
    raise cli.UserError(f"{config_path}: no model can be built from it ({e})") from e
  check_weights(model, variables, int(config.data.image_size), workdir)
  return config, model, variables


def check_weights(model, variables, image_size: int, workdir) -> None:
  """Refuses weights that do not fit `model` at `image_size` (traced, not run): once, here,
  rather than once per photo."""
  import jax
  import jax.numpy as jnp

  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  try:
    pred = jax.eval_shape(lambda v, x: model.apply(v, x, train=False)[0], variables, x)
  except Exception as e:  # Flax and XLA report mismatches with several exception types.
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise cli.UserError(
      f"{workdir}: the checkpoint does not fit the model its config.json describes "
      f"({type(model).__name__}, {image_size} px): {reason}"
    ) from e
  if pred.shape != x.shape:
    raise cli.UserError(f"{workdir}: the model maps {x.shape} to {pred.shape}, not to itself")
