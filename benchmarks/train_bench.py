"""Training throughput per architecture: img/s end to end, step time, compile time, FLOP/s.

  python benchmarks/train_bench.py --archs=resnet_unet,unet --size=64 --batch=8 --steps=20

For each architecture (its `configs/<name>.py:runlocal` config, resized by the flags):
- e2e img/s and ms/step: the real grain input pipeline feeding the data-parallel train step;
- compute ms/step: the same step on one batch already on the device (no input);
- input wait: the share of the e2e loop the host spent blocked on the next batch;
- compile s, cold and cached: lowering + compiling the train step in a fresh process with an
  empty persistent compilation cache, then in a second process reading that cache;
- GFLOP/step (per device) and achieved GFLOP/s (all devices) from XLA's cost analysis.
"""

import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
# Run as a script (sys.path[0] is benchmarks/): this checkout's mask2face, installed or not.
sys.path.insert(0, str(REPO))

FLAGS = flags.FLAGS
flags.DEFINE_list(
  "archs",
  ["resnet_unet", "unet", "encoder_decoder", "refine_unet", "vae_unet"],
  "Configs (configs/<name>.py) to measure.",
)
flags.DEFINE_integer("size", 64, "Image size.")
flags.DEFINE_integer("batch", 8, "Global batch size.")
flags.DEFINE_integer("steps", 20, "Timed steps (after 2 warm-up steps).")
flags.DEFINE_bool("runlocal", True, "Use the runlocal (shrunk) model widths.")
flags.DEFINE_string("source", "", "Face source ('' = the config's, runlocal: ../shared/data).")
flags.DEFINE_string("landmarks_cache", "", "Landmark cache ('' = the pipeline's default).")
flags.DEFINE_string("dtype", "float32", "Compute dtype: float32 or bfloat16.")
flags.DEFINE_bool("compile_times", True, "Measure cold/cached compile times (2 subprocesses).")
flags.DEFINE_string("json_out", "", "Also write the rows here.")
flags.DEFINE_string("_probe", "", "Internal: measure compile time of this arch and exit.")
flags.DEFINE_string("_cache_dir", "", "Internal: the probe's persistent compilation cache.")


def load_config(name):
  """`configs/<name>.py` (`:runlocal` under --runlocal), resized by the flags."""
  from mask2face import config_files

  arg = ":runlocal" if FLAGS.runlocal else ""
  config = config_files.load(f"{REPO / 'configs' / name}.py{arg}")
  config.data.image_size = FLAGS.size
  config.batch_size = FLAGS.batch
  config.model.dtype = FLAGS.dtype
  if FLAGS.source:
    config.data.source = FLAGS.source
  if FLAGS.landmarks_cache:
    config.data.landmarks_cache = FLAGS.landmarks_cache
  return config


def build(config):
  """Model, optimizer, state, jitted step and a synthetic batch, on every device."""
  import jax
  import numpy as np

  from mask2face import losses, models, parallel, train

  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  model = models.model_from_config(config)
  tx, _ = train.create_optimizer(config, 1000)
  size = config.data.image_size
  state = train.create_train_state(model, tx, jax.random.PRNGKey(0), (1, size, size, 3), mesh)
  step = train.make_train_step(model, tx, functools.partial(losses.compute_loss, config.loss), mesh)
  rng = np.random.default_rng(0)
  b = config.batch_size
  batch = {
    "masked": rng.uniform(size=(b, size, size, 3)).astype(np.float32),
    "clean": rng.uniform(size=(b, size, size, 3)).astype(np.float32),
    "mask": (rng.uniform(size=(b, size, size, 1)) > 0.5).astype(np.float32),
    "family": np.zeros(b, np.int32),
    "valid": np.ones(b, np.float32),
  }
  return mesh, state, step, parallel.shard_batch(batch, mesh)


def probe_compile(name, cache_dir):
  """Runs in a subprocess: seconds to lower and compile the train step."""
  from mask2face import main

  main.setup_compilation_cache(cache_dir, min_compile_secs=0.0)
  config = load_config(name)
  _, state, step, batch = build(config)
  t0 = time.perf_counter()
  step.lower(state, batch).compile()
  print("PROBE " + json.dumps({"compile_secs": time.perf_counter() - t0}))


