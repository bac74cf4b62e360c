"""Accelerator speed without changing the maths: sub-pixel resize-conv, bf16 by default,
hyperparameters as values (one compile per architecture), a cheap init, uint8 batches."""

import functools
import json
import multiprocessing
import os
import pathlib
import subprocess
import sys
import textwrap

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from model_init import RNGS

from mask2face import config_files, hparams, losses, models, parallel, train
from mask2face.data import pairs, pipeline
from mask2face.models import layers

REPO = pathlib.Path(__file__).resolve().parents[1]

# --- Sub-pixel resize-conv: the same function as repeat-then-convolve. -----------------------


def _assert_close(got, want, tol=1e-5):
  """Equal to `tol` relative to the larger of 1 and the largest value (float32 sums)."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape
  assert np.max(np.abs(got - want)) <= tol * max(1.0, np.max(np.abs(want)))


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5, 7])
def test_resize_conv_equals_repeat_then_conv(kernel):
  rng = np.random.default_rng(kernel)
  x = jnp.asarray(rng.uniform(size=(2, 5, 7, 3)), jnp.float32)  # Odd and uneven sides too.
  w = jnp.asarray(rng.normal(0, (kernel * kernel * 3) ** -0.5, (kernel, kernel, 3, 4)), jnp.float32)
  probe = jnp.asarray(rng.normal(size=(2, 10, 14, 4)), jnp.float32)

  @jax.jit
  def outputs_and_grads(x, w):
    def one(fn):
      loss = lambda x, w: jnp.sum(probe * fn(x, w))
      return fn(x, w), jax.grad(loss, argnums=(0, 1))(x, w)

    return one(layers.resize_conv), one(layers.repeat_conv)

  (got, got_grads), (want, want_grads) = outputs_and_grads(x, w)
  _assert_close(got, want)
  # Gradients with respect to the input and the (unfolded) kernel.
  for a, b in zip(got_grads, want_grads, strict=True):
    _assert_close(a, b)


class _RepeatUpsample(nn.Module):
  """Upsample('resize_conv') as it was written before the sub-pixel form."""

  features: int
  kernel: int

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)
    return nn.Conv(self.features, (self.kernel, self.kernel), padding="SAME")(x)


def test_upsample_keeps_conv_parameters_and_function():
  """Upsample('resize_conv') has the former nn.Conv's parameters (names, shapes, initial
  values) and computes the same function with them: checkpoints and runs carry over."""
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 4, 6, 3)), jnp.float32)
  up = layers.Upsample(5, 3, method="resize_conv")
  before = _RepeatUpsample(5, 3)
  variables, expected = up.init(RNGS, x), before.init(RNGS, x)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, expected)
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(a, b)
  _assert_close(up.apply(variables, x), before.apply(variables, x))


def _flops(fn, *args):
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  return float(cost["flops"])


@pytest.mark.parametrize("kernel, most", [(7, 0.4), (3, 0.5)])
def test_resize_conv_saves_flops(kernel, most):
  x = jnp.zeros((1, 16, 16, 8), jnp.float32)
  w = jnp.zeros((kernel, kernel, 8, 8), jnp.float32)
  ratio = _flops(layers.resize_conv, x, w) / _flops(layers.repeat_conv, x, w)
  assert ratio < most, ratio  # 16/49 and 4/9 of the multiply-adds, plus the folding.


# --- bf16 by default where it pays. ----------------------------------------------------------


def test_auto_dtype_is_bfloat16_on_accelerators_only():
  assert layers.resolve_dtype("auto", "gpu") == jnp.bfloat16
  assert layers.resolve_dtype("auto", "tpu") == jnp.bfloat16
  assert layers.resolve_dtype("auto", "cpu") == jnp.float32
  assert layers.resolve_dtype("bfloat16", "cpu") == jnp.bfloat16
  config = config_files.load(REPO / "configs" / "resnet_unet.py")
  assert config.model.dtype == "auto"
  expected = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  assert models.model_from_config(config).dtype == expected


def _fixed_batch(seed=0, size=16, n=4):
  rng = np.random.default_rng(seed)
  clean = rng.integers(0, 256, (n, size, size, 3), np.uint8)
  mask = np.zeros((n, size, size, 1), np.uint8)
  mask[:, size // 2 :, size // 4 : 3 * size // 4] = 1
  return {
    "masked": np.where(mask > 0, 128, clean).astype(np.uint8),
    "clean": clean,
    "mask": mask,
    "family": np.zeros(n, np.int32),
    "valid": np.ones(n, np.float32),
  }


def _loss_curves(dtypes, steps):
  """Train losses of a tiny BatchNorm unet on one batch, per compute dtype, from one init."""
  mesh = parallel.make_mesh(jax.devices()[:1])
  loss_config = ml_collections.ConfigDict(
    dict(name="ssim_l1", masked_weight=1.0, unmasked_weight=1.0)
  )
  loss_fn = functools.partial(losses.compute_loss, loss_config)
  tx = optax.adam(1e-2)
  build = functools.partial(
    models.get_model, "unet", filters=(4, 8), norm="batch", axis_name="data"
  )
  # Parameters are float32 whatever the compute dtype: one init serves every run.
  init = train.create_train_state(build(), tx, jax.random.PRNGKey(0), (1, 16, 16, 3), mesh)
  batch = parallel.shard_batch(_fixed_batch(), mesh)
  curves, states = [], []
  for dtype in dtypes:
    step = train.make_train_step(build(dtype=dtype), tx, loss_fn, mesh)
    state = jax.tree.map(jnp.copy, init)  # The step donates its state.
    curve = []
    for _ in range(steps):
      state, metrics = step(state, batch)
      curve.append(float(metrics["train_loss"]))
    curves.append(np.array(curve))
    states.append(state)
  return curves, states


def test_bfloat16_trains_like_float32():
  (f32, bf16), (_, state) = _loss_curves(("float32", "bfloat16"), 12)
  assert {x.dtype for x in jax.tree.leaves(state.params)} == {np.dtype(np.float32)}
  assert {x.dtype for x in jax.tree.leaves(state.batch_stats)} == {np.dtype(np.float32)}
  assert bf16[-1] < 0.8 * bf16[0] and f32[-1] < 0.8 * f32[0], (f32, bf16)
  # The same descent, to bfloat16's precision (an 8-bit mantissa: about 0.4% per operation).
  np.testing.assert_allclose(bf16, f32, rtol=0.05)


# --- Cheap init. -----------------------------------------------------------------------------


def test_init_on_the_smallest_input_gives_the_full_size_variables():
  model = models.get_model("unet", filters=(4, 8), norm="batch")
  assert models.smallest_input_shape(model, (1, 32, 32, 3)) == (1, 4, 4, 3)
  init = jax.jit(lambda x: model.init(RNGS, x, train=False))
  small, full = init(jnp.zeros((1, 4, 4, 3))), init(jnp.zeros((1, 32, 32, 3)))
  assert "batch_stats" in full
  for a, b in zip(jax.tree.leaves(small), jax.tree.leaves(full), strict=True):
    np.testing.assert_array_equal(a, b)

  class Flat(nn.Module):
    """Variables that depend on the image size: no smaller input is equivalent."""

    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(2)(x.reshape(x.shape[0], -1))

  assert models.smallest_input_shape(Flat(), (1, 32, 32, 3)) == (1, 32, 32, 3)


# --- Hyperparameters as values. --------------------------------------------------------------


def _optimizer_config(**overrides):
  config = ml_collections.ConfigDict(
    dict(
      optimizer="adamw",
      learning_rate=1e-3,
      schedule="warmup_cosine",
      warmup_steps=10,
      weight_decay=0.1,
      grad_clip_norm=1.0,
      final_lr_fraction=0.1,
    )
  )
  config.update(overrides)
  return config


def test_schedules_and_updates_match_optax():
  steps = np.arange(0, 130, 7)
  cases = [
    (dict(schedule="constant", warmup_steps=0), optax.constant_schedule(1e-3)),
    (
      dict(schedule="constant", warmup_steps=10),
      optax.join_schedules(
        [optax.linear_schedule(0.0, 1e-3, 10), optax.constant_schedule(1e-3)], [10]
      ),
    ),
    (dict(), optax.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100, 1e-4)),
    (dict(warmup_steps=0), optax.warmup_cosine_decay_schedule(0.0, 1e-3, 0, 100, 1e-4)),
  ]
  for overrides, reference in cases:
    _, lr_fn = train.create_optimizer(_optimizer_config(**overrides), num_train_steps=100)
    np.testing.assert_allclose(
      [float(lr_fn(s)) for s in steps], [float(reference(s)) for s in steps], rtol=1e-5, atol=1e-9
    )
  # Three updates of the injected optimizer against optax's own, built with constants.
  tx, _ = train.create_optimizer(_optimizer_config(), num_train_steps=100)
  schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100, 1e-4)
  ref = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.1))
  params = {"w": jnp.linspace(-1.0, 1.0, 5)}
  state, ref_state = tx.init(params), ref.init(params)
  for i in range(12):
    grads = {"w": jnp.sin(params["w"] * (i + 1)) * 3.0}
    got, state = tx.update(grads, state, params)
    want, ref_state = ref.update(grads, ref_state, params)
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-5, atol=1e-10)
    params = optax.apply_updates(params, got)


def _lowered(config_overrides, loss_overrides):
  """The train step's program (StableHLO text) and state shapes for a tiny unet config."""
  config = config_files.load(REPO / "configs" / "unet.py:runlocal", lock_config=False)
  config.model.filters = (4, 8)
  config.update(config_overrides)
  config.loss.update(loss_overrides)
  mesh = parallel.make_mesh(jax.devices()[:1])
  model = models.model_from_config(config)
  tx, _ = train.create_optimizer(config, 100)
  weights = hparams.loss_weights(config.loss)
  state = jax.eval_shape(
    lambda: train.create_train_state(
      model, tx, jax.random.PRNGKey(0), (1, 16, 16, 3), mesh, loss_weights=weights
    )
  )
  step = train.make_train_step(model, tx, functools.partial(losses.compute_loss, config.loss), mesh)
  batch = jax.eval_shape(lambda: _fixed_batch())
  return step.lower(state, batch).as_text(), state


