"""Settings shared by every mask2face configuration.

Each architecture config (`configs/<name>.py`) imports this file, overrides a few fields and
returns the result. The argument string after the config path (`--config=configs/unet.py:runlocal`)
is parsed by `parse_arg`; `runlocal` shrinks everything so a run finishes in minutes on a CPU.
"""

import ml_collections


def parse_arg(arg):
  """Parses `"runlocal,size=64"` into `{'runlocal': True, 'size': '64'}`."""
  out = {}
  for part in (arg or "").split(","):
    part = part.strip()
    if not part:
      continue
    key, _, value = part.partition("=")
    out[key.strip()] = value.strip() if value else True
  return out


def get_config(arg=None):
  """Returns the shared defaults (an architecture config overrides the model section)."""
  config = ml_collections.ConfigDict()
  config.name = "common"
  config.seed = 0

  # --- Data: where faces come from, how pairs are made. -------------------------------------
  config.data = ml_collections.ConfigDict()
  # 'tfds:lfw', 'tfds:celeb_a', or a folder of images (searched recursively).
  config.data.source = "tfds:lfw"
  # For folders: a regex whose first group is the identity; '' means the parent folder name.
  config.data.identity_pattern = ""
  config.data.tfds_data_dir = ""  # '' = TFDS's default data dir.
  config.data.manual_dir = ""  # A folder holding a local archive (e.g. lfw.tgz) for TFDS.
  config.data.landmarks_cache = ""  # '' = a cache file derived from the source, under ~/.cache.
  config.data.image_size = 256
  config.data.margin = 1.0 / 3.0  # Face box widened by this fraction on every side (upstream).
  config.data.level_eyes = False  # Rotate the crop so the eyes are horizontal.
  # Mask families by name ('all', or a comma-separated list of names, see
  # mask2face.data.masks.FAMILY_NAMES) and optional weights in the same order.
  config.data.mask_families = "all"
  config.data.mask_weights = ""
  config.data.templates_dir = ""  # A MaskTheFace template folder ('' = procedural masks only).
  # Splits: identity-disjoint, deterministic by split_seed.
  config.data.split_seed = 0
  config.data.test_size = 1000  # Images; a value below 1 is a fraction of the source.
  config.data.val_fraction = 0.2
  # Augmentation, identical on both images of a pair (upstream's values).
  config.data.flip = True
  config.data.color_jitter = True
  config.data.hue = 0.05
  config.data.saturation = (0.2, 1.3)
  config.data.brightness = 0.1
  config.data.contrast = (0.2, 1.5)
  config.data.worker_count = 4
  config.data.worker_buffer_size = 2
  # A cap on examples per split (0 = all), for quick runs.
  config.data.max_examples = 0

  # --- Model: chosen by name from mask2face.models; `model` holds its keyword arguments. -----
  config.model_name = "resnet_unet"
  config.model = ml_collections.ConfigDict()
  config.model.dtype = "float32"  # Compute dtype; parameters stay float32.

  # --- Loss (mask2face/losses.py). -----------------------------------------------------------
  config.loss = ml_collections.ConfigDict()
  config.loss.name = "ssim_l1"  # mae | mse | ssim | ssim_l1 | upstream_ssim_mse
  config.loss.kl_weight = 0.0  # VAE only (ignored where aux has no mean/logvar).
  config.loss.coarse_weight = 0.0  # Deep supervision of aux['coarse'] (two-stage models).
  config.loss.masked_weight = 1.0  # Pixel weights inside / outside the binary mask.
  config.loss.unmasked_weight = 1.0

  # --- Optimizer. ----------------------------------------------------------------------------
  config.optimizer = "adam"  # adam | adamw
  config.learning_rate = 1e-4
  config.schedule = "constant"  # constant | warmup_cosine
  config.warmup_steps = 0
  config.weight_decay = 0.0
  config.grad_clip_norm = 0.0  # 0 = no clipping.
  config.batch_size = 12  # Global batch, over all devices and hosts.
  config.num_epochs = 20
  config.num_train_steps = -1  # -1 = derived from num_epochs.

  # --- Evaluation, early stopping. ----------------------------------------------------------
  config.eval_every_steps = 1000
  config.eval_batch_size = 0  # 0 = batch_size.
  config.best_metric = "eval_loss"
  config.best_mode = "min"
  config.early_stopping_patience = 0  # Evaluations without improvement; 0 = off.
  config.identity_metric = True  # dlib face-descriptor similarity on the test split.

  # --- Logging and checkpoints. ------------------------------------------------------------
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.max_checkpoints_to_keep = 3
  config.num_image_grid = 8

  # --- Distribution. -------------------------------------------------------------------------
  config.multihost = False  # Call jax.distributed.initialize() at start-up.
  return config


def apply_runlocal(config):
  """Shrinks a config so it trains in a couple of minutes on a 2-core CPU."""
  config.data.image_size = 64
  config.data.worker_count = 0
  config.data.test_size = 0.1
  config.data.max_examples = 256
  config.batch_size = 8
  config.num_epochs = 1
  config.num_train_steps = 100
  config.eval_every_steps = 50
  config.log_every_steps = 10
  config.checkpoint_every_steps = 50
  config.num_image_grid = 4
  config.identity_metric = False
  return config
