"""Plain U-Net (upstream's baseline architecture, here with BatchNorm and resize-conv upsampling).

The reference of the small U-Net family: configs/encoder_decoder.py, refine_unet.py and
vae_unet.py start from this config and change only the model, so the architectures grid
compares them on the same data, widths and training recipe.

python -m mask2face.main --config=configs/unet.py --workdir=/tmp/mask2face/unet
python -m mask2face.main --config=configs/unet.py:runlocal --workdir=/tmp/m2f/unet_local
"""

from mask2face import config_files

common = config_files.sibling(__file__, "common")


def get_config(arg=None):
  config = common.get_config()
  config.name = "unet"

  # --- Model. -------------------------------------------------------------------------------
  config.model_name = "unet"
  config.model.filters = (32, 64, 128, 256, 512)
  config.model.kernels = 3
  config.model.norm = "batch"
  config.model.upsample = "resize_conv"  # Or 'transpose' (experiments/upsampling.py).

  # --- Optimizer. ---------------------------------------------------------------------------
  config.batch_size = 16
  config.learning_rate = 5e-4
  config.schedule = "warmup_cosine"
  config.warmup_steps = 500
  config.grad_clip_norm = 1.0
  return common.finish(config, arg)