def test_hyperparameters_do_not_change_the_step_program():
  base, state = _lowered(dict(learning_rate=1e-3), dict())
  swept, _ = _lowered(
    dict(learning_rate=3e-4, warmup_steps=7, weight_decay=0.5, grad_clip_norm=2.0),
    dict(ssim_weight=0.5, pixel_weight=2.0, masked_weight=4.0),
  )
  assert base == swept, "a hyperparameter is baked into the train step as a constant"
  assert set(state.loss_weights) == set(hparams.LOSS_WEIGHTS)
  assert set(state.opt_state.hyperparams) == set(hparams.OPTIMIZER_VALUES)
  # What changes the program still does: another loss.
  other, _ = _lowered(dict(learning_rate=1e-3), dict(name="mae"))
  assert other != base


def test_set_values_puts_the_configs_numbers_back():
  mesh = parallel.make_mesh(jax.devices()[:1])
  model = models.get_model("unet", filters=(4, 8), norm="batch", axis_name="data")
  old = _optimizer_config(learning_rate=1e-3)
  tx, _ = train.create_optimizer(old, 100)
  loss_config = ml_collections.ConfigDict(dict(name="mae", masked_weight=1.0, unmasked_weight=1.0))
  state = jax.eval_shape(
    lambda: train.create_train_state(
      model,
      tx,
      jax.random.PRNGKey(0),
      (1, 16, 16, 3),
      mesh,
      loss_weights=hparams.loss_weights(loss_config),
    )
  )
  state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state)
  new = _optimizer_config(learning_rate=5e-4, warmup_steps=3)
  new.loss = ml_collections.ConfigDict(dict(name="mae", masked_weight=7.0, unmasked_weight=1.0))
  updated = hparams.set_values(state, new, 100)
  assert float(updated.opt_state.hyperparams["learning_rate"]) == pytest.approx(5e-4)
  assert float(updated.opt_state.hyperparams["warmup_steps"]) == 3.0
  assert float(updated.loss_weights["masked_weight"]) == 7.0
  assert jax.tree.structure(updated) == jax.tree.structure(state)


