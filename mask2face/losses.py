"""Training losses for mask2face, chosen by `config.loss.name`.

Every loss is computed per example, then averaged over the valid examples of the batch, so
padding (`batch['valid'] == 0`) contributes nothing. Pixel errors are weighted by
`masked_weight` under the face mask and `unmasked_weight` elsewhere; with both at 1 every
loss is exactly its textbook form. All arithmetic is float32, whatever the model's dtype.

Names (`config.loss.name`):
- `mae`, `mse`: mean absolute / squared error.
- `ssim`: 1 - mean SSIM (dm_pix, 11x11 Gaussian window, sigma 1.5, k1 0.01, k2 0.03).
- `ssim_l1`: ssim_weight * (1 - SSIM) + pixel_weight * MAE (what upstream documented).
- `upstream_ssim_mse`: ssim_weight * (1 - SSIM) + pixel_weight * MSE (what upstream's
  `ssim_l1_loss` actually computed).
Extra terms: `kl_weight` * the KL of every latent in aux (`kl_terms`): KL(q || p) between the
posterior and the learned prior of a conditional VAE (`post_mean`/`post_logvar`,
`prior_mean`/`prior_logvar`), or KL(q || N(0, I)) for a plain variational bottleneck
(`mean`/`logvar`), under any prefix (refine_unet's second stage: `refine_`); and
`coarse_weight` * the same pixel loss on aux['coarse'] (deep supervision of two-stage models).
"""

import functools
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from absl import logging

from mask2face import metrics
from mask2face.models.layers import LOGVAR_RANGE

LOSS_NAMES = ("mae", "mse", "ssim", "ssim_l1", "upstream_ssim_mse")


def _weight_map(mask, masked_weight: float, unmasked_weight: float):
  """Per-pixel weights [B, H, W, 1]: masked_weight under the mask, unmasked_weight elsewhere."""
  return masked_weight * mask + unmasked_weight * (1.0 - mask)


def _weighted_mean(values, weights):
  """Per-example mean over pixels and channels of values * weights, [B].

  A plain mean rather than a weight-normalised one: the weights scale errors (10 under the
  mask means masked errors cost 10 times more), and the loss does not jump with mask size.
  """
  return jnp.mean(values * weights, axis=(1, 2, 3))


def mae(pred, target, weights):
  """Per-example weighted mean absolute error, [B]."""
  return _weighted_mean(jnp.abs(pred - target), weights)


def mse(pred, target, weights):
  """Per-example weighted mean squared error, [B]."""
  return _weighted_mean(jnp.square(pred - target), weights)


def ssim_loss(pred, target, weights):
  """Per-example weighted mean of (1 - SSIM map), [B]; equals 1 - mean SSIM for unit weights.

  Weighting (1 - SSIM) rather than SSIM keeps the loss of a perfect prediction at 0 whatever
  the weights; weights are aligned with the map's window centres.
  """
  ssim = metrics.ssim_map(pred, target)
  return _weighted_mean(1.0 - ssim, metrics.crop_to_ssim_map(weights))


def gaussian_kl(mean_q, logvar_q, mean_p, logvar_p):
  """Per-example KL(q || p) of two diagonal Gaussians, summed over latent dimensions, [B].

  Closed form, per dimension: (logvar_p - logvar_q + (var_q + (mean_q - mean_p)^2) / var_p
  - 1) / 2. The sum is each example's KL (what the evidence bound has); averaging over the
  batch happens with the other terms. Float32, log-variances clipped to LOGVAR_RANGE (as the
  models clip them) so exp() stays finite.
  """
  as_f32 = lambda x: jnp.asarray(x, jnp.float32)
  mean_q, mean_p = as_f32(mean_q), as_f32(mean_p)
  logvar_q = jnp.clip(as_f32(logvar_q), *LOGVAR_RANGE)
  logvar_p = jnp.clip(as_f32(logvar_p), *LOGVAR_RANGE)
  ratio = (jnp.exp(logvar_q) + jnp.square(mean_q - mean_p)) * jnp.exp(-logvar_p)
  per_dim = 0.5 * (logvar_p - logvar_q + ratio - 1.0)
  return jnp.sum(per_dim.reshape(per_dim.shape[0], -1), axis=1)


def kl_divergence(mean, logvar):
  """Per-example KL(N(mean, exp(logvar)) || N(0, I)), summed over latent dimensions, [B]."""
  return gaussian_kl(mean, logvar, 0.0, 0.0)


def kl_terms(aux: Mapping[str, Any]) -> dict[str, Any]:
  """The per-example KL [B] of every latent in `aux`, keyed `{prefix}kl`.

  A latent is a conditional VAE's `{prefix}post_mean`, `{prefix}post_logvar`,
  `{prefix}prior_mean`, `{prefix}prior_logvar` (KL(q || p)), or a variational bottleneck's
  `{prefix}mean`, `{prefix}logvar` (KL(q || N(0, I))); prefix '' or ending in '_' (e.g.
  refine_unet's `refine_`). Prior stats alone (evaluation: no posterior) give no term.
  """
  terms = {}
  for key in sorted(aux):
    if not key.endswith("mean") or key.endswith("prior_mean"):
      continue
    conditional = key.endswith("post_mean")
    prefix = key.removesuffix("post_mean" if conditional else "mean")
    if prefix and not prefix.endswith("_"):
      continue
    if conditional:
      names = [prefix + n for n in ("post_logvar", "prior_mean", "prior_logvar")]
      if all(n in aux for n in names):
        terms[prefix + "kl"] = gaussian_kl(aux[key], *(aux[n] for n in names))
    elif prefix + "logvar" in aux:
      terms[prefix + "kl"] = kl_divergence(aux[key], aux[prefix + "logvar"])
  return terms


