"""Tests for mask2face.metrics against independent references (TensorFlow, scikit-image, numpy)."""

import jax
import numpy as np
import pytest
import skimage.metrics

from mask2face import metrics


def _pair(seed, shape=(2, 32, 32, 3), noise=0.1):
  """A random image batch and a noisy copy: correlated enough for SSIM to be informative."""
  rng = np.random.default_rng(seed)
  target = rng.uniform(size=shape).astype(np.float32)
  pred = np.clip(target + rng.normal(scale=noise, size=shape), 0, 1).astype(np.float32)
  return pred, target


def _random_mask(seed, shape=(2, 32, 32, 1)):
  mask = np.zeros(shape, np.float32)
  rng = np.random.default_rng(seed)
  for i in range(shape[0]):
    y0, x0 = rng.integers(2, 12, size=2)
    mask[i, y0 : y0 + 16, x0 : x0 + 14] = 1.0
  return mask


def _skimage_ssim_map(a, b):
  """An independent per-pixel SSIM map (scikit-image), cropped to dm_pix's valid windows."""
  _, full = skimage.metrics.structural_similarity(
    a.astype(np.float64),
    b.astype(np.float64),
    data_range=1.0,
    channel_axis=-1,
    gaussian_weights=True,
    sigma=1.5,
    win_size=11,
    use_sample_covariance=False,
    full=True,
  )
  return full[5:-5, 5:-5]


@pytest.mark.parametrize("use_jit", [False, True])
def test_whole_image_metrics_match_tensorflow(use_jit):
  import tensorflow as tf

  pred, target = _pair(0)
  fn = jax.jit(metrics.image_metrics) if use_jit else metrics.image_metrics
  out = fn(pred, target, _random_mask(0))
  tf_ssim = tf.image.ssim(pred, target, max_val=1.0, filter_size=11, filter_sigma=1.5).numpy()
  tf_psnr = tf.image.psnr(pred, target, max_val=1.0).numpy()
  assert out["ssim"].shape == (2,)
  np.testing.assert_allclose(out["ssim"], tf_ssim, atol=1e-4)
  np.testing.assert_allclose(out["psnr"], tf_psnr, rtol=1e-4)
  np.testing.assert_allclose(out["l1"], np.abs(pred - target).mean(axis=(1, 2, 3)), rtol=1e-5)
  # The noise level matters: a worse prediction must score worse on every metric.
  worse = fn(*_pair(0, noise=0.3)[:1], target, _random_mask(0))
  assert np.all(worse["psnr"] < out["psnr"]) and np.all(worse["ssim"] < out["ssim"])


def test_masked_metrics_match_numpy_and_skimage_references():
  pred, target = _pair(1)
  mask = _random_mask(1)
  out = jax.jit(metrics.image_metrics)(pred, target, mask)
  for i in range(2):
    m = mask[i, ..., 0] > 0.5
    err = pred[i][m] - target[i][m]
    np.testing.assert_allclose(out["masked_l1"][i], np.abs(err).mean(), rtol=1e-5)
    np.testing.assert_allclose(
      out["masked_psnr"][i], -10 * np.log10(np.square(err).mean()), rtol=1e-5
    )
    ssim = _skimage_ssim_map(pred[i], target[i])
    centres = m[5:-5, 5:-5]
    np.testing.assert_allclose(out["masked_ssim"][i], ssim[centres].mean(), atol=1e-4)


def test_masked_metrics_equal_whole_image_when_mask_is_all_ones():
  pred, target = _pair(2)
  out = metrics.image_metrics(pred, target, np.ones(pred.shape[:3], np.float32))
  for name in ("psnr", "ssim", "l1"):
    np.testing.assert_allclose(out[f"masked_{name}"], out[name], rtol=1e-5, err_msg=name)


def test_masked_metrics_ignore_errors_outside_the_mask():
  pred, target = _pair(3)
  mask = _random_mask(3)
  outside_only = np.where(mask > 0.5, target, pred)
  out = metrics.image_metrics(outside_only, target, mask)
  np.testing.assert_allclose(out["masked_l1"], 0.0, atol=1e-7)
  assert np.all(np.isinf(out["masked_psnr"]))
  assert np.all(out["l1"] > 0.01)


def test_empty_mask_gives_nan_masked_metrics_and_accumulator_skips_them():
  pred, target = _pair(4)
  mask = _random_mask(4)
  mask[1] = 0.0
  out = metrics.image_metrics(pred, target, mask)
  assert np.all(np.isfinite([out["masked_l1"][0], out["masked_ssim"][0]]))
  assert np.isnan(out["masked_l1"][1]) and np.isnan(out["masked_ssim"][1])
  acc = metrics.MetricAccumulator()
  acc.add(out, valid=np.ones(2), family=np.array([0, 0]))
  res = acc.result()
  np.testing.assert_allclose(res["masked_l1"], out["masked_l1"][0], rtol=1e-6)
  np.testing.assert_allclose(res["l1"], np.mean(out["l1"]), rtol=1e-6)
  assert res["count"] == 2 and res["undefined/masked_l1"] == 1


def test_baseline_metrics_score_the_masked_input():
  _, clean = _pair(5)
  mask = _random_mask(5)
  rng = np.random.default_rng(5)
  masked = np.where(mask > 0.5, rng.uniform(size=clean.shape), clean).astype(np.float32)
  batch = {"masked": masked, "clean": clean, "mask": mask}
  out = metrics.baseline_metrics(batch)
  ref = metrics.image_metrics(masked, clean, mask)
  for name in metrics.METRIC_NAMES:
    np.testing.assert_allclose(out[name], ref[name], err_msg=name)
  # Only the masked pixels differ, so the whole-image L1 is the masked L1 diluted by area.
  np.testing.assert_allclose(out["l1"], out["masked_l1"] * mask.mean(axis=(1, 2, 3)), rtol=1e-5)


def test_accumulator_counts_each_valid_example_once_overall_and_per_family():
  rng = np.random.default_rng(6)
  n = 23
  values = {"psnr": rng.uniform(10, 40, n), "masked_ssim": rng.uniform(0, 1, n)}
  family = rng.integers(0, 3, n)
  names = ("surgical", "cloth", "n95")

  def accumulate(batch_size):
    acc = metrics.MetricAccumulator()
    for start in range(0, n, batch_size):
      stop = min(start + batch_size, n)
      pad = batch_size - (stop - start)
      # A padded last batch, as eval_batches makes it: padding carries junk and valid 0.
      batch = {k: np.concatenate([v[start:stop], np.full(pad, 1e6)]) for k, v in values.items()}
      fam = np.concatenate([family[start:stop], np.zeros(pad, int)])
      valid = np.concatenate([np.ones(stop - start), np.zeros(pad)])
      acc.add(batch, valid=valid, family=fam)
    return acc.result(names)

  res = accumulate(5)
  assert res["count"] == n
  np.testing.assert_allclose(res["psnr"], values["psnr"].mean())
  for fid, name in enumerate(names):
    sel = family == fid
    assert res[f"family/{name}/count"] == sel.sum()
    np.testing.assert_allclose(res[f"family/{name}/masked_ssim"], values["masked_ssim"][sel].mean())
  # The same examples in other batch sizes give the same numbers.
  for key, value in accumulate(8).items():
    np.testing.assert_allclose(value, res[key], rtol=1e-12, err_msg=key)


def test_accumulator_rejects_mismatched_lengths():
  acc = metrics.MetricAccumulator()
  with pytest.raises(ValueError, match="psnr"):
    acc.add({"l1": np.zeros(3), "psnr": np.zeros(2)}, valid=np.ones(3))
