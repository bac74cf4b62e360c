"""Settings shared by every mask2face configuration.

Each architecture config (`configs/<name>.py`) loads this file by path
(`common = config_files.sibling(__file__, "common")`, so configs load from any directory),
overrides a few fields and returns the result. The argument string after the config path
(`--config=configs/unet.py:runlocal`) is parsed by `parse_arg`; `runlocal` shrinks everything
so a run finishes in minutes on a CPU; `recipe=shared` trains with `RECIPES['shared']` instead
of the config's own optimizer, schedule, loss and checkpoint choice (the architectures grid).
"""

import os
import pathlib

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
  # 'tfds:lfw', 'tfds:celeb_a', or a folder of images (searched recursively). Several sources,
  # comma separated ('../shared/data/utkface,../shared/data/faces_color'), are each split on
  # their own and mixed in training batches by source_weights (mask2face/data/prepare.py).
  config.data.source = "tfds:lfw"
  # Training batches' share of each source, e.g. '3,1' ('' = in proportion to their sizes).
  config.data.source_weights = ""
  # For folders: a regex whose first group is the identity, or a preset ('maskdetect',
  # 'utkface'); '' means the parent folder name. Several sources: one for all, or one per
  # source, comma separated in the same order.
  config.data.identity_pattern = ""
  config.data.tfds_data_dir = ""  # '' = TFDS's default data dir.
  config.data.manual_dir = ""  # A folder holding a local archive (e.g. lfw.tgz) for TFDS.
  # '' = a cache file derived from the source, under ~/.cache; several sources: one per source.
  config.data.landmarks_cache = ""
  config.data.image_size = 256
  config.data.margin = 1.0 / 3.0  # Face box widened by this fraction on every side (upstream).
  config.data.level_eyes = False  # Rotate the crop so the eyes are horizontal.
  # auto | crop_then_paint | paint_then_crop. 'auto' paints at the lower resolution: on the
  # photo when the crop enlarges it, on the crop when it shrinks it (mask2face/data/pipeline.py).
  config.data.paint_order = "auto"
  # Mask families by name ('all', or a comma-separated list of names, see
  # mask2face.data.masks.FAMILY_NAMES) and optional weights in the same order.
  config.data.mask_families = "all"
  config.data.mask_weights = ""
  config.data.templates_dir = ""  # A MaskTheFace template folder ('' = procedural masks only).
  # Splits: identity-disjoint, deterministic by split_seed.
  config.data.split_seed = 0
  # Images; a value below 1 is a fraction of the source. A float, so overrides may be either.
  config.data.test_size = 1000.0
  config.data.val_fraction = 0.2
  # Augmentation, identical on both images of a pair (upstream's values).
  config.data.flip = True
  config.data.color_jitter = True
  config.data.hue = 0.05
  config.data.saturation = (0.2, 1.3)
  config.data.brightness = 0.1
  config.data.contrast = (0.2, 1.5)
  config.data.eval_seed = 0  # Evaluation masks: fixed per image, seeded by [eval_seed, key].
  # grain worker processes: -1 = one per core but one (at most 16), 0 = in the main process.
  config.data.worker_count = -1
  config.data.worker_buffer_size = 2
  # A cap on examples per split (of each source; 0 = all), for quick runs.
  config.data.max_examples = 0

  # --- Model: chosen by name from mask2face.models; `model` holds its keyword arguments. -----
  config.model_name = "resnet_unet"
  config.model = ml_collections.ConfigDict()
  # Compute dtype: 'auto' = bfloat16 on GPU/TPU, float32 on CPU (models.model_from_config);
  # parameters, BatchNorm statistics and the loss stay float32.
  config.model.dtype = "auto"

  # --- Loss (mask2face/losses.py). -----------------------------------------------------------
  config.loss = ml_collections.ConfigDict()
  config.loss.name = "ssim_l1"  # mae | mse | ssim | ssim_l1 | upstream_ssim_mse
  # ssim_l1 = ssim_weight * (1 - SSIM) + pixel_weight * MAE; upstream_ssim_mse uses MSE instead
  # (1.0 and 1.0 reproduce upstream's loss).
  config.loss.ssim_weight = 1.0
  config.loss.pixel_weight = 1.0
  # VAEs only (ignored where aux has no latent): KL(posterior || prior) of every latent
  # (losses.kl_terms). The KL is summed over latent dimensions while pixel losses are
  # per-pixel means, so useful weights are small (about 1e-4).
  config.loss.kl_weight = 0.0
  config.loss.coarse_weight = 0.0  # Deep supervision of aux['coarse'] (two-stage models).
  # Pixel weights inside / outside the binary mask (errors are scaled, not renormalised).
  config.loss.masked_weight = 1.0
  config.loss.unmasked_weight = 1.0

  # --- Optimizer. ----------------------------------------------------------------------------
  config.optimizer = "adam"  # adam | adamw | sgd
  config.learning_rate = 1e-4
  config.schedule = "constant"  # constant | warmup_cosine
  config.warmup_steps = 0
  config.weight_decay = 0.0
  config.grad_clip_norm = 0.0  # 0 = no clipping.
  config.batch_size = 12  # Global batch, over all devices and hosts.
  config.num_epochs = 20
  config.num_train_steps = -1  # -1 = derived from num_epochs.
  config.final_lr_fraction = 0.0  # warmup_cosine ends at learning_rate times this.

  # --- Evaluation, early stopping. ----------------------------------------------------------
  config.eval_every_steps = 1000  # -1 = once per epoch (upstream's Keras loop).
  config.eval_batch_size = 0  # 0 = batch_size.
  config.best_metric = "eval_loss"
  config.best_mode = "min"
  config.early_stopping_patience = 0  # Evaluations without improvement; 0 = off.
  config.identity_metric = True  # dlib face-descriptor similarity on the test split.
  # Completions drawn per masked face at evaluation (models.sampling): a stochastic model
  # (vae_unet) is scored by the best and the mean over them, plus their diversity. 1 = one
  # prediction, as for the deterministic models.
  config.num_samples = 1
  # Divergence guard (mask2face/divergence.py): a training loss above divergence_factor times
  # its first logged value (0 = unchecked), or an evaluation worse than the masked input, is a
  # warning in the log and in results.json; stop_on_divergence stops the run instead.
  config.divergence_factor = 10.0
  config.stop_on_divergence = False

  # --- Logging and checkpoints. ------------------------------------------------------------
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.max_checkpoints_to_keep = 3
  config.num_image_grid = 8  # Rows (masked | prediction | target) of each evaluation's PNG.
  # Weights to start from when the workdir has no checkpoint: a step folder of another run,
  # e.g. /runs/a/checkpoints/5000 ('' = fresh initialisation).
  config.init_checkpoint = ""
  # JAX's persistent compilation cache: a rerun loads compiled steps instead of compiling
  # ('' = off). Programs that compile faster than `compilation_cache_min_secs` are not stored.
  config.compilation_cache_dir = "~/.cache/mask2face/jax"
  config.compilation_cache_min_secs = 1.0

  # --- Distribution. -------------------------------------------------------------------------
  config.multihost = False  # Call jax.distributed.initialize() at start-up.
  return config


