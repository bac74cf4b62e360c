"""Model-only speed per architecture: the training job's own step (train.py's builders: the
config's loss, optimizer, clipping, cross-device means) and inference, without the input
pipeline (train_bench.py has it), plus the FLOPs the sub-pixel resize-conv saves.

  python benchmarks/model_bench.py --size=64 --batch=8 --width_divisor=8       # a CPU
  python benchmarks/model_bench.py --size=256 --batch=64 --width_divisor=1     # a GPU

Each row is `configs/<name>.py` (its model, loss, optimizer and compute dtype: 'auto' is
bfloat16 on GPU/TPU) with every width divided by --width_divisor; `*-transpose` and
`*-resize_conv` rows compare the two upsampling choices on the same network. Steps run back
to back with one sync at the end of each timed run (as in training); figures are medians of
--repeats runs. Peak memory is the device's own counter where it has one, else XLA's plan.
The last table gives each --compare_upsample model's forward GFLOP per image at
--flops_size with the resize-conv computed by its definition (repeat, then convolve) and in
the sub-pixel form mask2face uses (layers.resize_conv). Prints Markdown tables.
"""

import pathlib
import statistics
import sys
import time
from unittest import mock

import jax
from absl import app, flags, logging

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import real_step  # noqa: E402

from mask2face import config_files, parallel, train  # noqa: E402
from mask2face.models import layers, model_from_config, summary  # noqa: E402

_CONFIGS = flags.DEFINE_list(
  "configs",
  ["encoder_decoder", "unet", "resnet_unet", "refine_unet", "vae_unet", "vae_bottleneck_unet"],
  "configs/<name>.py to measure.",
)
_SIZE = flags.DEFINE_integer("size", 64, "Image side (pixels).")
_BATCH = flags.DEFINE_integer("batch", 8, "Global batch size.")
_DTYPE = flags.DEFINE_string("dtype", "", "Compute dtype override ('' = the config's).")
_DIVISOR = flags.DEFINE_integer("width_divisor", 8, "Divide every width by this.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timed run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs (the median is reported).")
_UPSAMPLE = flags.DEFINE_list(
  "compare_upsample", ["unet", "resnet_unet"], "Configs measured with both upsample choices."
)
_FLOPS_SIZE = flags.DEFINE_integer("flops_size", 0, "Size of the FLOP table (0 = --size).")


def _config(name: str, **model):
  config = config_files.load(f"{REPO / 'configs' / name}.py", lock_config=False)
  config.data.image_size = _SIZE.value
  config.batch_size = _BATCH.value
  if "filters" in config.model:
    config.model.filters = tuple(max(1, f // _DIVISOR.value) for f in config.model.filters)
  if _DTYPE.value:
    config.model.dtype = _DTYPE.value
  config.model.update(model)
  return config


def _variants():
  rows = []
  for name in _CONFIGS.value:
    if name not in _UPSAMPLE.value:
      rows.append((name, _config(name)))
      continue
    # The same network twice, differing only in how the decoder upsamples.
    for up in ("transpose", "resize_conv"):
      rows.append((f"{name}-{up}", _config(name, upsample=up)))
  return rows


def bench(config) -> dict:
  """One config's train step and inference, timed."""
  built = real_step.build(config)
  batch = real_step.synthetic_batch(config.batch_size, config.data.image_size)
  batch = parallel.shard_batch(batch, built.mesh)
  start = time.perf_counter()
  compiled = built.step.lower(built.state, batch).compile()
  compile_s = time.perf_counter() - start
  state, train_s, _ = real_step.time_steps(
    compiled, built.state, batch, steps=_STEPS.value, repeats=_REPEATS.value
  )
  model = model_from_config(config, axis_name=None)
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  infer = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
  x = train.to_float(batch)["masked"]
  jax.block_until_ready(infer(variables, x))
  runs = []
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    for _ in range(_STEPS.value):
      out = infer(variables, x)
    jax.block_until_ready(out)
    runs.append((time.perf_counter() - start) / _STEPS.value)
  peak, source = real_step.peak_memory_bytes(compiled)
  return {
    "dtype": layers.resolve_dtype(config.model.get("dtype")).name,
    "params": train.count_params(state.params),
    "train_img_s": config.batch_size / train_s,
    "train_ms": 1e3 * train_s,
    "infer_img_s": config.batch_size / statistics.median(runs),
    "compile_s": compile_s,
    "gflop_step": real_step.flops_per_step(compiled) * jax.device_count() / 1e9,
    "peak_mib": peak / 2**20,
    "peak_source": source,
  }


def subpixel_flops(name: str, size: int) -> tuple[float, float]:
  """Forward GFLOP per image of config `name` (full widths), by definition and sub-pixel."""
  config = _config(name, upsample="resize_conv")
  config.model.filters = config_files.load(f"{REPO / 'configs' / name}.py").model.filters
  model = model_from_config(config, axis_name=None)
  shape = (1, size, size, 3)
  with mock.patch.object(layers, "resize_conv", layers.repeat_conv):
    by_definition = summary.forward_cost(model, shape)["flops"]
  return by_definition / 1e9, summary.forward_cost(model, shape)["flops"] / 1e9


def main(argv):
  del argv
  device = jax.devices()[0]
  rows = []
  for label, config in _variants():
    logging.info("benchmarking %s", label)
    rows.append((label, config.model.get("filters", ()), bench(config)))
  print(
    f"\n{device.platform} ({device.device_kind}), {_SIZE.value}x{_SIZE.value}, batch "
    f"{_BATCH.value}, widths / {_DIVISOR.value}, median of {_REPEATS.value} x {_STEPS.value}\n"
  )
  print(
    "| model | dtype | filters | params | train img/s | ms/step | infer img/s | compile s "
    "| GFLOP/step | peak MiB |"
  )
  print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
  for label, filters, r in rows:
    print(
      f"| {label} | {r['dtype']} | {','.join(map(str, filters))} | {r['params']:,} "
      f"| {r['train_img_s']:.1f} | {r['train_ms']:.1f} | {r['infer_img_s']:.1f} "
      f"| {r['compile_s']:.2f} | {r['gflop_step']:.2f} | {r['peak_mib']:.0f} ({r['peak_source']}) |"
    )
  size = _FLOPS_SIZE.value or _SIZE.value
  print(f"\n| model (full widths, {size}x{size}) | forward GFLOP/img, repeat + conv | sub-pixel |")
  print("|---|---:|---:|")
  for name in _UPSAMPLE.value:
    before, after = subpixel_flops(name, size)
    print(f"| {name} | {before:.1f} | {after:.1f} ({after / before:.0%}) |")


if __name__ == "__main__":
  app.run(main)
