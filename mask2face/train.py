"""Training and evaluation of the inpainting models, data-parallel over every device.

`train_and_evaluate(config, workdir)` is the whole job: it prepares the data, builds the model
named by `config.model_name`, resumes from `workdir/checkpoints` when a previous run left one,
trains with periodic validation, logging and checkpoints, then evaluates the test split and
writes `workdir/results.json`. The step functions are pure, at module level, and written
per device as under pmap (see `mask2face.parallel`).
"""

import dataclasses
import functools
import json
import math
import os
import pathlib
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax import lax
from jax.sharding import PartitionSpec as P

from mask2face import atomic, parallel
from mask2face.checkpointing import Checkpointer

AXIS = parallel.AXIS
# (pred, aux, batch) -> (scalar loss, dict of scalar terms): losses.compute_loss, bound to a config.
LossFn = Callable[[jax.Array, Mapping[str, Any], Mapping[str, jax.Array]], tuple[Any, Any]]


class TrainState(flax.struct.PyTreeNode):
  """Everything a step changes; arrays only, so orbax saves and restores it as one tree."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


# --- Building blocks. -------------------------------------------------------------------------


def setup_compilation_cache(cache_dir: str, min_compile_secs: float = 1.0) -> None:
  """Turns on JAX's persistent compilation cache so a rerun does not compile again.

  Takes effect only before the process compiles anything (JAX fixes the cache at first use).
  """
  if not cache_dir:
    return
  path = os.path.expanduser(cache_dir)
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def build_model(config: ml_collections.ConfigDict, *, axis_name: str | None = AXIS):
  """The model named by `config.model_name` with `config.model` as keyword arguments.

  Models with BatchNorm get `axis_name` so their batch statistics are averaged over devices.
  """
  from mask2face import models

  kwargs = dict(config.model.to_dict())
  cls = models.MODELS.get(config.model_name)
  fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else ()
  if "axis_name" in fields:
    kwargs["axis_name"] = axis_name
  return models.get_model(config.model_name, **kwargs)


def create_learning_rate_fn(config: ml_collections.ConfigDict, num_train_steps: int):
  """Constant (optionally after a linear warmup) or warmup then cosine decay."""
  lr = config.learning_rate
  warmup = max(int(config.warmup_steps), 0)
  if config.schedule == "constant":
    if not warmup:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    )
  if config.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=lr,
      warmup_steps=warmup,
      decay_steps=max(num_train_steps, warmup + 1),
      end_value=lr * config.get("final_lr_fraction", 0.0),
    )
  raise ValueError(f"unknown schedule {config.schedule!r}; valid: constant, warmup_cosine")


def create_optimizer(config: ml_collections.ConfigDict, num_train_steps: int):
  """The optax optimizer of the config: adam | adamw | sgd, optional global-norm clipping."""
  lr_fn = create_learning_rate_fn(config, num_train_steps)
  if config.optimizer == "adam":
    tx = optax.adam(lr_fn)
  elif config.optimizer == "adamw":
    tx = optax.adamw(lr_fn, weight_decay=config.weight_decay)
  elif config.optimizer == "sgd":
    tx = optax.sgd(lr_fn)
  else:
    raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: adam, adamw, sgd")
  if config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx, lr_fn


def create_train_state(model, tx, rng: jax.Array, input_shape, mesh) -> TrainState:
  """Initialises parameters, BatchNorm statistics and optimizer state, replicated on `mesh`."""
  init_rng, state_rng = jax.random.split(rng)

  def init(rng):
    p_rng, d_rng, l_rng = jax.random.split(rng, 3)
    # train=False: BatchNorm would otherwise pmean over an axis that init does not bind.
    variables = model.init(
      {"params": p_rng, "dropout": d_rng, "latent": l_rng},
      jnp.zeros(input_shape, jnp.float32),
      train=False,
    )
    params = variables["params"]
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=tx.init(params),
      rng=state_rng,
    )

  replicated = jax.sharding.NamedSharding(mesh, P())
  return jax.jit(init, out_shardings=replicated)(init_rng)


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _variables(state: TrainState, params) -> dict[str, Any]:
  variables = {"params": params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def _as_float32(tree):
  """Losses and metrics run in float32 whatever the compute dtype (mixed precision)."""
  return jax.tree.map(
    lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
  )


# --- Per-device step functions (run under shard_map, see parallel.data_parallel). ------------


def train_step(state: TrainState, batch, *, model, tx, loss_fn: LossFn, axis_name: str = AXIS):
  """One optimizer step on this device's slice of the batch; gradients averaged over devices.

  Returns the new state and a flat dict of scalar `train_*` metrics (already averaged).
  """
  step_rng = jax.random.fold_in(state.rng, state.step)
  # Per-device randomness (dropout, VAE sampling), as under pmap.
  device_rng = jax.random.fold_in(step_rng, lax.axis_index(axis_name))
  dropout_rng, latent_rng = jax.random.split(device_rng)

  def loss_of(params):
    (pred, aux), updates = model.apply(
      _variables(state, params),
      batch["masked"],
      train=True,
      target=batch["clean"],
      rngs={"dropout": dropout_rng, "latent": latent_rng},
      mutable=["batch_stats"],
    )
    loss, terms = loss_fn(_as_float32(pred), _as_float32(aux), batch)
    return loss, (terms, updates)

  (loss, (terms, updates)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  # Explicit averages: shard_map(check_vma=False) leaves each device its own gradients.
  grads = lax.pmean(grads, axis_name)
  batch_stats = lax.pmean(updates.get("batch_stats", state.batch_stats), axis_name)
  grad_norm = optax.tree.norm(grads)
  param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, param_updates)
  metrics = {"train_loss": loss, "train_grad_norm": grad_norm}
  metrics.update({f"train_{k}": v for k, v in dict(terms).items() if k != "loss"})
  metrics = lax.pmean(metrics, axis_name)
  metrics["train_finite"] = jnp.isfinite(metrics["train_loss"]) & jnp.isfinite(grad_norm)
  new_state = state.replace(
    step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
  )
  return new_state, metrics


def eval_step(state: TrainState, batch, *, model, loss_fn: LossFn, metrics_fn):
  """Per-example metrics (and loss) of this device's examples, plus the predictions."""
  pred, aux = model.apply(
    _variables(state, state.params),
    batch["masked"],
    train=False,
    rngs={"dropout": jax.random.PRNGKey(0), "latent": jax.random.PRNGKey(0)},
  )
  pred, aux = _as_float32(pred), _as_float32(aux)

  # The loss per example, so padding (valid == 0) can be left out on the host.
  def one_loss(p, a, b):
    add_batch_axis = functools.partial(jax.tree.map, lambda x: x[None])
    return loss_fn(p[None], add_batch_axis(a), add_batch_axis(b))[0]

  per_example = dict(metrics_fn(pred, batch["clean"], batch["mask"]))
  per_example["loss"] = jax.vmap(one_loss)(pred, dict(aux), dict(batch))
  per_example["valid"] = batch["valid"]
  per_example["family"] = batch["family"]
  return per_example, pred


