"""Two-stage coarse-then-refine U-Net with deep supervision of the coarse output.

python -m mask2face.main --config=configs/refine_unet.py --workdir=/tmp/mask2face/refine_unet
python -m mask2face.main --config=configs/refine_unet.py:runlocal --workdir=/tmp/m2f/refine
"""

from configs import common


def get_config(arg=None):
  config = common.get_config()
  config.name = "refine_unet"

  # --- Model: both stages share the width table. ---------------------------------------------
  config.model_name = "refine_unet"
  config.model.coarse_model = "unet"
  config.model.refine_model = "unet"
  config.model.filters = (32, 64, 128, 256, 512)
  config.model.kernels = 3
  config.model.norm = "batch"

  # --- Loss: the coarse stage is supervised too (aux['coarse']). -----------------------------
  config.loss.coarse_weight = 0.5

  # --- Optimizer. ---------------------------------------------------------------------------
  config.batch_size = 16
  config.learning_rate = 5e-4
  config.schedule = "warmup_cosine"
  config.warmup_steps = 500
  config.grad_clip_norm = 1.0
  return common.finish(config, arg)
