"""A conditional VAE for completion: many plausible faces under one mask.

The masked image alone does not determine the face under the mask, so the model learns a
distribution of completions, as a conditional VAE (Sohn et al., 2015) and Pluralistic Image
Completion (Zheng et al., 2019) do:

- prior p(z | masked): a Gaussian head on the masked image's bottleneck features;
- posterior q(z | clean, masked): a light encoder of the clean image (one stride-2 conv per
  level), joined with the same bottleneck features, then a Gaussian head;
- decoder: conv(concat(z, bottleneck features)), then a U-Net decoder with the encoder's skips.

Training (`train=True` with `target`, the clean image, as the trainer passes it): z ~ q, and
`aux` holds `post_mean`, `post_logvar`, `prior_mean`, `prior_logvar` for the KL(q || p) term
(losses.py, config.loss.kl_weight). Evaluation and prediction (no `target`): z ~ p, drawn
from the rng stream `latent`, so one key gives one completion and different keys give
different ones (models/sampling.py); without a `latent` rng (predict.py, export.py) z is the
prior mean, one deterministic completion. `aux` then holds the prior's stats only. The
posterior is used only in training; a `target` given at evaluation is ignored.

With every skip a U-Net can route the visible face around the latent and the latent then
carries nothing. `dropped_skips` removes the highest-resolution skips (the top levels), so the
missing face must be described by the latent; `dropped_skips=len(filters)` decodes from the
latent and the bottleneck features alone.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mask2face.models import layers


class GaussianHead(nn.Module):
  """conv + norm + act, then 1x1 convs to a diagonal Gaussian's mean and clipped logvar."""

  features: int
  kernel: int
  latent_channels: int
  blocks: layers.Blocks

  @nn.compact
  def __call__(self, h: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    h = self.blocks.conv(self.features, self.kernel)(h, train)
    # In float32: exp(logvar) and the KL are sensitive to rounding.
    dense = dict(dtype=jnp.float32, param_dtype=layers.as_dtype(self.blocks.param_dtype))
    mean = nn.Conv(self.latent_channels, (1, 1), name="mean", **dense)(h)
    logvar = nn.Conv(self.latent_channels, (1, 1), name="logvar", **dense)(h)
    return mean, jnp.clip(logvar, *layers.LOGVAR_RANGE)


class PosteriorNet(nn.Module):
  """q(z | clean, masked): the clean image encoded down to the bottleneck, with the masked
  image's bottleneck features, to a Gaussian.

  One stride-2 conv per level (the masked encoder has two convs and a pool): the posterior
  only has to add what the masked features lack, and it is not run at inference.
  """

  filters: tuple[int, ...]
  kernels: tuple[int, ...]
  latent_channels: int
  blocks: layers.Blocks

  @nn.compact
  def __call__(
    self, clean: jax.Array, masked_features: jax.Array, train: bool
  ) -> tuple[jax.Array, jax.Array]:
    g = clean
    for f, k in zip(self.filters, self.kernels):
      g = self.blocks.conv(f, k, strides=2)(g, train)
    g = jnp.concatenate([g, masked_features], -1)
    return GaussianHead(
      self.filters[-1], self.kernels[-1], self.latent_channels, self.blocks, name="head"
    )(g, train)


class VAEUNet(layers.ConvNet):
  """Conditional VAE U-Net; `apply(v, masked, train=True, target=clean, rngs={'latent': k})`.

  Returns `(pred, aux)`: aux holds `prior_mean`/`prior_logvar` [B, h, w, latent_channels]
  (float32), plus `post_mean`/`post_logvar` in training with a target. Fields as
  `layers.ConvNet` (norm='batch'), plus the latent's width and the number of dropped skips.
  """

  latent_channels: int = 64
  dropped_skips: int = 2

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False, *, target: jax.Array | None = None
  ) -> tuple[jax.Array, dict]:
    h, filters, kernels, out_channels, b = self._prepare(x, "vae_unet")
    if not 0 <= self.dropped_skips <= len(filters):
      raise ValueError(f"vae_unet: dropped_skips={self.dropped_skips} not in [0, {len(filters)}]")
    # The target is what the model predicts: the output's shape (refine_unet's second stage
    # sees 6 input channels and predicts 3).
    target_shape = (*x.shape[:-1], out_channels)
    if target is not None and tuple(target.shape) != target_shape:
      raise ValueError(f"vae_unet: target shape {target.shape}, expected {target_shape}")

    h, skips = b.double_conv_down(h, filters, kernels, train)
    h = b.conv(filters[-1], kernels[-1])(h, train)  # The masked image's bottleneck features.

    # Named submodules: whether the posterior runs must not shift the automatic names.
    head = dict(features=filters[-1], kernel=kernels[-1], latent_channels=self.latent_channels)
    mean, logvar = GaussianHead(**head, blocks=b, name="prior")(h, train)
    aux = {"prior_mean": mean, "prior_logvar": logvar}
    use_posterior = train and target is not None
    if use_posterior or self.is_initializing():
      # Init (usually without a target) must still create the posterior's variables.
      clean = jnp.zeros(target_shape, h.dtype) if target is None else target
      posterior = PosteriorNet(filters, kernels, self.latent_channels, b, name="posterior")
      post = posterior(clean.astype(h.dtype), h, train)
      if use_posterior:
        mean, logvar = post
        aux.update(post_mean=mean, post_logvar=logvar)

    # Training always samples (a missing `latent` rng is an error); evaluation samples when
    # given a `latent` rng and otherwise decodes the prior mean.
    if train or self.has_rng("latent"):
      eps = jax.random.normal(self.make_rng("latent"), mean.shape, jnp.float32)
      z = mean + jnp.exp(0.5 * logvar) * eps
    else:
      z = mean
    h = b.conv(filters[-1], kernels[-1])(jnp.concatenate([z.astype(h.dtype), h], -1), train)

    h = b.double_conv_up(h, skips, filters, kernels, train, dropped_skips=self.dropped_skips)

    h = b.conv(max(filters[0] // 2, 1), 3)(h, train)
    return b.head(h, out_channels), aux
