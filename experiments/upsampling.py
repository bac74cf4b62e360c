"""Upsampling in the ResNet U-Net decoder: transposed convolutions against resize-conv.

Upstream used stride-2 transposed convolutions with odd kernels (7 and 3), which overlap
unevenly and can paint checkerboards; resize-conv (nearest 2x, then a conv) cannot.

python -m mask2face.experiments.run --grid=experiments/upsampling.py --root=/tmp/m2f/upsampling
python -m mask2face.experiments.report --root=/tmp/m2f/upsampling
"""

BUDGET = {
  "data.source": "tfds:lfw",
  "data.image_size": 256,
  "batch_size": 16,
  "num_train_steps": 20_000,
  "eval_every_steps": 1000,
  "checkpoint_every_steps": 1000,
  "early_stopping_patience": 0,
}


def sweep(add):
  for upsample in ("transpose", "resize_conv"):
    add(config="configs/resnet_unet.py", overrides={"model.upsample": upsample}, seeds=(0, 1, 2))
