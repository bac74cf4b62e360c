"""ResNet U-Net, improved variant (BatchNorm, resize-conv upsampling): the main model.

python -m mask2face.main --config=configs/resnet_unet.py --workdir=/tmp/mask2face/resnet_unet
# A couple of minutes on a CPU, from ../shared/data/lfw_gray:
python -m mask2face.main --config=configs/resnet_unet.py:runlocal --workdir=/tmp/m2f/local
"""

from mask2face import config_files

common = config_files.sibling(__file__, "common")


def get_config(arg=None):
  config = common.get_config()
  config.name = "resnet_unet"

  # --- Model: upstream's widths and kernels; BatchNorm lets it train at a higher rate. -------
  config.model_name = "resnet_unet"
  config.model.variant = "improved"
  config.model.filters = (64, 128, 128, 256, 256, 512)
  config.model.kernels = (7, 7, 7, 3, 3, 3)
  config.model.norm = "batch"
  config.model.upsample = "resize_conv"

  # --- Optimizer: a 16-example batch divides over 1, 2, 4, 8 or 16 devices. -----------------
  config.batch_size = 16
  config.learning_rate = 5e-4
  config.schedule = "warmup_cosine"
  config.warmup_steps = 500
  config.grad_clip_norm = 1.0
  config.early_stopping_patience = 5
  return common.finish(config, arg)
