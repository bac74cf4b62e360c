"""Two-stage coarse-then-refine U-Net with deep supervision of the coarse output.

configs/unet.py's model used twice (both stages share its widths, norm and upsampling) and its
training recipe.

python -m mask2face.main --config=configs/refine_unet.py --workdir=/tmp/mask2face/refine_unet
python -m mask2face.main --config=configs/refine_unet.py:runlocal --workdir=/tmp/m2f/refine
"""

from mask2face import config_files

common = config_files.sibling(__file__, "common")
unet = config_files.sibling(__file__, "unet")


def get_config(arg=None):
  config = unet.get_config()
  config.name = "refine_unet"

  # --- Model: unet's settings, for both stages. ---------------------------------------------
  config.model_name = "refine_unet"
  config.model.coarse_model = "unet"
  config.model.refine_model = "unet"

  # --- Loss: the coarse stage is supervised too (aux['coarse']). -----------------------------
  config.loss.coarse_weight = 0.5
  return common.finish(config, arg)