def make_train_step(model, tx, loss_fn: LossFn, mesh):
  """The jitted data-parallel train step: (state, sharded batch) -> (state, metrics)."""
  fn = functools.partial(train_step, model=model, tx=tx, loss_fn=loss_fn)
  return parallel.data_parallel(
    fn, mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()), donate_argnums=0
  )


def make_eval_step(model, loss_fn: LossFn, mesh, metrics_fn=None):
  """The jitted data-parallel eval step: (state, sharded batch) -> (per-example dict, pred)."""
  if metrics_fn is None:
    from mask2face import metrics

    metrics_fn = metrics.image_metrics
  fn = functools.partial(eval_step, model=model, loss_fn=loss_fn, metrics_fn=metrics_fn)
  return parallel.data_parallel(fn, mesh, in_specs=(P(), P(AXIS)), out_specs=(P(AXIS), P(AXIS)))


# --- Host-side loops. --------------------------------------------------------------------------


def evaluate(
  eval_step_fn,
  state: TrainState,
  batches: Iterable[Mapping[str, np.ndarray]],
  mesh,
  *,
  family_names=None,
  identity_scorer=None,
  num_images: int = 0,
) -> tuple[dict[str, float], dict[str, float], np.ndarray | None]:
  """One pass over `batches`: (model metrics, masked-input baseline metrics, image grid).

  The grid shows the first `num_images` valid examples (padding left out), None without any.
  """
  from mask2face import metrics

  model_acc = metrics.MetricAccumulator()
  baseline_acc = metrics.MetricAccumulator()
  # (masked, pred, target) of the first `num_images` valid examples: padding (valid == 0) is
  # all zeros and would show as black rows when a split is smaller than the grid.
  grid_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
  baseline_fn = jax.jit(metrics.baseline_metrics)
  for batch in batches:
    per_example, pred = eval_step_fn(state, parallel.shard_batch(batch, mesh))
    per_example, pred = parallel.fetch((per_example, pred))
    valid, family = per_example.pop("valid"), per_example.pop("family")
    if identity_scorer is not None:
      per_example.update(identity_scorer.score_batch(pred, batch["clean"], valid))
    model_acc.add(per_example, valid=valid, family=family)
    baseline_acc.add(jax.device_get(baseline_fn(batch)), valid=valid, family=family)
    # Multi-host: `pred` and `valid` are gathered from every host, this host's rows first.
    local_valid = np.asarray(valid)[: len(batch["masked"])]
    for i in np.flatnonzero(local_valid > 0)[: max(num_images - len(grid_rows), 0)]:
      grid_rows.append((batch["masked"][i], pred[i], batch["clean"][i]))
  if model_acc.count == 0:
    raise ValueError("evaluation saw no valid examples: is the split empty?")
  grid = None
  if grid_rows:
    masked, pred, target = (np.stack(x) for x in zip(*grid_rows))
    grid = image_grid(masked, pred, target, num_images)
  return model_acc.result(family_names), baseline_acc.result(family_names), grid


