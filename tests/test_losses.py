"""Tests for mask2face.losses: known values, independent references, weights, padding, KL."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import skimage.metrics

from mask2face import losses


def _config(name="mae", **overrides):
  config = ml_collections.ConfigDict(
    dict(
      name=name,
      ssim_weight=1.0,
      pixel_weight=1.0,
      kl_weight=0.0,
      coarse_weight=0.0,
      masked_weight=1.0,
      unmasked_weight=1.0,
    )
  )
  config.update(overrides)
  return config


def _batch(seed=0, size=2, hw=24):
  rng = np.random.default_rng(seed)
  clean = rng.uniform(0.1, 0.9, size=(size, hw, hw, 3)).astype(np.float32)
  mask = np.zeros((size, hw, hw, 1), np.float32)
  mask[:, hw // 2 :, 4:-4] = 1.0  # The lower half of the face, like a face mask.
  return {
    "masked": np.where(mask > 0, 0.5, clean).astype(np.float32),
    "clean": clean,
    "mask": mask,
    "family": np.zeros(size, np.int32),
    "valid": np.ones(size, np.float32),
  }


def _noisy(clean, seed=1, scale=0.1):
  rng = np.random.default_rng(seed)
  return np.clip(clean + rng.normal(scale=scale, size=clean.shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize("name", losses.LOSS_NAMES)
def test_identical_images_give_zero_loss_whatever_the_weights(name):
  batch = _batch()
  for masked_weight, unmasked_weight in [(1.0, 1.0), (5.0, 0.5)]:
    config = _config(name, masked_weight=masked_weight, unmasked_weight=unmasked_weight)
    loss, terms = losses.compute_loss(config, batch["clean"], {}, batch)
    assert loss.dtype == jnp.float32 and loss.shape == ()
    np.testing.assert_allclose(loss, 0.0, atol=1e-6)
    assert terms["loss"] == loss and "pixel" in terms
  # And a wrong prediction gives a positive loss.
  assert losses.compute_loss(_config(name), batch["masked"], {}, batch)[0] > 0.01


def test_mae_and_mse_of_a_known_offset():
  batch = _batch()
  pred = batch["clean"] + 0.1
  np.testing.assert_allclose(
    losses.compute_loss(_config("mae"), pred, {}, batch)[0], 0.1, rtol=1e-5
  )
  np.testing.assert_allclose(
    losses.compute_loss(_config("mse"), pred, {}, batch)[0], 0.01, rtol=1e-4
  )


@pytest.mark.parametrize("use_jit", [False, True])
def test_ssim_losses_match_tensorflow_and_their_components(use_jit):
  import tensorflow as tf

  batch = _batch()
  pred = _noisy(batch["clean"])
  expected_dssim = 1.0 - np.mean(tf.image.ssim(pred, batch["clean"], max_val=1.0).numpy())
  expected_mae = np.abs(pred - batch["clean"]).mean()
  expected_mse = np.square(pred - batch["clean"]).mean()
  expected = {
    "ssim": expected_dssim,
    "ssim_l1": expected_dssim + expected_mae,
    "upstream_ssim_mse": expected_dssim + expected_mse,
  }
  for name, value in expected.items():
    config = _config(name)
    fn = jax.jit(lambda p, b, c=config: losses.compute_loss(c, p, {}, b)) if use_jit else None
    loss, terms = fn(pred, batch) if use_jit else losses.compute_loss(config, pred, {}, batch)
    np.testing.assert_allclose(loss, value, rtol=1e-4, err_msg=name)
    np.testing.assert_allclose(terms["ssim"], expected_dssim, rtol=1e-4, err_msg=name)
  # The combination weights are used.
  loss = losses.compute_loss(
    _config("ssim_l1", ssim_weight=0.5, pixel_weight=2.0), pred, {}, batch
  )[0]
  np.testing.assert_allclose(loss, 0.5 * expected_dssim + 2.0 * expected_mae, rtol=1e-4)


def test_zero_masked_weight_ignores_errors_under_the_mask():
  batch = _batch()
  under_mask_only = np.where(batch["mask"] > 0, _noisy(batch["clean"], scale=0.3), batch["clean"])
  for name in ("mae", "mse"):
    loss = losses.compute_loss(_config(name, masked_weight=0.0), under_mask_only, {}, batch)[0]
    np.testing.assert_allclose(loss, 0.0, atol=1e-7, err_msg=name)
    loss = losses.compute_loss(_config(name, unmasked_weight=0.0), under_mask_only, {}, batch)[0]
    assert loss > 1e-3, name
  # Scaling the masked weight scales exactly the masked part of the error.
  mae_1 = losses.compute_loss(_config("mae"), under_mask_only, {}, batch)[0]
  mae_3 = losses.compute_loss(_config("mae", masked_weight=3.0), under_mask_only, {}, batch)[0]
  np.testing.assert_allclose(mae_3, 3 * mae_1, rtol=1e-5)


def test_weighted_ssim_applies_weights_to_the_ssim_map():
  batch = _batch()
  pred = _noisy(batch["clean"])
  config = _config("ssim", masked_weight=2.0, unmasked_weight=0.25)
  loss = losses.compute_loss(config, pred, {}, batch)[0]
  per_example = []
  for i in range(2):
    # scikit-image's full SSIM map, cut to the window centres dm_pix keeps ("valid").
    _, full = skimage.metrics.structural_similarity(
      pred[i].astype(np.float64),
      batch["clean"][i].astype(np.float64),
      data_range=1.0,
      channel_axis=-1,
      gaussian_weights=True,
      sigma=1.5,
      use_sample_covariance=False,
      full=True,
    )
    weights = np.where(batch["mask"][i, 5:-5, 5:-5] > 0, 2.0, 0.25)
    per_example.append(np.mean(weights * (1.0 - full[5:-5, 5:-5])))
  np.testing.assert_allclose(loss, np.mean(per_example), rtol=1e-4)


def test_padding_examples_contribute_nothing():
  batch = _batch(size=3)
  pred = _noisy(batch["clean"])
  pred[2] = np.nan  # Padding may hold anything; even NaN must not leak into the loss.
  batch["valid"] = np.array([1.0, 1.0, 0.0], np.float32)
  aux = {"mean": np.ones((3, 4), np.float32), "logvar": np.zeros((3, 4), np.float32)}
  aux["mean"][2] = 100.0
  real = {k: v[:2] for k, v in batch.items()}
  for name in losses.LOSS_NAMES:
    config = _config(name, kl_weight=0.1)
    loss, terms = losses.compute_loss(config, pred, aux, batch)
    ref, _ = losses.compute_loss(config, pred[:2], {k: v[:2] for k, v in aux.items()}, real)
    np.testing.assert_allclose(loss, ref, rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(terms["kl"], 2.0, rtol=1e-6)  # 0.5 * sum(mean^2) over 4 dims.


def _numpy_kl(mean, logvar):
  """KL(N(mu, sigma^2) || N(0, 1)) from the general two-Gaussian formula, summed over dims."""
  sigma = np.exp(0.5 * logvar.astype(np.float64))
  mu = mean.astype(np.float64)
  per_dim = np.log(1.0 / sigma) + (sigma**2 + mu**2) / 2.0 - 0.5
  return per_dim.reshape(len(mu), -1).sum(axis=1)


def test_kl_matches_closed_form_and_monte_carlo():
  rng = np.random.default_rng(8)
  mean = rng.normal(size=(3, 2, 2, 2)).astype(np.float32)  # A spatial latent, like a conv VAE.
  logvar = rng.normal(scale=0.5, size=(3, 2, 2, 2)).astype(np.float32)
  kl = np.asarray(losses.kl_divergence(mean, logvar))
  np.testing.assert_allclose(kl, _numpy_kl(mean, logvar), rtol=1e-5)

  # Monte Carlo: KL = E_q[log q(z) - log p(z)]; the log(2 pi) terms cancel.
  samples = 200_000
  mu, lv = mean[0].reshape(-1).astype(np.float64), logvar[0].reshape(-1).astype(np.float64)
  z = mu + np.exp(0.5 * lv) * rng.normal(size=(samples, mu.size))
  log_ratio = (-0.5 * lv - 0.5 * (z - mu) ** 2 / np.exp(lv) + 0.5 * z**2).sum(axis=1)
  stderr = log_ratio.std() / np.sqrt(samples)
  assert abs(log_ratio.mean() - kl[0]) < 4 * stderr, (log_ratio.mean(), kl[0], stderr)

  # In compute_loss: the batch mean, weighted, on top of the pixel loss.
  batch = _batch(size=3)
  aux = {"mean": mean, "logvar": logvar}
  base = losses.compute_loss(_config("mse"), batch["masked"], aux, batch)[0]
  loss, terms = losses.compute_loss(_config("mse", kl_weight=0.01), batch["masked"], aux, batch)
  np.testing.assert_allclose(terms["kl"], kl.mean(), rtol=1e-5)
  np.testing.assert_allclose(loss, base + 0.01 * kl.mean(), rtol=1e-5)


def test_coarse_stage_gets_the_same_pixel_loss():
  batch = _batch()
  pred = batch["clean"]
  coarse = batch["clean"] + 0.2
  loss, terms = losses.compute_loss(
    _config("mae", coarse_weight=0.5), pred, {"coarse": coarse}, batch
  )
  np.testing.assert_allclose(terms["coarse"], 0.2, rtol=1e-5)
  np.testing.assert_allclose(loss, 0.1, rtol=1e-5)
  # Without coarse_weight the coarse output is not trained.
  loss, terms = losses.compute_loss(_config("mae"), pred, {"coarse": coarse}, batch)
  assert loss == 0.0 and "coarse" not in terms


def test_bfloat16_predictions_give_float32_losses_and_gradients():
  batch = _batch()
  pred = jnp.asarray(_noisy(batch["clean"]), jnp.bfloat16)
  config = _config("ssim_l1", masked_weight=2.0)
  grad_fn = jax.jit(jax.value_and_grad(lambda p: losses.compute_loss(config, p, {}, batch)[0]))
  loss, grad = grad_fn(pred)
  assert loss.dtype == jnp.float32 and np.isfinite(loss) and loss > 0
  assert grad.shape == pred.shape and np.all(np.isfinite(np.asarray(grad, np.float32)))
  ref = losses.compute_loss(config, np.asarray(pred, np.float32), {}, batch)[0]
  np.testing.assert_allclose(loss, ref, rtol=1e-5)


def test_unknown_loss_name_lists_valid_names():
  batch = _batch()
  with pytest.raises(ValueError, match="upstream_ssim_mse"):
    losses.compute_loss(_config("ssim_l2"), batch["clean"], {}, batch)


def _numpy_gaussian_kl(mean_q, logvar_q, mean_p, logvar_p):
  """KL(q || p) per dimension by numerical integration of q log(q / p), summed per example."""
  mq, mp = mean_q.astype(np.float64).ravel(), mean_p.astype(np.float64).ravel()
  sq, sp = np.exp(0.5 * logvar_q.astype(np.float64)).ravel(), np.exp(0.5 * logvar_p).ravel()
  per_dim = []
  for mu_q, mu_p, sd_q, sd_p in zip(mq, mp, sq, sp):
    z = np.linspace(mu_q - 12 * sd_q, mu_q + 12 * sd_q, 20_001)
    log_q = -0.5 * ((z - mu_q) / sd_q) ** 2 - np.log(sd_q)  # The log(2 pi) terms cancel.
    log_p = -0.5 * ((z - mu_p) / sd_p) ** 2 - np.log(sd_p)
    per_dim.append(np.trapezoid(np.exp(log_q) / np.sqrt(2 * np.pi) * (log_q - log_p), z))
  return np.asarray(per_dim).reshape(len(mean_q), -1).sum(axis=1)


def test_gaussian_kl_matches_numerical_integration_and_is_zero_for_equal_gaussians():
  rng = np.random.default_rng(9)
  shape = (3, 2, 2, 2)  # A spatial latent, like the conditional VAE's.
  mean_q, mean_p = rng.normal(size=shape), rng.normal(size=shape)
  logvar_q, logvar_p = rng.normal(scale=0.7, size=shape), rng.normal(scale=0.7, size=shape)
  stats = [a.astype(np.float32) for a in (mean_q, logvar_q, mean_p, logvar_p)]
  kl = np.asarray(losses.gaussian_kl(*stats))
  assert kl.shape == (3,) and kl.dtype == np.float32
  np.testing.assert_allclose(kl, _numpy_gaussian_kl(*stats), rtol=1e-4)
  # q == p: exactly 0; a standard-normal p: the old closed form.
  np.testing.assert_allclose(losses.gaussian_kl(*stats[:2], *stats[:2]), 0.0, atol=1e-6)
  np.testing.assert_allclose(
    losses.gaussian_kl(*stats[:2], np.zeros(shape), np.zeros(shape)),
    losses.kl_divergence(*stats[:2]),
    rtol=1e-6,
  )
  # Extreme log-variances are clipped: the KL stays finite.
  huge = np.full(shape, 500.0, np.float32)
  assert np.all(np.isfinite(losses.gaussian_kl(stats[0], huge, stats[2], -huge)))


def test_kl_terms_find_every_latent_whatever_its_prefix():
  rng = np.random.default_rng(10)
  stat = lambda: rng.normal(size=(2, 2, 2, 3)).astype(np.float32)
  cvae = {k: stat() for k in ("post_mean", "post_logvar", "prior_mean", "prior_logvar")}
  plain = {"mean": stat(), "logvar": stat()}
  aux = {**cvae, **{f"refine_{k}": v for k, v in plain.items()}, "coarse": stat()}
  terms = losses.kl_terms(aux)
  assert set(terms) == {"kl", "refine_kl"}
  np.testing.assert_allclose(terms["kl"], losses.gaussian_kl(*(cvae[k] for k in cvae)), rtol=1e-6)
  np.testing.assert_allclose(terms["refine_kl"], losses.kl_divergence(*plain.values()), rtol=1e-6)
  # Evaluation: prior stats alone have no posterior to compare, so no term.
  assert losses.kl_terms({"prior_mean": stat(), "prior_logvar": stat()}) == {}
  # In compute_loss: `kl` is the sum over latents, each weighted by kl_weight.
  batch = _batch()
  base = losses.compute_loss(_config("mae"), batch["masked"], aux, batch)[0]
  loss, out = losses.compute_loss(_config("mae", kl_weight=0.01), batch["masked"], aux, batch)
  total = np.mean(terms["kl"] + terms["refine_kl"])
  np.testing.assert_allclose(out["kl"], total, rtol=1e-5)
  np.testing.assert_allclose(out["refine_kl"], np.mean(terms["refine_kl"]), rtol=1e-5)
  np.testing.assert_allclose(loss, base + 0.01 * total, rtol=1e-5)
