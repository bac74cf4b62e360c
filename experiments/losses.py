"""The training losses on the main model (`resnet_unet`), at one budget.

mae, mse, ssim, ssim_l1 (a true SSIM + L1) and upstream_ssim_mse (what upstream's
"ssim_l1_loss" computed: (1 - SSIM) + MSE).

python -m mask2face.experiments.run --grid=experiments/losses.py --root=/tmp/m2f/losses
python -m mask2face.experiments.report --root=/tmp/m2f/losses
"""

from mask2face.experiments import grid

BUDGET = {
  **grid.STANDARD_BUDGET,
  # Every run picks its test checkpoint by the same yardstick, not by its own loss.
  "best_metric": "eval_masked_psnr",
  "best_mode": "max",
}

LOSSES = ("mae", "mse", "ssim", "ssim_l1", "upstream_ssim_mse")


def sweep(add):
  for loss in LOSSES:
    add(config="configs/resnet_unet.py", overrides={"loss.name": loss}, seeds=(0, 1, 2))