# Runs in a fresh process with a shared compilation cache: seconds from start (after imports)
# to the end of the first train step of a tiny unet, uint8 batches, at the given learning rate.
_SWEEP_POINT = textwrap.dedent(
  """
  import functools, json, sys, time
  import jax, numpy as np
  from mask2face import config_files, hparams, losses, main, models, parallel, train
  sys.path.insert(0, {tests!r})
  from test_speed import _fixed_batch

  main.setup_compilation_cache(sys.argv[1], min_compile_secs=0.0)
  t0 = time.perf_counter()
  config = config_files.load({config!r}, lock_config=False)
  config.model.filters = (4, 8)
  config.learning_rate = float(sys.argv[2])
  mesh = parallel.make_mesh()
  model = models.model_from_config(config)
  tx, _ = train.create_optimizer(config, 100)
  state = train.create_train_state(
    model, tx, jax.random.PRNGKey(0), (1, 16, 16, 3), mesh,
    loss_weights=hparams.loss_weights(config.loss))
  step = train.make_train_step(
    model, tx, functools.partial(losses.compute_loss, config.loss), mesh)
  state, metrics = step(state, parallel.shard_batch(_fixed_batch(), mesh))
  loss = float(metrics["train_loss"])
  print("RESULT " + json.dumps(dict(secs=time.perf_counter() - t0, loss=loss)))
  """
)


