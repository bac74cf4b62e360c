"""U-Net with a variational bottleneck (and its top skips dropped so the latent is used).

configs/unet.py with the model swapped (same widths, norm, upsampling and training recipe).

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
  config.model.latent_channels = 64
  config.model.dropped_skips = 2

  # --- Loss: the KL term is summed over latent dimensions, so its weight is small. ----------
  config.loss.kl_weight = 1e-4
  return common.finish(config, arg)
