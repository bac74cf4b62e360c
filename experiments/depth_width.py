"""ResNet U-Net depth and width: the filter/kernel tables upstream tried, and a few more.

Upstream's (docs: ../shared/UPSTREAM.md): the article's final (64, 128, 128, 256, 256, 512)
with kernels (7, 7, 7, 3, 3, 3); kernels (7, 5, 5, 3, 3, 3); (16, 32, 64, 128, 256) with 3x3;
and the 8-level (256, 256, 128, 128, 64, 64, 32, 16) with 3x3. Added: half and double width,
all-3x3 kernels, and a shallower 4-level net.

python -m mask2face.experiments.run --grid=experiments/depth_width.py --root=/tmp/m2f/depth
python -m mask2face.experiments.report --root=/tmp/m2f/depth
"""

from mask2face.experiments import grid

BUDGET = grid.STANDARD_BUDGET

# (filters, kernels); a single int kernel means that kernel at every level.
SETTINGS = (
  # Upstream's.
  ((64, 128, 128, 256, 256, 512), (7, 7, 7, 3, 3, 3)),
  ((64, 128, 128, 256, 256, 512), (7, 5, 5, 3, 3, 3)),
  ((16, 32, 64, 128, 256), 3),
  ((256, 256, 128, 128, 64, 64, 32, 16), 3),
  # More.
  ((64, 128, 128, 256, 256, 512), 3),
  ((32, 64, 64, 128, 128, 256), (7, 7, 7, 3, 3, 3)),
  ((128, 256, 256, 512, 512, 1024), (7, 7, 7, 3, 3, 3)),
  ((64, 128, 256, 512), (7, 5, 3, 3)),
)

# runlocal trains at 64x64: each level halves the image, so deeper nets need a bigger one.
RUNLOCAL_SIZE = 64


def sweep(add):
  for filters, kernels in SETTINGS:
    if isinstance(kernels, int):
      kernels = (kernels,) * len(filters)
    overrides = {"model.filters": add.filters(filters), "model.kernels": kernels}
    if add.runlocal and 2 ** len(filters) > RUNLOCAL_SIZE:
      overrides["data.image_size"] = 2 ** len(filters)
    add(config="configs/resnet_unet.py", overrides=overrides, seeds=(0, 1, 2))