def _default_compiler_env() -> dict:
  """The environment without the suite's compile shortcuts (tests/conftest.py): this test
  measures what the persistent cache saves a user, whose XLA runs its full pipeline."""
  drop = ("XLA_FLAGS", "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
  return {**{k: v for k, v in os.environ.items() if k not in drop}, "JAX_PLATFORMS": "cpu"}


def test_learning_rate_sweep_compiles_once(tmp_path):
  script = _SWEEP_POINT.format(
    tests=str(REPO / "tests"), config=str(REPO / "configs" / "unet.py:runlocal")
  )
  results = []
  for lr in ("1e-3", "2e-3"):
    proc = subprocess.run(
      [sys.executable, "-c", script, str(tmp_path / "cache"), lr],
      capture_output=True,
      text=True,
      timeout=900,
      env=_default_compiler_env(),
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    results.append(json.loads(lines[-1][len("RESULT ") :]))
  first, second = results
  assert np.isfinite(first["loss"]) and first["loss"] == pytest.approx(second["loss"])
  assert second["secs"] < 0.2 * first["secs"], results


# --- uint8 batches, workers. -----------------------------------------------------------------


def test_to_float_casts_uint8_batches_only():
  batch = _fixed_batch()
  out = train.to_float(batch)
  np.testing.assert_array_equal(out["clean"], batch["clean"].astype(np.float32) / 255.0)
  np.testing.assert_array_equal(out["mask"], batch["mask"].astype(np.float32))
  assert out["family"].dtype == np.int32 and out["valid"].dtype == np.float32
  floats = {
    k: (v.astype(np.float32) / 255.0 if k in ("masked", "clean") else v) for k, v in batch.items()
  }
  floats["mask"] = batch["mask"].astype(np.float32)
  again = train.to_float(floats)
  assert all(again[k] is floats[k] for k in floats)


@pytest.fixture(scope="module")
def astronaut_face(astronaut):
  from mask2face.data import dlib_faces

  faces = dlib_faces.find_faces(astronaut)
  assert faces
  return astronaut, faces[0].points


def test_uint8_pairs_are_the_float_pairs_to_a_level(astronaut_face):
  image, points = astronaut_face
  options = pairs.PairOptions(image_size=64)
  for augment in (False, True):
    for seed in range(3):
      made = [
        pairs.make_pair(
          image, points, np.random.default_rng(seed), options, augment=augment, dtype=dtype
        )
        for dtype in (np.float32, np.uint8)
      ]
      floats, as_uint8 = made
      assert as_uint8["masked"].dtype == as_uint8["mask"].dtype == np.uint8
      np.testing.assert_array_equal(floats["mask"], as_uint8["mask"].astype(np.float32))
      for key in ("masked", "clean"):
        got = as_uint8[key].astype(np.float32) / 255.0
        # Without augmentation exactly the same; the jitter rounds to a level in uint8.
        np.testing.assert_allclose(got, floats[key], atol=1e-7 if not augment else 1.0 / 255)


def test_worker_count_auto_leaves_a_core():
  cores = len(os.sched_getaffinity(0))
  auto = pipeline.worker_count(ml_collections.ConfigDict(dict(worker_count=-1)))
  assert auto == min(max(cores - 1, 0), pipeline.MAX_AUTO_WORKERS)
  assert pipeline.worker_count(ml_collections.ConfigDict(dict(worker_count=3))) == 3
  with pytest.raises(ValueError, match="worker_count"):
    pipeline.worker_count(ml_collections.ConfigDict(dict(worker_count=-2)))


def _cv2_threads_in_worker(_):
  pipeline._one_cv2_thread(os.getpid())
  return cv2.getNumThreads()


def test_opencv_single_threaded_in_workers_only():
  before = cv2.getNumThreads()
  pipeline._one_cv2_thread(os.getpid())  # The main process: left alone.
  assert cv2.getNumThreads() == before
  with multiprocessing.get_context("spawn").Pool(1) as pool:
    assert pool.map(_cv2_threads_in_worker, [0]) == [1]
