"""The bundled model (mask2face/pretrained/): a half-width U-Net at 128x128 on colour faces.

Chosen for what a 2-core CPU can train well. Measured here (2026-12-02, the other core busy):
the full-width `unet` (32..512 filters, 14.1M parameters) at 128 px trains at 2.3 img/s, so
two CPU-hours would show it each face about twice; at half width (16..256, about a quarter of
the FLOPs) it sees each face several times in the same budget. On the two
colour sources mixed: UTKFace (8,706 aligned crops, every file its own identity) and the
Face-Mask-Detection crops (`faces_color`, identities from the `maskdetect` file names), each
split identity-disjoint on its own. Masks are painted with the leak-free shading. See
docs/model_card.md for the recipe, steps, metrics and limits.

First session, then every later one (resumes from the workdir's latest checkpoint):
python -m mask2face.main --config=configs/pretrained_unet.py --workdir=workdirs/pretrained_unet
A new workdir from the committed weights (a later session without the old workdir):
python -m mask2face.main --config=configs/pretrained_unet.py --workdir=workdirs/pretrained_unet2 \
  --config.init_checkpoint=bundled:unet_128
Pack the best weights into the package (16-bit, under 25 MB):
python -m mask2face.bundled --workdir=workdirs/pretrained_unet --name=unet_128
"""

from mask2face import config_files

common = config_files.sibling(__file__, "common")
unet = config_files.sibling(__file__, "unet")


def get_config(arg=None):
  config = unet.get_config()
  config.name = "pretrained_unet"

  # --- Data: both colour sources beside the checkout ($MASK2FACE_SHARED_DATA overrides). ---
  config.data.source = f"{common.SHARED_DATA / 'utkface'},{common.SHARED_DATA / 'faces_color'}"
  config.data.identity_pattern = "utkface,maskdetect"
  # UTKFace is aligned and even; faces_color is small and mixed: 3 of 4 pairs from UTKFace.
  config.data.source_weights = "3,1"
  config.data.image_size = 128
  config.data.test_size = 0.1
  config.data.worker_count = 1  # One core trains, one paints pairs.

  # --- Model: half unet's widths, BatchNorm, resize-conv upsampling. -----------------------
  config.model.filters = (16, 32, 64, 128, 256)
  config.model.dtype = "float32"

  # --- Loss: the face under the mask is what predict pastes back; weigh it up. ------------
  config.loss.masked_weight = 3.0

  # --- Optimizer: a cosine schedule one session can finish (about 2 CPU-hours); a later
  # session fine-tunes from the bundled weights with a schedule of its own. ------------------
  config.batch_size = 16
  config.learning_rate = 5e-4
  config.warmup_steps = 200
  config.num_train_steps = 4000  # 64k pairs, about 9 epochs of the 7,290 training faces.
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 250
  config.log_every_steps = 50
  config.best_metric = "eval_masked_psnr"
  config.best_mode = "max"
  config.identity_metric = False
  return common.finish(config, arg)
