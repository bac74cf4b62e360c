"""Every architecture, and the upstream port, trained alike: one recipe, one budget, 3 seeds.

Each config is loaded with `:recipe=shared` (configs/common.py RECIPES: Adam at 5e-4 with
warm-up and cosine decay, gradient clipping at 1, SSIM + L1, the test checkpoint picked by
validation masked PSNR), so the rows differ by architecture only. Each architecture's own
tuned recipe is `experiments/tuned_recipes.py`.

python -m mask2face.experiments.run --grid=experiments/architectures.py --root=/tmp/m2f/arch
python -m mask2face.experiments.report --root=/tmp/m2f/arch
# Minutes on a CPU (runlocal configs on ../shared/data, the same shared recipe):
python -m mask2face.experiments.run --grid=experiments/architectures.py \
  --root=/tmp/m2f/arch_local --runlocal
"""

from mask2face.experiments import grid

# Shared by every point; --runlocal drops it (runlocal gives every config one small budget).
BUDGET = grid.STANDARD_BUDGET
RECIPE = "shared"
SEEDS = (0, 1, 2)

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
    add(config=f"configs/{name}.py:recipe={RECIPE}", seeds=SEEDS)
