"""TFLite size and CPU latency per image of exported mask2face models (vs. JAX on the same CPU).

  python benchmarks/export_bench.py --configs=configs/unet.py,configs/resnet_unet.py --runs=10
  python benchmarks/export_bench.py --checkpoint=WORKDIR

Weights are random unless --checkpoint is given: size and latency do not depend on their
values. Latency is the median over --runs single-image invocations after one warm-up.
"""

import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from mask2face import config_files, export, models

_CONFIGS = flags.DEFINE_list("configs", ["configs/unet.py"], "Config files (path[:arg]).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "", "A training workdir instead of --configs.")
_SIZE = flags.DEFINE_integer("size", 0, "Override config.data.image_size (0 = keep).")
_RUNS = flags.DEFINE_integer("runs", 10, "Timed single-image runs per model.")
_THREADS = flags.DEFINE_integer("threads", 2, "TFLite interpreter threads.")


def median_ms(fn, runs: int) -> float:
  fn()  # Warm-up (compilation, allocation).
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def bench(name: str, model, variables, size: int) -> dict:
  import tensorflow as tf

  fn = export.inference_fn(model, variables)
  x = np.random.default_rng(0).random((1, size, size, 3), dtype=np.float32)
  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    path = export.export_tflite(fn, size, pathlib.Path(tmp) / "model.tflite")
    convert_s = time.perf_counter() - start
    tflite_mb = path.stat().st_size / 1e6
    interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=_THREADS.value)
    interpreter.allocate_tensors()
    tflite_ms = median_ms(lambda: export.run_tflite(interpreter, x), _RUNS.value)
    err = float(np.abs(export.run_tflite(interpreter, x) - np.asarray(fn(x))).max())
  jitted = jax.jit(fn)
  jax_ms = median_ms(lambda: jitted(x).block_until_ready(), _RUNS.value)
  params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
  return {
    "model": name,
    "size": size,
    "params": params,
    "tflite_mb": tflite_mb,
    "convert_s": convert_s,
    "tflite_ms": tflite_ms,
    "jax_ms": jax_ms,
    "max_err": err,
  }


def main(argv):
  del argv
  jobs = []
  if _CHECKPOINT.value:
    model, variables, size = export.load_checkpoint(_CHECKPOINT.value)
    jobs.append((_CHECKPOINT.value, model, variables, _SIZE.value or size))
  else:
    for spec in _CONFIGS.value:
      config = config_files.load(spec)
      size = _SIZE.value or config.data.image_size
      model = models.model_from_config(config, axis_name=None)
      variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
      jobs.append((spec, model, variables, size))
  print(f"{jax.devices()[0].device_kind}, TFLite threads {_THREADS.value}, {_RUNS.value} runs")
  header = "model size params tflite_MB convert_s tflite_ms/img jax_ms/img max_err"
  print(header)
  for name, model, variables, size in jobs:
    r = bench(name, model, variables, size)
    print(
      f"{r['model']} {r['size']} {r['params']:,} {r['tflite_mb']:.1f} {r['convert_s']:.1f} "
      f"{r['tflite_ms']:.1f} {r['jax_ms']:.1f} {r['max_err']:.1e}",
      flush=True,
    )


if __name__ == "__main__":
  app.run(main)
