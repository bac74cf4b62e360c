"""Image-quality metrics for inpainted faces.

Two layers (the identity metric, which needs dlib, is `mask2face.identity`):
- `image_metrics` (pure jnp, jit-able): per-example PSNR, SSIM and L1 over the whole image and
  over the masked region only, computed with dm_pix. `composite` pastes a prediction into its
  input the way inpainting is used (and reported): the prediction inside the slightly dilated
  mask, the input outside; `composited_metrics` scores that.
- `MetricAccumulator` (host-side numpy): means over every valid example, overall and per mask
  family, across any number of (partial) batches.
"""

import collections
import math
from collections.abc import Mapping, Sequence
from typing import Any

import dm_pix
import jax.numpy as jnp
import numpy as np
from jax import lax

# SSIM settings of upstream's loss and of the SSIM paper (Wang et al. 2004); the losses use the
# same ones so a loss value and a metric value mean the same thing.
SSIM_KWARGS = dict(max_val=1.0, filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03)

# The keys `image_metrics` returns, in a stable order (for tables and logs).
METRIC_NAMES = ("psnr", "ssim", "l1", "masked_psnr", "masked_ssim", "masked_l1")


def ssim_map(a, b):
  """dm_pix's per-pixel SSIM map, [B, H - 10, W - 10, C] ("valid" 11x11 windows)."""
  return dm_pix.ssim(a, b, return_map=True, **SSIM_KWARGS)


def crop_to_ssim_map(x):
  """Crops a [B, H, W, C] per-pixel array to the window centres of `ssim_map`.

  dm_pix filters with a "valid" convolution, so map entry (i, j) is the window centred on
  pixel (i + r, j + r) with r = filter_size // 2: cropping r pixels on every side aligns a mask
  or weight image with the map.
  """
  r = SSIM_KWARGS["filter_size"] // 2
  return x[:, r : x.shape[1] - r, r : x.shape[2] - r, :]


def _as_mask(mask, like):
  """A float32 [B, H, W, 1] binary mask from [B, H, W] or [B, H, W, 1] input."""
  mask = jnp.asarray(mask, jnp.float32)
  if mask.ndim == like.ndim - 1:
    mask = mask[..., None]
  if mask.ndim != like.ndim or mask.shape[:3] != like.shape[:3]:
    raise ValueError(f"mask of shape {mask.shape} does not match images of shape {like.shape}")
  # Masks may be feathered or resized; the masked region is where the mask is mostly on.
  return (mask > 0.5).astype(jnp.float32)


def _masked_mean(values, mask):
  """Per-example mean of `values` [B, h, w, C] where `mask` [B, h, w, 1] is 1; NaN if empty."""
  channels = values.shape[-1]
  total = jnp.sum(values * mask, axis=(1, 2, 3))
  count = jnp.sum(mask, axis=(1, 2, 3)) * channels
  # An empty mask has no masked metric: NaN (skipped by MetricAccumulator) rather than 0.
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.nan)


def _psnr_from_mse(mse):
  return -10.0 * jnp.log10(mse)


