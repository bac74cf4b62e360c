"""U-Net with a variational bottleneck (and its deepest skips dropped so the latent is used).

python -m mask2face.main --config=configs/vae_unet.py --workdir=/tmp/mask2face/vae_unet
python -m mask2face.main --config=configs/vae_unet.py:runlocal --workdir=/tmp/m2f/vae
"""

from configs import common


def get_config(arg=None):
  config = common.get_config()
  config.name = "vae_unet"

  # --- Model. -------------------------------------------------------------------------------
  config.model_name = "vae_unet"
  config.model.filters = (32, 64, 128, 256, 512)
  config.model.kernels = 3
  config.model.latent_channels = 64
  config.model.dropped_skips = 2
  config.model.norm = "batch"

  # --- Loss: the KL term is summed over latent dimensions, so its weight is small. ----------
  config.loss.kl_weight = 1e-4

  # --- Optimizer. ---------------------------------------------------------------------------
  config.batch_size = 16
  config.learning_rate = 5e-4
  config.schedule = "warmup_cosine"
  config.warmup_steps = 500
  config.grad_clip_norm = 1.0
  return common.finish(config, arg)