def image_grid(masked, pred, target, rows: int) -> np.ndarray:
  """uint8 [rows * H, 3 * W, 3]: one example per row, masked | prediction | target."""
  rows = min(rows, masked.shape[0])
  triplets = [np.concatenate([masked[i], pred[i], target[i]], axis=1) for i in range(rows)]
  return np.round(np.clip(np.concatenate(triplets, axis=0), 0, 1) * 255).astype(np.uint8)


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  atomic.write_json(path, obj, sort_keys=True, default=_json_default)


def _json_default(x):
  if isinstance(x, np.generic | np.ndarray | jax.Array):
    return np.asarray(x).tolist()
  return str(x)


class MetricsLog:
  """`workdir/metrics.jsonl`: one JSON object per logged step, read by notebooks with pandas."""

  def __init__(self, path: pathlib.Path, *, resume_step: int, enabled: bool = True):
    self.path = path
    self.enabled = enabled
    if enabled and path.exists():
      # Lines past the resumed checkpoint describe steps that will be trained again: drop them.
      kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= resume_step
      ]
      tmp = path.with_name(path.name + ".tmp")
      tmp.write_text("".join(line + "\n" for line in kept))
      os.replace(tmp, path)

  def write(self, step: int, values: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _to_python(v) for k, v in values.items()}}
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")


