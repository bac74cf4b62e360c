"""Every architecture, and the upstream port, at one equal budget (steps, batch, size, data).

python -m mask2face.experiments.run --grid=experiments/architectures.py --root=/tmp/m2f/arch
python -m mask2face.experiments.report --root=/tmp/m2f/arch
# Minutes on a CPU (runlocal configs on ../shared/data/lfw_gray):
python -m mask2face.experiments.run --grid=experiments/architectures.py \
  --root=/tmp/m2f/arch_local --runlocal
"""

# Shared by every point; --runlocal drops it (runlocal gives every config one small budget).
# Learning rates and schedules stay each config's own: part of what makes the architecture.
BUDGET = {
  "data.source": "tfds:lfw",
  "data.image_size": 256,
  "batch_size": 16,
  "num_train_steps": 20_000,
  "eval_every_steps": 1000,
  "checkpoint_every_steps": 1000,
  # Early stopping would give the architectures different numbers of steps.
  "early_stopping_patience": 0,
}

CONFIGS = (
  "encoder_decoder",
  "unet",
  "resnet_unet",
  "refine_unet",
  "vae_unet",
  "upstream_resnet_unet",
)


def sweep(add):
  for name in CONFIGS:
    add(config=f"configs/{name}.py", seeds=(0, 1, 2))