def _loss_weight(loss_config, loss_weights, key: str, default: float):
  """A weight from `loss_weights` (traced values, see mask2face.hparams) or the config."""
  if loss_weights is not None and key in loss_weights:
    return jnp.asarray(loss_weights[key], jnp.float32)
  return float(loss_config.get(key, default))


def pixel_loss(loss_config, pred, target, weights, *, loss_weights=None) -> dict[str, Any]:
  """The named pixel loss and its components, each per example [B]; key 'pixel' is the sum."""
  name = loss_config.name
  ssim_weight = _loss_weight(loss_config, loss_weights, "ssim_weight", 1.0)
  pixel_weight = _loss_weight(loss_config, loss_weights, "pixel_weight", 1.0)
  if name == "mae":
    terms = {"mae": mae(pred, target, weights)}
    terms["pixel"] = terms["mae"]
  elif name == "mse":
    terms = {"mse": mse(pred, target, weights)}
    terms["pixel"] = terms["mse"]
  elif name == "ssim":
    terms = {"ssim": ssim_loss(pred, target, weights)}
    terms["pixel"] = terms["ssim"]
  elif name == "ssim_l1":
    terms = {"ssim": ssim_loss(pred, target, weights), "mae": mae(pred, target, weights)}
    terms["pixel"] = ssim_weight * terms["ssim"] + pixel_weight * terms["mae"]
  elif name == "upstream_ssim_mse":
    terms = {"ssim": ssim_loss(pred, target, weights), "mse": mse(pred, target, weights)}
    terms["pixel"] = ssim_weight * terms["ssim"] + pixel_weight * terms["mse"]
  else:
    raise ValueError(f"unknown loss name {name!r}; valid names: {', '.join(LOSS_NAMES)}")
  return terms


def _batch_mean(per_example, valid):
  """Mean over valid examples; padding is excluded even if its values are NaN or inf."""
  per_example = jnp.where(valid > 0, per_example, 0.0)
  return jnp.sum(per_example * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def compute_loss(
  loss_config, pred, aux: Mapping[str, Any], batch: Mapping[str, Any], *, loss_weights=None
):
  """The training loss of one batch.

  Args:
    loss_config: `config.loss` (name, kl_weight, coarse_weight, masked_weight,
      unmasked_weight, optionally ssim_weight and pixel_weight).
    pred: [B, H, W, 3] model output in [0, 1], any float dtype.
    aux: the model's auxiliary outputs: optional `coarse` [B, H, W, 3], latents (`kl_terms`).
    batch: a data batch with `clean`, `mask` and optionally `valid` (all examples count
      when it is absent).
    loss_weights: optional arrays for the weights (`hparams.LOSS_WEIGHTS`), used instead of
      the config's numbers so a weight sweep does not recompile; the config still decides
      which terms exist (a zero `kl_weight` or `coarse_weight` leaves its term out).

  Returns:
    (loss, terms): the float32 scalar to minimise and a dict of float32 scalars: `loss`,
    `pixel` (the named pixel loss), its components (`mae`, `mse`, `ssim` = 1 - SSIM), and
    `kl` (unweighted, summed over every latent; per stage as `refine_kl` etc. too when a
    prefixed one is present) and `coarse` (unweighted) where they apply.
  """
  pred = jnp.asarray(pred, jnp.float32)
  target = jnp.asarray(batch["clean"], jnp.float32)
  if pred.shape != target.shape:
    raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
  mask = jnp.asarray(batch["mask"], jnp.float32)
  if mask.ndim == pred.ndim - 1:
    mask = mask[..., None]
  valid = batch.get("valid")
  valid = jnp.ones(pred.shape[:1], jnp.float32) if valid is None else valid
  valid = jnp.asarray(valid, jnp.float32)
  weight = functools.partial(_loss_weight, loss_config, loss_weights)
  weights = _weight_map(mask, weight("masked_weight", 1.0), weight("unmasked_weight", 1.0))

  per_example = pixel_loss(loss_config, pred, target, weights, loss_weights=loss_weights)
  total = per_example["pixel"]

  coarse_weight = float(loss_config.get("coarse_weight", 0.0))  # Static: is there a term?
  if coarse_weight and "coarse" in aux:
    coarse = jnp.asarray(aux["coarse"], jnp.float32)
    coarse_terms = pixel_loss(loss_config, coarse, target, weights, loss_weights=loss_weights)
    per_example["coarse"] = coarse_terms["pixel"]
    total = total + weight("coarse_weight", 0.0) * per_example["coarse"]
  elif coarse_weight:
    # Runs once per trace, not per step: a config asking for something the model lacks.
    logging.warning("loss.coarse_weight=%s but the model returns no aux['coarse'].", coarse_weight)

  kl_weight = float(loss_config.get("kl_weight", 0.0))
  kls = kl_terms(aux) if kl_weight else {}
  if kls:
    per_example.update({k: v for k, v in kls.items() if k != "kl"})
    per_example["kl"] = sum(kls.values())
    total = total + weight("kl_weight", 0.0) * per_example["kl"]

  per_example["loss"] = total
  terms = {name: _batch_mean(values, valid) for name, values in per_example.items()}
  return terms["loss"], terms