def _to_python(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


def git_commit() -> str:
  try:
    out = subprocess.run(
      ["git", "rev-parse", "HEAD"],
      cwd=pathlib.Path(__file__).resolve().parent,
      capture_output=True,
      text=True,
      timeout=10,
      check=True,
    )
    return out.stdout.strip() or "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


class StepClock:
  """Seconds spent training, with compilation, evaluation and checkpointing left out."""

  def __init__(self):
    self.steps, self.secs = 0, 0.0  # Since the last `take_interval`.
    self.total_steps, self.total_secs = 0, 0.0  # Before the last `take_interval`.
    self._since: float | None = time.time()

  def _lap(self) -> None:
    if self._since is not None:
      now = time.time()
      self.secs += now - self._since
      self._since = now

  def restart(self) -> float:
    """Forgets the time so far (the first step: compilation) and returns it."""
    self._lap()
    dt, self.secs, self.steps = self.secs, 0.0, 0
    return dt

  def pause(self, state=None) -> None:
    if state is not None:
      jax.block_until_ready(state)  # Work dispatched before the pause belongs to training.
    self._lap()
    self._since = None

  def resume(self) -> None:
    self._since = time.time()

  def take_interval(self) -> tuple[int, float]:
    """(steps, seconds) since the previous call."""
    self._lap()
    out = (self.steps, self.secs)
    self.total_steps += self.steps
    self.total_secs += self.secs
    self.steps, self.secs = 0, 0.0
    return out

  def totals(self) -> tuple[int, float]:
    """(steps, seconds) since the clock started."""
    self._lap()
    return self.total_steps + self.steps, self.total_secs + self.secs


def _add(a, b):
  return tuple(x + y for x, y in zip(a, b))


def _format_secs(secs: float) -> str:
  secs = int(max(secs, 0))
  return f"{secs // 3600}:{secs % 3600 // 60:02d}:{secs % 60:02d}"


def _improved(value: float, best: float | None, mode: str) -> bool:
  if not math.isfinite(value):
    return False
  if best is None:
    return True
  return value < best if mode == "min" else value > best


def num_steps_per_epoch(num_train_examples: int, batch_size: int) -> int:
  steps = num_train_examples // batch_size
  if steps == 0:
    raise ValueError(
      f"the train split has {num_train_examples} examples, fewer than one batch of {batch_size}"
    )
  return steps


# --- The job. --------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint), then tests it.

  Args:
    config: a config from `configs/` (see configs/common.py for every field).
    workdir: where checkpoints, logs, image grids and results.json go.

  Returns:
    The final train state (replicated on every device).
  """
  from clu import metric_writers, periodic_actions

  from mask2face import losses, metrics
  from mask2face.data import pipeline
  from mask2face.data.masks import FAMILY_NAMES

  t_start = time.time()
  if config.multihost:
    jax.distributed.initialize()
  setup_compilation_cache(config.compilation_cache_dir, config.compilation_cache_min_secs)
  workdir = pathlib.Path(workdir).expanduser()
  is_main = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)
  if is_main:
    write_json_atomic(workdir / "config.json", json.loads(config.to_json_best_effort()))

  mesh = parallel.make_mesh()
  n_hosts, host = jax.process_count(), jax.process_index()
  parallel.check_batch_size(config.batch_size, mesh)
  eval_batch_size = config.eval_batch_size or config.batch_size
  parallel.check_batch_size(eval_batch_size, mesh, what="eval_batch_size")
  logging.info(
    "%d devices (%s) on %d host(s); global batch %d.",
    jax.device_count(),
    jax.devices()[0].device_kind,
    n_hosts,
    config.batch_size,
  )

  # Data: each host reads only the examples its own devices train on.
  prepared = pipeline.prepare_data(config.data, workdir=str(workdir) if is_main else None)
  num_train_examples = len(prepared.splits["train"])
  if config.data.max_examples:  # The pipeline caps every split at this many examples.
    num_train_examples = min(num_train_examples, config.data.max_examples)
  steps_per_epoch = num_steps_per_epoch(num_train_examples, config.batch_size)
  num_train_steps = config.num_train_steps
  if num_train_steps <= 0:
    num_train_steps = config.num_epochs * steps_per_epoch
  eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
  train_iter = iter(
    pipeline.train_loader(
      prepared,
      config.data,
      batch_size=config.batch_size // n_hosts,
      seed=config.seed,
      shard_index=host,
      shard_count=n_hosts,
    )
  )

  def eval_split(split):
    return pipeline.eval_batches(
      prepared,
      config.data,
      split,
      batch_size=eval_batch_size // n_hosts,
      shard_index=host,
      shard_count=n_hosts,
    )

  # Model, optimizer, state.
  model = build_model(config)
  tx, lr_fn = create_optimizer(config, num_train_steps)
  size = config.data.image_size
  state = create_train_state(model, tx, jax.random.PRNGKey(config.seed), (1, size, size, 3), mesh)
  num_params = count_params(state.params)
  logging.info("%s: %s parameters.", config.model_name, f"{num_params:,}")

  # Resume order: (1) the latest checkpoint in workdir/checkpoints (params, optimizer, step,
  # rng, input iterator, early-stopping record); else (2) `config.init_checkpoint` (weights
  # only, e.g. to fine-tune); else (3) the fresh initialisation above.
  ckpt = Checkpointer(
    workdir / "checkpoints",
    max_to_keep=config.max_checkpoints_to_keep,
    best_metric=config.best_metric,
    best_mode=config.best_mode,
  )
  meta = {"best_value": None, "best_step": None, "evals_since_best": 0}
  restored = ckpt.restore_latest(state, train_iter)
  if restored is not None:
    state, train_iter, meta = restored
    logging.info("Resumed from %s at step %d.", ckpt.directory, int(state.step))
  elif config.init_checkpoint:
    state = Checkpointer.load_weights(config.init_checkpoint, state)
    logging.info("Initialised weights from %s.", config.init_checkpoint)
  start_step = int(state.step)

  loss_fn = functools.partial(losses.compute_loss, config.loss)
  p_train_step = make_train_step(model, tx, loss_fn, mesh)
  p_eval_step = make_eval_step(model, loss_fn, mesh)

  writer = metric_writers.create_default_writer(str(workdir), just_logging=not is_main)
  jsonl = MetricsLog(workdir / "metrics.jsonl", resume_step=start_step, enabled=is_main)
  images_dir = workdir / "images"
  if is_main:
    images_dir.mkdir(exist_ok=True)
    writer.write_hparams(
      {k: v for k, v in config.to_dict().items() if isinstance(v, int | float | str | bool)}
    )
  report = periodic_actions.ReportProgress(
    num_train_steps=num_train_steps, writer=writer, every_steps=config.log_every_steps
  )

  def run_eval(step):
    with report.timed("eval"):
      result, _, grid = evaluate(
        p_eval_step,
        state,
        eval_split("validation"),
        mesh,
        family_names=FAMILY_NAMES,
        num_images=config.num_image_grid,
      )
    scalars = {f"eval_{k}": v for k, v in result.items() if "/" not in k}
    writer.write_scalars(step, scalars)
    jsonl.write(step, scalars)
    if grid is not None and is_main:
      atomic.write_image(images_dir / f"eval_{step:07d}.png", grid)
      writer.write_images(step, {"eval_masked_pred_target": grid[None]})
    return scalars

  # The loop. The host only waits on the device for the previous step's finite flag (so the
  # NaN guard names the exact step) and when it logs. `clock` counts training time only:
  # compilation (the first step), evaluation and checkpointing are left out of img/s.
  logging.info(
    "Training steps %d..%d (%d per epoch).", start_step + 1, num_train_steps, steps_per_epoch
  )
  clock = StepClock()
  base_timing = (meta.get("timed_steps", 0), meta.get("train_secs", 0.0))  # Earlier runs.
  pending_metrics: list[dict[str, jax.Array]] = []
  prev_finite = None
  first_step_secs = None
  stopped_early = False
  step = start_step
  if meta.get("stopped_early"):
    # A rerun of a run that stopped early: training is over, only the test is left to redo.
    logging.info("The run stopped early at step %d; not training further.", step)
    stopped_early = True
  while step < num_train_steps and not stopped_early:
    with jax.profiler.StepTraceAnnotation("train", step_num=step + 1):
      batch = parallel.shard_batch(next(train_iter), mesh)
      state, step_metrics = p_train_step(state, batch)
    step += 1
    if prev_finite is not None and not bool(prev_finite[1]):
      raise FloatingPointError(f"non-finite loss or gradient at step {prev_finite[0]}")
    prev_finite = (step, step_metrics["train_finite"])
    pending_metrics.append(step_metrics)
    if first_step_secs is None:
      jax.block_until_ready(state.step)
      first_step_secs = clock.restart()
      logging.info("First step (compilation included) took %.1f s.", first_step_secs)
    else:
      clock.steps += 1
    report(step)

    last = step == num_train_steps
    if step % config.log_every_steps == 0 or last:
      fetched = jax.device_get(pending_metrics)
      pending_metrics = []
      finite = [bool(m["train_finite"]) for m in fetched]
      if not all(finite):
        bad = step - len(fetched) + 1 + finite.index(False)
        raise FloatingPointError(f"non-finite loss or gradient at step {bad}")
      scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
      del scalars["train_finite"]
      scalars["learning_rate"] = float(lr_fn(step - 1))
      steps, secs = clock.take_interval()
      if steps:
        scalars["steps_per_sec"] = steps / secs
        scalars["img_per_sec"] = steps * config.batch_size / secs
        logging.info(
          "step %d/%d: loss %.4f, %.1f img/s, %.2f steps/s, ETA %s",
          step,
          num_train_steps,
          scalars["train_loss"],
          scalars["img_per_sec"],
          scalars["steps_per_sec"],
          _format_secs((num_train_steps - step) * secs / steps),
        )
      writer.write_scalars(step, scalars)
      jsonl.write(step, scalars)

    evaluate_now = step % eval_every == 0 or last
    save_now = step % config.checkpoint_every_steps == 0 or last or ckpt.reached_preemption(step)
    if (evaluate_now or save_now) and not bool(step_metrics["train_finite"]):
      # Never evaluate or checkpoint a broken state.
      raise FloatingPointError(f"non-finite loss or gradient at step {step}")
    if evaluate_now:
      clock.pause(state)
      evaluated = run_eval(step)
      value = float(evaluated[config.best_metric])
      if _improved(value, meta["best_value"], config.best_mode):
        meta.update(best_value=value, best_step=step, evals_since_best=0)
        ckpt.save_best(step, state, metrics={config.best_metric: value}, meta=meta)
      else:
        meta["evals_since_best"] += 1
      patience = config.early_stopping_patience
      if patience > 0 and meta["evals_since_best"] >= patience:
        logging.info(
          "Early stopping at step %d: %s has not improved for %d evaluations (best %.5g at %d).",
          step,
          config.best_metric,
          patience,
          meta["best_value"],
          meta["best_step"],
        )
        stopped_early = meta["stopped_early"] = True
      clock.resume()
    if save_now or stopped_early:
      clock.pause(state)
      meta["timed_steps"], meta["train_secs"] = _add(base_timing, clock.totals())
      ckpt.save(step, state, train_iter, meta=meta)
      clock.resume()
    if stopped_early:
      break
  meta["timed_steps"], meta["train_secs"] = _add(base_timing, clock.totals())

  # The test split, with the best weights when validation picked some.
  test_state = state
  if meta.get("best_step") is not None:
    test_state = ckpt.restore_best(state) or state
  identity = (
    metrics.IdentityScorer(fallback_margin=config.data.margin) if (config.identity_metric) else None
  )
  test_result, baseline_result, grid = evaluate(
    p_eval_step,
    test_state,
    eval_split("test"),
    mesh,
    family_names=FAMILY_NAMES,
    identity_scorer=identity,
    num_images=config.num_image_grid,
  )
  writer.write_scalars(step, {f"test_{k}": v for k, v in test_result.items() if "/" not in k})
  writer.flush()
  ckpt.close()
  timed_steps, train_secs = meta["timed_steps"], meta["train_secs"]
  results = {
    "config_name": config.name,
    "architecture": config.model_name,
    "model": config.model.to_dict(),
    "num_params": num_params,
    "test": test_result,
    "baseline": baseline_result,
    "test_checkpoint_step": meta.get("best_step") or step,
    "best_metric": {config.best_metric: meta.get("best_value")},
    "steps": step,
    "stopped_early": stopped_early,
    "num_train_examples": num_train_examples,
    "wall_secs": time.time() - t_start,
    "train_secs": train_secs,
    "first_step_secs": first_step_secs,
    # Over every run of this workdir, first steps (compilation) left out.
    "img_per_sec": timed_steps * config.batch_size / train_secs if train_secs > 0 else None,
    "steps_per_sec": timed_steps / train_secs if train_secs > 0 else None,
    "device_kind": jax.devices()[0].device_kind,
    "device_count": jax.device_count(),
    "process_count": n_hosts,
    "platform": platform.node(),
    "git_commit": git_commit(),
  }
  if is_main:
    if grid is not None:
      atomic.write_image(images_dir / "test.png", grid)
    write_json_atomic(workdir / "results.json", results)
  logging.info(
    "Test: masked PSNR %.2f dB (masked input %.2f dB), PSNR %.2f dB, SSIM %.4f.",
    test_result.get("masked_psnr", float("nan")),
    baseline_result.get("masked_psnr", float("nan")),
    test_result.get("psnr", float("nan")),
    test_result.get("ssim", float("nan")),
  )
  return state
