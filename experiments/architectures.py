"""Every architecture, and the upstream port, at one equal budget (steps, batch, size, data).

python -m mask2face.experiments.run --grid=experiments/architectures.py --root=/tmp/m2f/arch
python -m mask2face.experiments.report --root=/tmp/m2f/arch
# Minutes on a CPU (runlocal configs on ../shared/data/lfw_gray):
python -m mask2face.experiments.run --grid=experiments/architectures.py \
  --root=/tmp/m2f/arch_local --runlocal
"""

from mask2face.experiments import grid

# Shared by every point; --runlocal drops it (runlocal gives every config one small budget).
BUDGET = grid.STANDARD_BUDGET

CONFIGS = (
  "encoder_decoder",
  "unet",
  "resnet_unet",
  "refine_unet",
  "vae_unet",
  "vae_bottleneck_unet",
  "upstream_resnet_unet",
)


def sweep(add):
  for name in CONFIGS:
    add(config=f"configs/{name}.py", seeds=(0, 1, 2))
