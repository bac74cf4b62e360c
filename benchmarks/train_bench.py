"""Training speed of the real job: train.py's own step at real defaults, and its input pipeline.

  python benchmarks/train_bench.py                      # 256², batch 64, configs' own dtypes
  python benchmarks/train_bench.py --configs=resnet_unet --runlocal --size=64 --batch=8 \
      --steps=5 --loader=config                         # a CPU, in minutes
  bash benchmarks/gpu_check.sh                          # the GPU check (one JSON file)

Per config (`configs/<name>.py` with its architecture's defaults: model, loss, optimizer,
compute dtype 'auto' = bfloat16 on GPU/TPU; resized by --size and --batch), in two fresh
processes sharing an empty persistent compilation cache (and XLA's autotune cache):
- cold: seconds to build the train state (init), to trace and lower the train step, and to
  compile it (their sum: the time to the first step);
- measured: the same in a second process, now from the cache (the cached compile), then
  - img/s and ms/step, the median of --repeats runs of --steps steps of the train step (the
    builders train.py uses, on uint8 batches already on the device, no sync inside a run);
  - GFLOP/img: XLA's count of the compiled step (forward, backward, optimizer) per image;
  - TFLOP/s achieved and its share of the device's dense bf16 peak (real_step.py's table;
    a CPU has none and says so), and that per-FLOP speed against the torch.compile anchor
    of the issue (326 img/s x 815 GFLOP on an H100, 266 TFLOP/s);
  - peak memory (the device's counter, else XLA's plan);
  - with --loader (a packed file from packed_faces.py, or 'config' for the config's own
    data source): the loader's own img/s (--workers, -1 = one per core but one), then
    the input wait, the share of an end-to-end loop (loader -> device -> step) the host
    spent waiting for the next batch. Measured for the first config only.
Prints a table; --json_out writes every figure.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags, logging

REPO = pathlib.Path(__file__).resolve().parents[1]
# Run as a script: this checkout's mask2face (and sibling modules), installed or not.
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

FLAGS = flags.FLAGS
# torch.compile on an H100 for the 32.8M ResNet U-Net: 326 img/s x 815 GFLOP/img.
TORCH_COMPILE_ANCHOR_TFLOPS = 326 * 815 / 1000


def define_flags():
  flags.DEFINE_list("configs", ["resnet_unet", "upstream_resnet_unet"], "configs/<name>.py")
  flags.DEFINE_integer("size", 256, "Image size.")
  flags.DEFINE_integer("batch", 64, "Global batch size.")
  flags.DEFINE_integer("steps", 20, "Steps per timed run.")
  flags.DEFINE_integer("repeats", 3, "Timed runs (the median is reported).")
  flags.DEFINE_bool("runlocal", False, "The configs' runlocal variants (an eighth of widths).")
  flags.DEFINE_string("dtype", "", "Compute dtype override ('' = the config's, 'auto').")
  flags.DEFINE_string("loader", "", "'' (none), 'config', or a packed .npz (packed_faces.py).")
  flags.DEFINE_integer("workers", -1, "Loader worker processes (-1 = one per core but one).")
  flags.DEFINE_integer("loader_batches", 30, "Batches timed for the loader and input wait.")
  flags.DEFINE_integer("timeout", 900, "Seconds allowed per measuring process.")
  flags.DEFINE_string("json_out", "", "Also write every figure here.")
  flags.DEFINE_string("_role", "", "Internal: 'cold' or 'measure' (a child process).")
  flags.DEFINE_string("_cache_dir", "", "Internal: the child's compilation cache.")


def load_config(name):
  """`configs/<name>.py[:runlocal]` resized by the flags."""
  from mask2face import config_files

  arg = ":runlocal" if FLAGS.runlocal else ""
  config = config_files.load(f"{REPO / 'configs' / name}.py{arg}", lock_config=False)
  config.data.image_size = FLAGS.size
  config.batch_size = FLAGS.batch
  if FLAGS.dtype:
    config.model.dtype = FLAGS.dtype
  config.data.worker_count = FLAGS.workers
  return config


def _compile(built, batch):
  """(compiled step, seconds to trace and lower it, seconds to compile it)."""
  start = time.perf_counter()
  lowered = built.step.lower(built.state, batch)
  middle = time.perf_counter()
  compiled = lowered.compile()
  return compiled, middle - start, time.perf_counter() - middle


def _loader(config):
  """An iterator of training batches: from a packed file, or the config's own data."""
  from mask2face.data import pipeline

  if FLAGS.loader == "config":
    prepared = pipeline.prepare_data(config.data)
  else:
    import packed_faces

    prepared = packed_faces.prepared(FLAGS.loader)
  return iter(pipeline.train_loader(prepared, config.data, batch_size=config.batch_size, seed=0))


