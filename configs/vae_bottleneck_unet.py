"""U-Net with a variational bottleneck, standard-normal prior, not conditional.

The model `vae_unet` was until the conditional VAE took that name (docs/results.md's
`vae_unet` rows were measured with it): configs/unet.py with the model swapped, the latent
regularised towards N(0, I), its mean decoded at evaluation.

python -m mask2face.main --config=configs/vae_bottleneck_unet.py --workdir=/tmp/m2f/vae_bottleneck
python -m mask2face.main --config=configs/vae_bottleneck_unet.py:runlocal --workdir=/tmp/m2f/vaeb
"""

from mask2face import config_files

common = config_files.sibling(__file__, "common")
unet = config_files.sibling(__file__, "unet")


def get_config(arg=None):
  config = unet.get_config()
  config.name = "vae_bottleneck_unet"

  # --- Model: unet's filters, kernels, norm and upsample, plus the latent. ------------------
  config.model_name = "vae_bottleneck_unet"
  config.model.latent_channels = 64
  config.model.dropped_skips = 2  # Top skips removed so the latent is used.

  # --- Loss: KL(q || N(0, I)) is summed over latent dimensions, so its weight is small. -----
  config.loss.kl_weight = 1e-4
  return common.finish(config, arg)