# Faces beside the checkout (see ../shared/data/README.md) for runlocal, the first present:
# UTKFace's colour crops, else the grayscale LFW subset. $MASK2FACE_SHARED_DATA overrides
# where that folder is, as for the tests and experiments.
SHARED_DATA = pathlib.Path(
  os.environ.get("MASK2FACE_SHARED_DATA")
  or pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
LOCAL_FACES = (SHARED_DATA / "utkface", SHARED_DATA / "lfw_gray")


# Training recipes that replace a config's own (`:recipe=NAME`), so that architectures are
# compared trained alike. 'shared' is the recipe tuned for the U-Nets (configs/unet.py,
# configs/resnet_unet.py), with the test checkpoint picked by masked PSNR rather than by each
# loss's own value. The architecture's own loss terms (kl_weight, coarse_weight) stay.
RECIPES = {
  "shared": {
    "optimizer": "adam",
    "learning_rate": 5e-4,
    "schedule": "warmup_cosine",
    "warmup_steps": 500,
    "final_lr_fraction": 0.0,
    "weight_decay": 0.0,
    "grad_clip_norm": 1.0,
    "loss.name": "ssim_l1",
    "loss.ssim_weight": 1.0,
    "loss.pixel_weight": 1.0,
    "loss.masked_weight": 1.0,
    "loss.unmasked_weight": 1.0,
    "best_metric": "eval_masked_psnr",
    "best_mode": "max",
    "early_stopping_patience": 0,
  },
}


def apply_recipe(config, name):
  """Sets the fields of `RECIPES[name]` (dotted keys reach into sections)."""
  if name not in RECIPES:
    raise ValueError(f"unknown recipe {name!r}; valid: {sorted(RECIPES)}")
  for key, value in RECIPES[name].items():
    section, _, field = key.rpartition(".")
    (config[section] if section else config)[field] = value
  return config


def finish(config, arg):
  """Applies the options of the config argument: `recipe=NAME`, then `runlocal`, `size=N`.

  Every architecture config ends with `return common.finish(config, arg)`.
  """
  args = parse_arg(arg)
  unknown = set(args) - {"runlocal", "size", "recipe"}
  if unknown:
    raise ValueError(
      f"unknown config argument(s) {sorted(unknown)}; valid: runlocal, size=N, recipe=NAME"
    )
  if "recipe" in args:
    # Before runlocal, which shortens the recipe's warm-up to fit its 100 steps.
    apply_recipe(config, args["recipe"])
  if args.get("runlocal"):
    apply_runlocal(config)
  if "size" in args:
    config.data.image_size = int(args["size"])
  return config


def apply_runlocal(config):
  """Shrinks a config so it trains in a couple of minutes on a 2-core CPU (colour faces)."""
  if config.data.source.startswith("tfds:"):
    # UTKFace's files lie in one folder, so each is its own identity with no pattern (as its
    # `utkface` preset says); leaving identity_pattern alone keeps `--config.data.source=DIR`
    # overrides of a runlocal config working for any folder.
    found = [folder for folder in LOCAL_FACES if folder.is_dir()]
    if found:
      config.data.source = str(found[0])
  # An eighth of the channels: a 6-level ResNet U-Net at 64x64 steps in about 0.1 s on a CPU.
  if "filters" in config.model:
    config.model.filters = tuple(max(4, f // 8) for f in config.model.filters)
  config.early_stopping_patience = 0
  config.warmup_steps = min(config.warmup_steps, 10)
  config.data.image_size = 64
  config.data.worker_count = 0
  config.data.test_size = 0.1  # A tenth of the (capped) source, identity-disjoint.
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