def measure_loader(config, built, state, compiled):
  """The loader alone (img/s), then the input wait of a loader -> device -> step loop."""
  import jax

  from mask2face import parallel
  from mask2face.data import pipeline

  it = _loader(config)
  n = FLAGS.loader_batches
  for _ in range(3):  # Workers start and fill their buffers.
    next(it)
  start = time.perf_counter()
  for _ in range(n):
    next(it)
  loader_secs = time.perf_counter() - start
  waited = 0.0
  start = time.perf_counter()
  for _ in range(n):
    t_in = time.perf_counter()
    batch = next(it)
    waited += time.perf_counter() - t_in
    state, metrics = compiled(state, parallel.shard_batch(batch, built.mesh))
  jax.block_until_ready(metrics)
  e2e = time.perf_counter() - start
  return state, {
    "loader_workers": pipeline.worker_count(config.data),
    "loader_img_per_sec": n * config.batch_size / loader_secs,
    "e2e_img_per_sec": n * config.batch_size / e2e,
    "input_wait": waited / e2e,
  }


def child(name, role):
  """Runs in a fresh process: prints one JSON line of figures."""
  from mask2face import main as m2f_main

  m2f_main.setup_compilation_cache(FLAGS._cache_dir, min_compile_secs=0.0)
  import jax
  import real_step

  from mask2face import parallel, train
  from mask2face.models import layers

  config = load_config(name)
  built = real_step.build(config)
  size = config.data.image_size
  batch = parallel.shard_batch(real_step.synthetic_batch(config.batch_size, size), built.mesh)
  compiled, lower_secs, compile_secs = _compile(built, batch)
  out = {"init_secs": built.init_secs, "lower_secs": lower_secs, "compile_secs": compile_secs}
  if role == "measure":
    state, secs, runs = real_step.time_steps(
      compiled, built.state, batch, steps=FLAGS.steps, repeats=FLAGS.repeats
    )
    device = jax.devices()[0]
    flops = real_step.flops_per_step(compiled) * jax.device_count()
    peak = real_step.peak_tflops(device)
    achieved = flops / secs / 1e12
    memory, memory_from = real_step.peak_memory_bytes(compiled)
    out.update(
      compute_dtype=layers.resolve_dtype(config.model.dtype).name,
      params=train.count_params(state.params),
      img_per_sec=config.batch_size / secs,
      ms_per_step=1000 * secs,
      run_ms=[1000 * t for t in runs],
      gflop_per_img=flops / config.batch_size / 1e9,
      tflops=achieved,
      peak_tflops=peak,
      utilisation=achieved / peak if peak else None,
      vs_torch_compile_anchor=achieved / TORCH_COMPILE_ANCHOR_TFLOPS,
      peak_memory_gib=memory / 2**30,
      peak_memory_from=memory_from,
    )
    if FLAGS.loader:
      state, loader = measure_loader(config, built, state, compiled)
      out.update(loader)
  print("CHILD " + json.dumps(out), flush=True)


# Flags a child gets from its parent (all but the internal ones and --configs).
_PASSED = ("size", "batch", "steps", "repeats", "runlocal", "dtype", "workers", "loader_batches")


