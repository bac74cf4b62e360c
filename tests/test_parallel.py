"""Data parallelism: 8 simulated CPU devices give the same update as one device.

The 8-device half runs in a subprocess, because XLA_FLAGS must be set before jax is imported
(and the rest of the suite runs on the default single CPU device).
"""

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import tiny_run

from mask2face import parallel

# Runs under --xla_force_host_platform_device_count=8; prints one JSON line of measurements.
_SCRIPT = textwrap.dedent(
  """
  import json
  import ml_collections, numpy as np, optax, jax
  from mask2face import losses, models, parallel, train

  mesh8 = parallel.make_mesh()
  mesh1 = parallel.make_mesh(jax.devices()[:1])
  # BatchNorm, so the statistics have to be averaged over devices too.
  model = models.get_model("unet", filters=(4, 8), norm="batch", axis_name="data")
  loss_config = ml_collections.ConfigDict(dict(
    name="ssim_l1", ssim_weight=1.0, pixel_weight=1.0, kl_weight=0.0, coarse_weight=0.0,
    masked_weight=2.0, unmasked_weight=1.0))
  loss_fn = lambda pred, aux, batch: losses.compute_loss(loss_config, pred, aux, batch)
  # SGD: Adam's first step is about lr * sign(grad) and amplifies float noise in tiny grads.
  tx = optax.sgd(0.5)
  rng = np.random.default_rng(0)
  def batch():
    return {
      "masked": rng.uniform(size=(16, 16, 16, 3)).astype(np.float32),
      "clean": rng.uniform(size=(16, 16, 16, 3)).astype(np.float32),
      "mask": (rng.uniform(size=(16, 16, 16, 1)) > 0.5).astype(np.float32),
      "family": np.zeros(16, np.int32),
      "valid": np.ones(16, np.float32),
    }
  batches = [batch(), batch()]
  out = {"devices": jax.device_count()}
  states, losses_seen = {}, {}
  for name, mesh in (("one", mesh1), ("eight", mesh8)):
    state = train.create_train_state(model, tx, jax.random.PRNGKey(0), (1, 16, 16, 3), mesh)
    step = train.make_train_step(model, tx, loss_fn, mesh)
    seen = []
    for b in batches:
      state, metrics = step(state, parallel.shard_batch(b, mesh))
      seen.append(float(metrics["train_loss"]))
    states[name], losses_seen[name] = jax.device_get(state), seen
    out[f"cache_size_{name}"] = step._cache_size()
  diff = lambda a, b: max(float(np.max(np.abs(x - y))) for x, y in zip(
    jax.tree.leaves(a), jax.tree.leaves(b)))
  scale = lambda a: max(float(np.max(np.abs(x))) for x in jax.tree.leaves(a))
  out["param_diff"] = diff(states["one"].params, states["eight"].params)
  out["param_change"] = diff(states["one"].params, jax.device_get(train.create_train_state(
    model, tx, jax.random.PRNGKey(0), (1, 16, 16, 3), mesh1).params))
  out["stats_diff"] = diff(states["one"].batch_stats, states["eight"].batch_stats)
  out["stats_scale"] = scale(states["one"].batch_stats)
  out["losses"] = losses_seen
  try:
    parallel.check_batch_size(12, mesh8)
    out["indivisible_error"] = ""
  except ValueError as e:
    out["indivisible_error"] = str(e)
  print("RESULT " + json.dumps(out))
  """
)


@pytest.fixture(scope="module")
def eight_devices():
  env = tiny_run.environment(devices=8)
  proc = subprocess.run(
    [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300
  )
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, f"8-device script failed:\n{proc.stderr[-4000:]}"
  return json.loads(lines[-1][len("RESULT ") :])


def test_eight_devices_match_one_device(eight_devices):
  r = eight_devices
  assert r["devices"] == 8
  # The update must be real (not both zero) and the same on 8 devices as on one.
  assert r["param_change"] > 1e-4
  assert r["param_diff"] < 1e-5, r
  np.testing.assert_allclose(r["losses"]["eight"], r["losses"]["one"], rtol=1e-5)
  # BatchNorm running statistics: averaged over devices = computed on the global batch.
  assert r["stats_scale"] > 0
  assert r["stats_diff"] < 1e-6, r


def test_no_recompilation_across_steps(eight_devices):
  assert eight_devices["cache_size_one"] == 1
  assert eight_devices["cache_size_eight"] == 1


def test_indivisible_global_batch_is_a_clear_error(eight_devices):
  message = eight_devices["indivisible_error"]
  assert "batch_size=12" in message and "8 devices" in message


def test_check_batch_size_one_device():
  mesh = parallel.make_mesh(jax.devices()[:1])
  assert parallel.check_batch_size(5, mesh) == 5
  with pytest.raises(ValueError, match="eval_batch_size=0"):
    parallel.check_batch_size(0, mesh, what="eval_batch_size")


def test_shard_batch_places_examples_on_the_mesh():
  mesh = parallel.make_mesh()
  batch = {"x": np.arange(4 * jax.device_count(), dtype=np.float32).reshape(-1, 2)}
  sharded = parallel.shard_batch(batch, mesh)
  assert sharded["x"].sharding.spec == jax.sharding.PartitionSpec("data")
  np.testing.assert_array_equal(parallel.fetch(sharded)["x"], batch["x"])


class _CountingIterator:
  """An iterator whose state is how many batches it has handed out (as grain's is)."""

  def __init__(self):
    self.count = 0

  def __next__(self):
    self.count += 1
    return {"x": np.full((2, 3), self.count, np.float32)}

  def get_state(self):
    return self.count


def test_device_prefetch_state_is_that_of_the_batches_handed_out():
  mesh = parallel.make_mesh(jax.devices()[:1])
  source = _CountingIterator()
  batches = parallel.DevicePrefetch(source, mesh, size=2)
  assert batches.get_state() == 0
  first = next(batches)
  assert float(first["x"][0, 0]) == 1 and source.count == 2  # One batch already ahead.
  assert batches.get_state() == 1  # What a checkpoint records: the batch trained on.
  assert [float(next(batches)["x"][0, 0]) for _ in range(3)] == [2, 3, 4]
  assert batches.get_state() == 4 and source.count == 5


def test_local_rows_and_gather_on_one_host():
  mesh = parallel.make_mesh()
  batch = {"x": np.arange(2 * jax.device_count(), dtype=np.float32)}
  np.testing.assert_array_equal(
    parallel.local_rows(parallel.shard_batch(batch, mesh))["x"], batch["x"]
  )
  assert parallel.gather_hosts(batch) is batch and parallel.all_hosts(True)
  parallel.sync("a barrier is a no-op on one host")
