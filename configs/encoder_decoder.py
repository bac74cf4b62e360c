"""Encoder-decoder without skip connections: how much do the U-Net skips matter?

configs/unet.py with the model swapped (same widths, norm, upsampling and training recipe).

python -m mask2face.main --config=configs/encoder_decoder.py --workdir=/tmp/mask2face/encdec
python -m mask2face.main --config=configs/encoder_decoder.py:runlocal --workdir=/tmp/m2f/ed
"""

from mask2face import config_files

common = config_files.sibling(__file__, "common")
unet = config_files.sibling(__file__, "unet")


def get_config(arg=None):
  config = unet.get_config()
  config.name = "encoder_decoder"

  # --- Model: unet's filters, kernels, norm and upsample. -----------------------------------
  config.model_name = "encoder_decoder"
  return common.finish(config, arg)
