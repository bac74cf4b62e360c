"""A U-Net with a variational bottleneck, standard-normal prior, not conditional.

Registered as `vae_bottleneck_unet`; it was `vae_unet` until the conditional VAE
(mask2face/models/vae_unet.py) took that name, and docs/results.md's `vae_unet` rows were
measured with it. Its latent comes from the masked image alone, with a N(0, I) prior, so it
carries nothing about the hidden face beyond what the masked image gives: it is a regularised
U-Net (an information bottleneck), not a generative model of completions.

Encoder per level i: two conv(filters[i]) + norm + act (the output is the level's skip), then a
2x2 max-pool. At the bottom, 1x1 convs give a `mean` and a `logvar` map (latent_channels
wide, float32); training draws z = mean + exp(logvar / 2) * eps with eps from the rng stream
`latent`, evaluation uses z = mean, so eval is deterministic. The decoder mirrors a U-Net.

With every skip a U-Net can route everything around the bottleneck and the latent carries
nothing (the KL term then drives it to the prior for free). `dropped_skips` removes the
highest-resolution skips (the top levels) so the missing face must be described by the
latent; `dropped_skips=len(filters)` decodes from the latent alone. `aux` holds `mean` and
`logvar` for the KL term against N(0, I) (config.loss.kl_weight). `target` is ignored.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mask2face.models import layers


class VAEBottleneckUNet(layers.ConvNet):
  """U-Net with a sampled bottleneck; `apply(..., train=True, rngs={'latent': key})`.

  Returns `(pred, {'mean': [B, h, w, C], 'logvar': [B, h, w, C]})` (float32). Fields as
  `layers.ConvNet` (norm='batch'), plus the latent's width and the number of dropped skips.
  """

  latent_channels: int = 64
  dropped_skips: int = 2

  @nn.compact
  def __call__(
    self, x: jax.Array, train: bool = False, *, target: jax.Array | None = None
  ) -> tuple[jax.Array, dict]:
    del target  # Not conditioned on the clean image: the prior is N(0, I).
    h, filters, kernels, out_channels, b = self._prepare(x, "vae_bottleneck_unet")
    if not 0 <= self.dropped_skips <= len(filters):
      raise ValueError(
        f"vae_bottleneck_unet: dropped_skips={self.dropped_skips} not in [0, {len(filters)}]"
      )

    h, skips = b.double_conv_down(h, filters, kernels, train)

    h = b.conv(filters[-1], kernels[-1])(h, train)
    # The posterior is computed in float32: exp(logvar) and the KL are sensitive to rounding.
    dense = dict(dtype=jnp.float32, param_dtype=layers.as_dtype(self.param_dtype))
    mean = nn.Conv(self.latent_channels, (1, 1), name="mean", **dense)(h)
    logvar = jnp.clip(
      nn.Conv(self.latent_channels, (1, 1), name="logvar", **dense)(h), *layers.LOGVAR_RANGE
    )
    if train:
      eps = jax.random.normal(self.make_rng("latent"), mean.shape, jnp.float32)
      z = mean + jnp.exp(0.5 * logvar) * eps
    else:
      z = mean
    h = b.conv(filters[-1], kernels[-1])(z.astype(layers.as_dtype(self.dtype)), train)

    h = b.double_conv_up(h, skips, filters, kernels, train, dropped_skips=self.dropped_skips)

    h = b.conv(max(filters[0] // 2, 1), 3)(h, train)
    return b.head(h, out_channels), {"mean": mean, "logvar": logvar}
