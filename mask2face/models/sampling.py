"""Several completions per masked image, and how to score a set of them.

A conditional VAE (vae_unet) draws one completion per `latent` rng key; scoring only one
sample understates it (the truth is one of many plausible faces) and says nothing about how
varied its completions are. So an evaluation draws `config.num_samples` completions and
reports, per example, the best and the mean of a metric over them, and their diversity
(Zheng et al., 2019, Pluralistic Image Completion, report both). Deterministic models give
`num_samples` identical samples and a diversity of 0.

Everything here is jit-friendly (`num_samples` and the metric function are static) and takes
the per-example metric function as an argument (e.g. `mask2face.metrics.image_metrics`).
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp


def sample_predictions(model, variables, masked, rng: jax.Array, num_samples: int) -> jax.Array:
  """`num_samples` evaluation-mode predictions, one `latent` key each, [S, B, H, W, C].

  The model never sees a target here, so a conditional VAE samples its prior. vmap over the
  keys: the parts of the network that do not depend on the latent (the masked encoder) are
  computed once, not once per sample.
  """
  keys = jax.random.split(rng, num_samples)

  def one(key):
    pred, _ = model.apply(variables, masked, train=False, rngs={"latent": key})
    return pred

  return jax.vmap(one)(keys)


def per_sample_metrics(
  metric_fn: Callable[..., Mapping[str, Any]], samples, target, mask
) -> dict[str, jax.Array]:
  """`metric_fn(pred, target, mask) -> {name: [B]}` of every sample: {name: [S, B]}."""
  return dict(jax.vmap(lambda pred: dict(metric_fn(pred, target, mask)))(samples))


def best_of_n(values, *, higher_is_better: bool) -> jax.Array:
  """The best of the samples' values [S, B] per example, [B] (NaN-aware, like the metrics)."""
  return jnp.nanmax(values, axis=0) if higher_is_better else jnp.nanmin(values, axis=0)


def sample_mean(values) -> jax.Array:
  """The mean over samples [S, B] per example, [B]: what a single random sample scores."""
  return jnp.mean(values, axis=0)


def sample_diversity(samples, mask) -> jax.Array:
  """Mean pairwise L1 between the samples inside the mask, per example, [B].

  Args:
    samples: [S, B, H, W, C] predictions.
    mask: [B, H, W, 1] or [B, H, W], 1 under the face mask (thresholded at 0.5).

  Returns:
    float32 [B]: the mean over the S (S - 1) / 2 pairs of the mean absolute difference over
    masked pixels and channels; 0 for one sample, an empty mask, or identical samples.
  """
  samples = jnp.asarray(samples, jnp.float32)
  num = samples.shape[0]
  mask = jnp.asarray(mask, jnp.float32)
  if mask.ndim == samples.ndim - 2:
    mask = mask[..., None]
  mask = (mask > 0.5).astype(jnp.float32)
  if num < 2:
    return jnp.zeros(samples.shape[1], jnp.float32)
  # One pair at a time (S is small and static): an [S, S, B, H, W, C] difference would not
  # fit in memory at full size.
  total = 0.0
  for i in range(num):
    for j in range(i + 1, num):
      total = total + jnp.sum(jnp.abs(samples[i] - samples[j]) * mask, axis=(1, 2, 3))
  count = jnp.maximum(jnp.sum(mask, axis=(1, 2, 3)) * samples.shape[-1], 1.0)
  return total / (num * (num - 1) // 2) / count


def summarize_samples(
  metric_fn: Callable[..., Mapping[str, Any]],
  samples,
  target,
  mask,
  higher_is_better: Callable[[str], bool],
) -> dict[str, jax.Array]:
  """Per-example `{name}_best`, `{name}_mean` of every metric over the samples, and `diversity`.

  `higher_is_better(name)` says which way is best (e.g. True for psnr/ssim, False for l1).
  """
  values = per_sample_metrics(metric_fn, samples, target, mask)
  out = {}
  for name, v in values.items():
    out[f"{name}_best"] = best_of_n(v, higher_is_better=higher_is_better(name))
    out[f"{name}_mean"] = sample_mean(v)
  out["diversity"] = sample_diversity(samples, mask)
  return out


def sample_metrics(
  model, variables, batch, metric_fn, num_samples: int, *, rng: jax.Array
) -> dict[str, jax.Array]:
  """`summarize_samples` of `num_samples` completions of `batch["masked"]`, for evaluation.

  Returns {name: [B]} under `samples_S/`: `<metric>_best` and `<metric>_mean` for every metric
  of `metric_fn` (L1 errors are best low, PSNR and SSIM high) and `diversity`.
  """
  samples = sample_predictions(model, variables, batch["masked"], rng, num_samples)
  summary = summarize_samples(
    metric_fn,
    samples.astype(jnp.float32),
    batch["clean"],
    batch["mask"],
    higher_is_better=lambda name: not name.endswith("l1"),
  )
  return {f"samples_{num_samples}/{name}": v for name, v in summary.items()}