def compile_times(name):
  with tempfile.TemporaryDirectory() as cache_dir:
    out = []
    for _ in range(2):  # Cold (empty cache), then warm (the cache the first one wrote).
      argv = [
        sys.executable,
        __file__,
        f"--_probe={name}",
        f"--size={FLAGS.size}",
        f"--batch={FLAGS.batch}",
        f"--runlocal={FLAGS.runlocal}",
        f"--dtype={FLAGS.dtype}",
      ]
      proc = subprocess.run(
        argv + [f"--_cache_dir={cache_dir}"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=1800,
      )
      lines = [x for x in proc.stdout.splitlines() if x.startswith("PROBE ")]
      if proc.returncode or not lines:
        raise RuntimeError(f"compile probe for {name} failed:\n{proc.stderr[-3000:]}")
      out.append(json.loads(lines[-1][6:])["compile_secs"])
    return out


def measure(name):
  import jax
  import numpy as np

  from mask2face import parallel, train
  from mask2face.data import pipeline

  config = load_config(name)
  mesh, state, step, device_batch = build(config)
  compiled = step.lower(state, device_batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

  # Compute only: the step on a batch already on the device.
  for _ in range(2):
    state, metrics = step(state, device_batch)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = step(state, device_batch)
  jax.block_until_ready(state)
  compute = (time.perf_counter() - t0) / FLAGS.steps

  # End to end: the grain pipeline feeding the step.
  prepared = pipeline.prepare_data(config.data)
  it = iter(pipeline.train_loader(prepared, config.data, batch_size=config.batch_size, seed=0))
  for _ in range(2):
    state, metrics = step(state, parallel.shard_batch(next(it), mesh))
  jax.block_until_ready(state)
  waited = 0.0
  t0 = time.perf_counter()
  for _ in range(FLAGS.steps):
    t_in = time.perf_counter()
    batch = next(it)
    waited += time.perf_counter() - t_in
    state, metrics = step(state, parallel.shard_batch(batch, mesh))
  jax.block_until_ready(state)
  e2e = (time.perf_counter() - t0) / FLAGS.steps
  assert np.isfinite(float(metrics["train_loss"]))

  row = {
    "arch": name,
    "params": train.count_params(state.params),
    "img_per_sec": config.batch_size / e2e,
    "e2e_ms": 1000 * e2e,
    "compute_ms": 1000 * compute,
    "input_wait": waited / (e2e * FLAGS.steps),
    # cost_analysis describes the per-device program; all devices together achieve n times it.
    "gflop_step": flops / 1e9,
    "gflops": flops * jax.device_count() / 1e9 / compute,
  }
  if FLAGS.compile_times:
    row["compile_cold_s"], row["compile_cached_s"] = compile_times(name)
  return row


def main(argv):
  del argv
  if FLAGS._probe:
    probe_compile(FLAGS._probe, FLAGS._cache_dir)
    return
  import jax

  rows = [measure(name) for name in FLAGS.archs]
  device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  print(
    f"\nTraining benchmark: {FLAGS.size}x{FLAGS.size}, batch {FLAGS.batch}, {FLAGS.dtype}, "
    f"{'runlocal widths' if FLAGS.runlocal else 'full widths'}, {device}"
  )
  cols = [
    "arch",
    "params",
    "img_per_sec",
    "e2e_ms",
    "compute_ms",
    "input_wait",
    "gflop_step",
    "gflops",
    "compile_cold_s",
    "compile_cached_s",
  ]
  print(" | ".join(f"{c:>14}" for c in cols))
  for row in rows:
    cells = []
    for c in cols:
      v = row.get(c, "")
      cells.append(f"{v:>14.3f}" if isinstance(v, float) else f"{v!s:>14}")
    print(" | ".join(cells))
  if FLAGS.json_out:
    pathlib.Path(FLAGS.json_out).write_text(json.dumps({"device": device, "rows": rows}, indent=2))


if __name__ == "__main__":
  app.run(main)
