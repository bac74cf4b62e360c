"""Conditional VAE U-Net: many plausible faces under one mask (mask2face/models/vae_unet.py).

configs/unet.py with the model swapped (same widths, norm, upsampling and training recipe).
Training encodes the clean face into the posterior q(z | clean, masked) and pulls it towards
the learned prior p(z | masked); evaluation samples the prior, `num_samples` times.

python -m mask2face.main --config=configs/vae_unet.py --workdir=/tmp/mask2face/vae_unet
python -m mask2face.main --config=configs/vae_unet.py:runlocal --workdir=/tmp/m2f/vae
"""

from mask2face import config_files

common = config_files.sibling(__file__, "common")
unet = config_files.sibling(__file__, "unet")


def get_config(arg=None):
  config = unet.get_config()
  config.name = "vae_unet"

  # --- Model: unet's filters, kernels, norm and upsample, plus the latent. ------------------
  config.model_name = "vae_unet"
  config.model.latent_channels = 64  # Width of the latent map at the bottleneck resolution.
  # Top skips removed so the missing face must pass through the latent.
  config.model.dropped_skips = 2

  # --- Loss: KL(posterior || prior) is summed over latent dimensions, so its weight is small.
  config.loss.kl_weight = 1e-4

  # --- Evaluation: completions drawn per masked face (best-of-n, mean and diversity). -------
  config.num_samples = 5
  return common.finish(config, arg)
