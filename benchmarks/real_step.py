"""The training job's own step, built from a config as `train.train_and_evaluate` builds it,
for the benchmarks: model, optimizer, state, jitted data-parallel step, uint8 batches, timing,
FLOP counts and the peak FLOP/s of the device it runs on.

Imports nothing that the GPU benchmark host lacks (no TensorFlow, TFDS, dlib, mediapipe).
"""

import dataclasses
import functools
import statistics
import time
from typing import Any

import jax
import numpy as np

from mask2face import hparams, losses, models, parallel, train

# Dense bfloat16 peak TFLOP/s per chip (vendor figures, no sparsity), by a piece of
# `device_kind`; the first match wins, so the more specific names come first.
PEAK_BF16_TFLOPS = (
  ("H200", 989.0),
  ("H100 PCIe", 756.0),
  ("H100", 989.0),  # SXM and NVL.
  ("A100", 312.0),
  ("TPU v5 lite", 197.0),  # v5e.
  ("TPU v5e", 197.0),
  ("TPU v5p", 459.0),
  ("TPU v5", 459.0),
  ("TPU v4", 275.0),
)


def peak_tflops(device: jax.Device) -> float | None:
  """The device's dense bf16 peak (TFLOP/s), or None for a CPU or an unknown chip."""
  if device.platform == "cpu":
    return None
  for name, tflops in PEAK_BF16_TFLOPS:
    if name.lower() in device.device_kind.lower():
      return tflops
  return None


@dataclasses.dataclass
class Built:
  """Everything needed to run the config's train step."""

  mesh: Any
  model: Any
  state: Any
  step: Any  # The jitted data-parallel train step: (state, batch) -> (state, metrics).
  loss_fn: Any
  init_secs: float  # Building the train state (its init compiles, or loads from the cache).


def build(config) -> Built:
  """The config's model, optimizer, train state and step, exactly as the trainer builds them."""
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  model = models.model_from_config(config)
  tx, _ = train.create_optimizer(config, max(int(config.num_train_steps), 1000))
  size = config.data.image_size
  start = time.perf_counter()
  state = train.create_train_state(
    model,
    tx,
    jax.random.PRNGKey(config.seed),
    (1, size, size, 3),
    mesh,
    loss_weights=hparams.loss_weights(config.loss),
  )
  jax.block_until_ready(state)
  init_secs = time.perf_counter() - start
  loss_fn = functools.partial(losses.compute_loss, config.loss)
  step = train.make_train_step(model, tx, loss_fn, mesh)
  return Built(mesh, model, state, step, loss_fn, init_secs)


def synthetic_batch(batch_size: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A training batch as the train loader makes it: uint8 images and mask."""
  rng = np.random.default_rng(seed)
  clean = rng.integers(0, 256, (batch_size, size, size, 3), np.uint8)
  mask = np.zeros((batch_size, size, size, 1), np.uint8)
  mask[:, size // 2 :, size // 4 : 3 * size // 4] = 1
  return {
    "masked": np.where(mask > 0, np.uint8(128), clean),
    "clean": clean,
    "mask": mask,
    "family": np.zeros(batch_size, np.int32),
    "valid": np.ones(batch_size, np.float32),
  }


def flops_per_step(compiled) -> float:
  """XLA's FLOP count of one compiled step, per device (NaN where it has none)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) and cost else cost
  return float((cost or {}).get("flops", float("nan")))


def time_steps(step, state, batch, *, steps: int, repeats: int):
  """(state, median seconds per step, each repeat's): `steps` steps per repeat, no sync
  inside a repeat (the host runs ahead, as in training)."""
  state, metrics = step(state, batch)  # Warm-up (and compilation if not done yet).
  jax.block_until_ready(metrics)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append((time.perf_counter() - start) / steps)
  if not np.isfinite(float(metrics["train_loss"])):
    raise FloatingPointError("the benchmarked step's loss is not finite")
  return state, statistics.median(times), times


def peak_memory_bytes(compiled) -> tuple[float, str]:
  """(bytes, where from): the device's own peak counter (GPU, TPU), else XLA's plan."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return float(stats["peak_bytes_in_use"]), "device"
  m = compiled.memory_analysis()
  if m is None:
    return float("nan"), "n/a"
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
  return float(total), "xla plan"
