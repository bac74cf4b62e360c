"""The rows every model is compared with: classical inpainting and the composited prediction.

Host-side, per evaluation batch (numpy in, numpy out):
- `inpaint(masked, mask, method)`: OpenCV's Telea (fast marching) or Navier-Stokes inpainting
  of each example, given the true mask. No learning, a few milliseconds at 64 px and about
  60 ms at 256 px per face on a CPU core; a model that does not beat it has learnt little.
- `comparison_images(batch, pred)`: the model's prediction composited into its input
  (`metrics.composite`: the prediction inside the slightly dilated mask, the input outside)
  and both inpainting baselines.
- `comparison_rows(batch, pred)`: their per-example `metrics.image_metrics`, as
  `{row: {metric: [B]}}` for the evaluation loop's extra rows. The masked input's own row is
  `metrics.baseline_metrics`; the model's raw row is the eval step's.

The inpainting rows do not depend on the model: one evaluation of a split gives them for
every run on the same data (the same images and masks), so computing them on the test pass
only is enough.
"""

import concurrent.futures
import functools
import os
from collections.abc import Mapping
from typing import Any

import cv2
import jax
import numpy as np

from mask2face import metrics

# OpenCV's two inpainting methods, by the row names they get in results.
METHODS = {"telea": cv2.INPAINT_TELEA, "navier_stokes": cv2.INPAINT_NS}
ROW_NAMES = ("model_composited", "telea", "navier_stokes")
# The neighbourhood each method fills from, in pixels (OpenCV's documented example value).
INPAINT_RADIUS = 3

# Compiled once per batch shape (every evaluation batch has the same one).
_image_metrics = jax.jit(metrics.image_metrics)
_composite = jax.jit(metrics.composite, static_argnums=3)


def _to_uint8(image) -> np.ndarray:
  """uint8 HxWx3 from float [0, 1] (pipeline images are k / 255, so this is exact)."""
  return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def _inpaint_one(image, mask, flag: int, radius: int) -> np.ndarray:
  # Only the pixels under the mask are filled, each from the known pixels around it. The true
  # (binary) mask, not a dilated one: measured on 23 real faces, inpainting the mask grown by
  # 1-3 px loses 0.7-1.6 dB masked PSNR (the fill then starts farther from the face).
  filled = cv2.inpaint(_to_uint8(image), mask.astype(np.uint8), radius, flag)
  return filled.astype(np.float32) / 255.0


def inpaint(masked, mask, method: str = "telea", *, radius: int = INPAINT_RADIUS) -> np.ndarray:
  """OpenCV inpainting of every example of a batch, given its true mask.

  Args:
    masked: [B, H, W, 3] float in [0, 1], the masked faces.
    mask: [B, H, W, 1] or [B, H, W], 1 under the mask (thresholded at 0.5).
    method: 'telea' or 'navier_stokes'.
    radius: the inpainting neighbourhood in pixels.

  Returns:
    float32 [B, H, W, 3]: the inpainted pixels under the mask, `masked` (bit for bit) elsewhere.
  """
  if method not in METHODS:
    raise ValueError(f"unknown inpainting method {method!r}; expected one of {sorted(METHODS)}")
  masked = np.asarray(masked, np.float32)
  binary = np.asarray(mask)
  if binary.ndim == masked.ndim:
    binary = binary[..., 0]
  if masked.ndim != 4 or binary.shape != masked.shape[:3]:
    raise ValueError(f"mask {np.shape(mask)} does not match images {masked.shape}")
  binary = binary > 0.5
  one = functools.partial(_inpaint_one, flag=METHODS[method], radius=int(radius))
  # cv2.inpaint releases the GIL: threads fill a batch's examples in parallel.
  workers = max(1, min(len(masked), os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    filled = np.stack(list(pool.map(one, masked, binary))) if len(masked) else masked.copy()
  return np.where(binary[..., None], filled, masked)


def comparison_images(
  batch: Mapping[str, Any], pred, *, dilate_px: int | None = None
) -> dict[str, np.ndarray]:
  """The composited prediction and the two inpainting baselines of one batch.

  Args:
    batch: an evaluation batch (`masked`, `clean`, `mask`, ...), host arrays.
    pred: the model's [B, H, W, 3] predictions of the same examples, in the same order.
    dilate_px: how far the mask grows for the composite; None = `metrics.default_dilate_px`
      of the image height (1 px per 64 px).

  Returns:
    {'model_composited', 'telea', 'navier_stokes'}: float32 [B, H, W, 3] each.
  """
  masked = np.asarray(batch["masked"], np.float32)
  if dilate_px is None:
    dilate_px = metrics.default_dilate_px(masked.shape[1])
  pasted = _composite(np.asarray(pred, np.float32), masked, np.asarray(batch["mask"]), dilate_px)
  out = {"model_composited": np.asarray(pasted)}
  for method in METHODS:
    out[method] = inpaint(masked, batch["mask"], method)
  return out


def comparison_rows(
  batch: Mapping[str, Any],
  pred,
  *,
  dilate_px: int | None = None,
  images: Mapping[str, np.ndarray] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
  """Per-example metrics of the composited prediction and of Telea and Navier-Stokes.

  A row function for the evaluation loop: `(batch, pred) -> {row: {metric: [B] array}}`, the
  same metric names as `metrics.image_metrics`, on the true mask. Pass `images` (from
  `comparison_images`) when they are needed again, e.g. by the identity metric.
  """
  if images is None:
    images = comparison_images(batch, pred, dilate_px=dilate_px)
  clean, mask = np.asarray(batch["clean"], np.float32), np.asarray(batch["mask"], np.float32)
  return {
    row: jax.device_get(_image_metrics(images[row], clean, mask))
    for row in ROW_NAMES
    if row in images
  }
