"""Upsampling in the decoders: transposed convolutions against resize-conv, per architecture.

Upstream used stride-2 transposed convolutions with odd kernels (7 and 3), which overlap
unevenly and can paint checkerboards; resize-conv (nearest 2x, then a conv) cannot. Every
architecture with the option is run both ways (the upstream port fixes 'transpose').

python -m mask2face.experiments.run --grid=experiments/upsampling.py --root=/tmp/m2f/upsampling
python -m mask2face.experiments.report --root=/tmp/m2f/upsampling
"""

from mask2face.experiments import grid

BUDGET = grid.STANDARD_BUDGET

# The main model first: its points are the grid's original ones (same names).
CONFIGS = (
  "resnet_unet",
  "unet",
  "encoder_decoder",
  "refine_unet",
  "vae_unet",
  "vae_bottleneck_unet",
)
UPSAMPLES = ("transpose", "resize_conv")


def sweep(add):
  for name in CONFIGS:
    for upsample in UPSAMPLES:
      add(config=f"configs/{name}.py", overrides={"model.upsample": upsample}, seeds=(0, 1, 2))