def image_metrics(pred, target, mask) -> dict[str, Any]:
  """Per-example quality of `pred` against `target`, whole image and masked region.

  Args:
    pred: [B, H, W, C] prediction in [0, 1] (any float dtype; computed in float32).
    target: [B, H, W, C] target in [0, 1].
    mask: [B, H, W, 1] or [B, H, W], 1 under the face mask (thresholded at 0.5).

  Returns:
    A dict of float32 [B] arrays: `psnr`, `ssim`, `l1` over the whole image, and
    `masked_psnr` (from the MSE inside the mask), `masked_ssim` (the SSIM map averaged over
    window centres inside the mask) and `masked_l1`. Masked values are NaN for an empty mask.
  """
  pred = jnp.asarray(pred, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  if pred.shape != target.shape or pred.ndim != 4:
    raise ValueError(f"pred {pred.shape} and target {target.shape} must both be [B, H, W, C]")
  mask = _as_mask(mask, pred)
  abs_err = jnp.abs(pred - target)
  sq_err = jnp.square(pred - target)
  ssim = ssim_map(pred, target)
  return {
    "psnr": dm_pix.psnr(pred, target),
    "ssim": jnp.mean(ssim, axis=(1, 2, 3)),
    "l1": jnp.mean(abs_err, axis=(1, 2, 3)),
    "masked_psnr": _psnr_from_mse(_masked_mean(sq_err, mask)),
    "masked_ssim": _masked_mean(ssim, crop_to_ssim_map(mask)),
    "masked_l1": _masked_mean(abs_err, mask),
  }


def default_dilate_px(image_size: int) -> int:
  """How far `composite` grows the mask: 1 px per 64 px of image side (1 at 64, 4 at 256).

  A painted mask's blended edge reaches past its binary mask once the photo is resampled into
  the crop: measured on 23 UTKFace and LFW faces, up to 1.4 px at 64 px and 3.6 px at 256 px.
  Those pixels are part mask colour; the composite replaces them with the prediction.
  """
  return max(1, round(int(image_size) / 64))


def dilate_mask(mask, dilate_px: int):
  """The binary mask [B, H, W, 1] grown by `dilate_px` pixels (a square window: the diagonal
  neighbours of an edge pixel count too). Static `dilate_px`; jit-able."""
  mask = jnp.asarray(mask, jnp.float32)
  if mask.ndim == 3:
    mask = mask[..., None]
  mask = (mask > 0.5).astype(jnp.float32)
  if dilate_px <= 0:
    return mask
  size = 2 * int(dilate_px) + 1
  return lax.reduce_window(mask, 0.0, lax.max, (1, size, size, 1), (1, 1, 1, 1), "SAME")


def composite(pred, masked, mask, dilate_px: int):
  """The prediction pasted into its input: `pred` inside the mask grown by `dilate_px`, `masked`
  (bit for bit) everywhere else. What `mask2face.predict` does with photos and what inpainting
  papers report. [B, H, W, C] float; `mask` [B, H, W, 1] or [B, H, W]; jit-able (static px)."""
  masked = jnp.asarray(masked)
  pred = jnp.asarray(pred).astype(masked.dtype)
  if pred.shape != masked.shape or pred.ndim != 4:
    raise ValueError(f"pred {pred.shape} and masked {masked.shape} must both be [B, H, W, C]")
  region = dilate_mask(_as_mask(mask, masked), dilate_px)
  return jnp.where(region > 0, pred, masked)


def composited_metrics(pred, batch: Mapping[str, Any], *, dilate_px: int) -> dict[str, Any]:
  """`image_metrics` of `composite(pred, ...)` against the clean image, on the true mask."""
  pasted = composite(pred, batch["masked"], batch["mask"], dilate_px)
  return image_metrics(pasted, batch["clean"], batch["mask"])


def baseline_metrics(batch: Mapping[str, Any]) -> dict[str, Any]:
  """The metrics of doing nothing: the masked input itself scored as the prediction.

  The row every model must beat; outside the mask the input is already exact, so the masked
  metrics are the ones that tell models apart.
  """
  return image_metrics(batch["masked"], batch["clean"], batch["mask"])


class MetricAccumulator:
  """Host-side means of per-example metrics, overall and per mask family.

  Every example with `valid > 0` counts exactly once, however the examples are split into
  batches; padding (`valid == 0`) counts nowhere. NaN values (a masked metric of an example
  with an empty mask) are left out of that metric's mean and reported as `undefined/<name>`.
  """

  def __init__(self):
    # (family id or None for overall, metric name) -> [sum, count], in float64.
    self._sums: dict[tuple[int | None, str], list[float]] = collections.defaultdict(
      lambda: [0.0, 0]
    )
    self._undefined: collections.Counter = collections.Counter()
    self._counts: collections.Counter = collections.Counter()

  def add(self, per_example_metrics: Mapping[str, Any], valid=None, family=None) -> None:
    """Adds one batch of per-example [B] metrics (`valid`, `family` are [B] or None)."""
    metrics = {k: np.asarray(v, np.float64).reshape(-1) for k, v in per_example_metrics.items()}
    if not metrics:
      return
    size = next(iter(metrics.values())).shape[0]
    for name, values in metrics.items():
      if values.shape[0] != size:
        raise ValueError(f"metric {name!r} has {values.shape[0]} values, expected {size}")
    keep = np.ones(size, bool) if valid is None else np.asarray(valid).reshape(-1) > 0
    if family is None:
      family = np.full(size, -1, np.int64)
    family = np.asarray(family, np.int64).reshape(-1)
    if keep.shape[0] != size or family.shape[0] != size:
      raise ValueError(f"valid/family must have {size} entries like the metrics")

    groups = [(None, keep)]
    for fam in np.unique(family[keep]):
      if fam >= 0:
        groups.append((int(fam), keep & (family == fam)))
    for group, selected in groups:
      self._counts[group] += int(selected.sum())
      for name, values in metrics.items():
        chosen = values[selected]
        defined = ~np.isnan(chosen)
        entry = self._sums[(group, name)]
        entry[0] += float(chosen[defined].sum())
        entry[1] += int(defined.sum())
        if group is None:
          self._undefined[name] += int((~defined).sum())

  @property
  def count(self) -> int:
    """How many valid examples were added."""
    return self._counts[None]

  def result(self, family_names: Sequence[str] | None = None) -> dict[str, float]:
    """Means: `<metric>`, `count`, and `family/<name>/<metric>`, `family/<name>/count`.

    Args:
      family_names: names indexed by family id (mask2face.data.masks.FAMILY_NAMES); ids
        without a name are reported by number.
    """
    out: dict[str, float] = {"count": float(self._counts[None])}
    for (group, name), (total, n) in sorted(self._sums.items(), key=lambda kv: str(kv[0])):
      mean = total / n if n else math.nan
      if group is None:
        out[name] = mean
      else:
        out[f"family/{self._family_name(group, family_names)}/{name}"] = mean
    for group, n in self._counts.items():
      if group is not None:
        out[f"family/{self._family_name(group, family_names)}/count"] = float(n)
    for name, n in self._undefined.items():
      if n:
        out[f"undefined/{name}"] = float(n)
    return out

  @staticmethod
  def _family_name(family_id: int, family_names: Sequence[str] | None) -> str:
    if family_names is not None and 0 <= family_id < len(family_names):
      return family_names[family_id]
    return str(family_id)