def _run_child(name, role, cache_dir, *, loader=""):
  """Runs `name` in a fresh process (`role` 'cold' or 'measure'); returns its figures."""
  argv = [sys.executable, __file__, f"--_role={role}", f"--_cache_dir={cache_dir}"]
  argv += [f"--{f}={getattr(FLAGS, f)}" for f in _PASSED]
  argv += [f"--configs={name}", f"--loader={loader}"]
  start = time.perf_counter()
  proc = subprocess.run(argv, capture_output=True, text=True, timeout=FLAGS.timeout)
  lines = [x for x in proc.stdout.splitlines() if x.startswith("CHILD ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"{role} run of {name} failed:\n{proc.stderr[-4000:]}")
  out = json.loads(lines[-1][len("CHILD ") :])
  out["process_secs"] = time.perf_counter() - start
  return out


def measure(name, *, loader=""):
  """Cold compile in one fresh process, then everything else in another reading its cache."""
  with tempfile.TemporaryDirectory() as cache_dir:
    cold = _run_child(name, "cold", cache_dir)
    row = _run_child(name, "measure", cache_dir, loader=loader)
  row["arch"] = name
  for key in ("init_secs", "lower_secs", "compile_secs"):
    row[f"cold_{key}"], row[f"cached_{key}"] = cold[key], row.pop(key)
  # Until the first step can run: build the state, trace and lower the step, compile it.
  for when in ("cold", "cached"):
    row[f"{when}_first_step_secs"] = sum(
      row[f"{when}_{key}"] for key in ("init_secs", "lower_secs", "compile_secs")
    )
  return row


COLUMNS = (
  ("arch", "{}"),
  ("compute_dtype", "{}"),
  ("img_per_sec", "{:.1f}"),
  ("ms_per_step", "{:.1f}"),
  ("gflop_per_img", "{:.1f}"),
  ("tflops", "{:.2f}"),
  ("utilisation", "{:.1%}"),
  ("cold_compile_secs", "{:.1f}"),
  ("cached_compile_secs", "{:.1f}"),
  ("cold_first_step_secs", "{:.1f}"),
  ("cached_first_step_secs", "{:.1f}"),
  ("peak_memory_gib", "{:.2f}"),
  ("loader_img_per_sec", "{:.0f}"),
  ("input_wait", "{:.1%}"),
)


def _cell(row, key, fmt):
  value = row.get(key)
  if value is None:
    return "cpu: no peak" if key == "utilisation" else "-"
  return fmt.format(value)


def main(argv):
  del argv
  if FLAGS._role:
    child(FLAGS.configs[0], FLAGS._role)
    return
  import jax

  device = jax.devices()[0]
  header = (
    f"{FLAGS.size}x{FLAGS.size}, batch {FLAGS.batch}, "
    f"{'runlocal widths' if FLAGS.runlocal else 'full widths'}, "
    f"{jax.device_count()} x {device.device_kind}, median of {FLAGS.repeats} x {FLAGS.steps}"
  )
  rows = []
  for i, name in enumerate(FLAGS.configs):
    logging.info("Measuring %s.", name)
    rows.append(measure(name, loader=FLAGS.loader if i == 0 else ""))
    if FLAGS.json_out:  # After each config, so a run cut short keeps what it measured.
      record = {
        "setting": header,
        "device_kind": device.device_kind,
        "platform": device.platform,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "cpu_count": os.cpu_count(),
        "rows": rows,
        "time_secs": sum(r["process_secs"] for r in rows),
      }
      path = pathlib.Path(FLAGS.json_out)
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text(json.dumps(record, indent=2))
  print(f"\nTraining benchmark: {header}")
  print("| " + " | ".join(k for k, _ in COLUMNS) + " |")
  print("|" + "---|" * len(COLUMNS))
  for row in rows:
    print("| " + " | ".join(_cell(row, k, fmt) for k, fmt in COLUMNS) + " |")


if __name__ == "__main__":
  define_flags()
  app.run(main)
