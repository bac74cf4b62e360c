"""The article's run, reproduced: upstream Mask2Face's ResNet U-Net, trained as upstream did.

Faithful model (`variant='upstream'`: no normalization, transposed convs, 53,586,243
parameters), filters (64, 128, 128, 256, 256, 512), kernels (7, 7, 7, 3, 3, 3), 256x256,
batch 12, Adam at a constant 1e-4, 20 epochs, (1 - SSIM) + MSE ("ssim_l1_loss" upstream),
validation once per epoch and early stopping after 5 epochs without improvement.

  python -m mask2face.main --config=configs/upstream_resnet_unet.py --workdir=/tmp/m2f/upstream
"""

from mask2face import config_files

common = config_files.sibling(__file__, "common")


def get_config(arg=None):
  config = common.get_config()
  config.name = "upstream_resnet_unet"

  # --- Data: LFW at 256x256 with upstream's crop margin and augmentation (the defaults). -----
  config.data.source = "tfds:lfw"
  config.data.image_size = 256

  # --- Model. -------------------------------------------------------------------------------
  config.model_name = "resnet_unet"
  config.model.variant = "upstream"
  config.model.filters = (64, 128, 128, 256, 256, 512)
  config.model.kernels = (7, 7, 7, 3, 3, 3)

  # --- Loss. --------------------------------------------------------------------------------
  config.loss.name = "upstream_ssim_mse"

  # --- Optimizer and schedule. --------------------------------------------------------------
  config.optimizer = "adam"
  config.learning_rate = 1e-4
  config.schedule = "constant"
  config.warmup_steps = 0
  config.grad_clip_norm = 0.0
  config.batch_size = 12
  config.num_epochs = 20
  config.num_train_steps = -1

  # --- Evaluation: once per epoch, early stopping on the validation loss. ------------------
  config.eval_every_steps = -1
  config.checkpoint_every_steps = 1000
  config.best_metric = "eval_loss"
  config.best_mode = "min"
  config.early_stopping_patience = 5
  return common.finish(config, arg)
