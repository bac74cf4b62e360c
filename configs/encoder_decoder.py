"""Encoder-decoder without skip connections: how much do the U-Net skips matter?

python -m mask2face.main --config=configs/encoder_decoder.py --workdir=/tmp/mask2face/encdec
python -m mask2face.main --config=configs/encoder_decoder.py:runlocal --workdir=/tmp/m2f/ed
"""

from configs import common


def get_config(arg=None):
  config = common.get_config()
  config.name = "encoder_decoder"

  # --- Model. -------------------------------------------------------------------------------
  config.model_name = "encoder_decoder"
  config.model.filters = (32, 64, 128, 256, 512)
  config.model.kernels = 3
  config.model.norm = "batch"

  # --- Optimizer. ---------------------------------------------------------------------------
  config.batch_size = 16
  config.learning_rate = 5e-4
  config.schedule = "warmup_cosine"
  config.warmup_steps = 500
  config.grad_clip_norm = 1.0
  return common.finish(config, arg)
