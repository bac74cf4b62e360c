"""Training and evaluation of the inpainting models, data-parallel over every device.

`train_and_evaluate(config, workdir)` is the whole job: it prepares the data, builds the model
named by `config.model_name`, resumes from `workdir/checkpoints` when a previous run left one,
trains with periodic validation, logging and checkpoints, then evaluates the test split and
writes `workdir/results.json`. The step functions are pure, at module level, and written
per device as under pmap (see `mask2face.parallel`). Evaluation passes are
`mask2face.evaluation`'s; checkpoints, the resume order and preemption
`mask2face.checkpointing`'s; the host's records (early stopping, timing, metrics.jsonl,
results.json) `mask2face.bookkeeping`'s; process set-up (multi-host, compilation cache)
`mask2face.main`'s.
"""

import functools
import time
from collections.abc import Callable, Mapping
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

from mask2face import (
  bookkeeping,
  checkpointing,
  divergence,
  evaluation,
  hparams,
  input_pipeline,
  parallel,
  workdirs,
)
from mask2face.checkpointing import Checkpointer
from mask2face.models import sampling

AXIS = parallel.AXIS
# (pred, aux, batch, *, loss_weights=) -> (scalar loss, dict of scalar terms):
# losses.compute_loss bound to a config; `loss_weights` only when the state carries them.
LossFn = Callable[..., tuple[Any, Any]]


class TrainState(flax.struct.PyTreeNode):
  """Everything a step changes; arrays only, so orbax saves and restores it as one tree.

  `loss_weights` (float32 scalars, `hparams.loss_weights`) enter the loss as values rather
  than constants, so runs differing only in them share one compiled step; empty: the loss
  function's own numbers.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  loss_weights: Any = flax.struct.field(default_factory=dict)


# --- Building blocks. -------------------------------------------------------------------------


def create_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The 'data' mesh over every device of every host; the batch sizes must divide over it."""
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  eval_batch_size = config.eval_batch_size or config.batch_size
  parallel.check_batch_size(eval_batch_size, mesh, what="eval_batch_size")
  logging.info(
    "%d devices (%s) on %d host(s); global batch %d.",
    jax.device_count(),
    jax.devices()[0].device_kind,
    jax.process_count(),
    config.batch_size,
  )
  return mesh


def create_learning_rate_fn(config: ml_collections.ConfigDict, num_train_steps: int):
  """Constant (optionally after a linear warmup) or warmup then cosine decay: step -> rate."""
  return hparams.make_optimizer(config, num_train_steps)[1]


def create_optimizer(config: ml_collections.ConfigDict, num_train_steps: int):
  """(tx, lr_fn): the config's adam | adamw | sgd, optional global-norm clipping.

  The learning rate, its schedule's numbers, weight decay and clipping norm are values in the
  optimizer state (`hparams`), so a sweep over them compiles the step once.
  """
  return hparams.make_optimizer(config, num_train_steps)


def create_train_state(
  model, tx, rng: jax.Array, input_shape, mesh, *, loss_weights=None
) -> TrainState:
  """Initialises parameters, BatchNorm statistics and optimizer state, replicated on `mesh`.

  The model is initialised on the smallest input that gives it the same variables
  (`models.smallest_input_shape`): the same values as at `input_shape`, for a fraction of the
  compilation. `loss_weights` (optional, `hparams.loss_weights(config.loss)`) go into the
  state as values. Everything the init program needs is an argument, not a constant, so runs
  differing only in hyperparameters share it in the compilation cache.
  """
  from mask2face import models

  init_rng, state_rng = jax.random.split(rng)
  small = models.smallest_input_shape(model, input_shape)
  # An injected optimizer's values, passed in so that they are not constants of the program.
  opt_values = getattr(tx.init({}), "hyperparams", None)

  def init(rng, state_rng, weights, opt_values):
    p_rng, d_rng, l_rng = jax.random.split(rng, 3)
    # train=False: BatchNorm would otherwise pmean over an axis that init does not bind.
    variables = model.init(
      {"params": p_rng, "dropout": d_rng, "latent": l_rng},
      jnp.zeros(small, jnp.float32),
      train=False,
    )
    params = variables["params"]
    opt_state = tx.init(params)
    if opt_values is not None:
      opt_state = opt_state._replace(hyperparams=opt_values)
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      opt_state=opt_state,
      rng=state_rng,
      loss_weights=weights,
    )

  replicated = jax.sharding.NamedSharding(mesh, P())
  weights = {k: jnp.float32(v) for k, v in (loss_weights or {}).items()}
  return jax.jit(init, out_shardings=replicated)(init_rng, state_rng, weights, opt_values)


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


def to_float(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """A batch with float32 images in [0, 1] and mask in {0, 1}, from uint8 or float32 ones.

  The train loader sends uint8 (a quarter of float32's bytes to the device); the cast
  happens here, on the device. Float batches pass through unchanged.
  """
  out = dict(batch)
  for key in ("masked", "clean"):
    if key in out and out[key].dtype == jnp.uint8:
      out[key] = out[key].astype(jnp.float32) / 255.0
  if "mask" in out and out["mask"].dtype == jnp.uint8:
    out["mask"] = out["mask"].astype(jnp.float32)
  return out


def _loss(loss_fn: LossFn, state: TrainState, pred, aux, batch):
  """`loss_fn` in float32, with the state's loss weights as values when it has them."""
  kwargs = {"loss_weights": state.loss_weights} if state.loss_weights else {}
  return loss_fn(_as_float32(pred), _as_float32(aux), batch, **kwargs)


# --- Per-device step functions (run under shard_map, see parallel.data_parallel). ------------


def train_step(state: TrainState, batch, *, model, tx, loss_fn: LossFn, axis_name: str = AXIS):
  """One optimizer step on this device's slice of the batch; gradients averaged over devices.

  Returns the new state and a flat dict of scalar `train_*` metrics (already averaged).
  """
  batch = to_float(batch)
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
    loss, terms = _loss(loss_fn, state, pred, aux, batch)
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


def eval_step(state: TrainState, batch, *, model, loss_fn: LossFn, metrics_fn, num_samples=1):
  """Per-example metrics (and loss) of this device's examples, plus the predictions.

  With `num_samples > 1` (a conditional VAE's `config.num_samples`) the model also draws that
  many completions from its prior (`models.sampling.sample_metrics`): every metric's best and
  mean over them (`samples_S/<metric>_best`, `samples_S/<metric>_mean`) and their diversity
  (`samples_S/diversity`, the mean pairwise L1 inside the mask). The plain metrics and the returned predictions stay those of
  the fixed-key sample, so every row is scored on the same images.
  """
  batch = to_float(batch)
  variables = _variables(state, state.params)
  # Fixed keys: an evaluation is deterministic and independent of the device count.
  pred, aux = model.apply(
    variables,
    batch["masked"],
    train=False,
    rngs={"dropout": jax.random.PRNGKey(0), "latent": jax.random.PRNGKey(0)},
  )
  pred, aux = _as_float32(pred), _as_float32(aux)

  # The loss per example, so padding (valid == 0) can be left out on the host.
  def one_loss(p, a, b):
    add_batch_axis = functools.partial(jax.tree.map, lambda x: x[None])
    return _loss(loss_fn, state, p[None], add_batch_axis(a), add_batch_axis(b))[0]

  per_example = dict(metrics_fn(pred, batch["clean"], batch["mask"]))
  per_example["loss"] = jax.vmap(one_loss)(pred, dict(aux), dict(batch))
  if num_samples > 1:
    per_example.update(
      sampling.sample_metrics(
        model, variables, batch, metrics_fn, num_samples, rng=jax.random.PRNGKey(1)
      )
    )
  per_example["valid"] = batch["valid"]
  per_example["family"] = batch["family"]
  return per_example, pred


def make_train_step(model, tx, loss_fn: LossFn, mesh):
  """The jitted data-parallel train step: (state, sharded batch) -> (state, metrics)."""
  fn = functools.partial(train_step, model=model, tx=tx, loss_fn=loss_fn)
  return parallel.data_parallel(
    fn, mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()), donate_argnums=0
  )


def make_eval_step(model, loss_fn: LossFn, mesh, metrics_fn=None, num_samples: int = 1):
  """The jitted data-parallel eval step: (state, sharded batch) -> (per-example dict, pred)."""
  if metrics_fn is None:
    from mask2face import metrics

    metrics_fn = metrics.image_metrics
  fn = functools.partial(
    eval_step, model=model, loss_fn=loss_fn, metrics_fn=metrics_fn, num_samples=num_samples
  )
  return parallel.data_parallel(fn, mesh, in_specs=(P(), P(AXIS)), out_specs=(P(AXIS), P(AXIS)))


# --- Host-side checks. -------------------------------------------------------------


def check_finite(pending, *, now: bool) -> None:
  """NaN guard, naming the first bad step: waits for the previous step's flag (the device stays
  a step ahead) and, when `now`, for the latest one's too (before logging, evaluating, saving)."""
  for checked_step, m in pending[-2:] if now else pending[-2:-1]:
    if not bool(m["train_finite"]):
      raise FloatingPointError(f"non-finite loss or gradient at step {checked_step}")


# --- The job. --------------------------------------------------------------------------------


@workdirs.locked
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint), then tests it.

  The caller sets up the process first (`mask2face.main`: multi-host, compilation cache).
  The config is checked before anything is written, the call holds the workdir's lock, and
  `config.json` is written only once the data is ready (`mask2face.workdirs`). A SIGTERM (or,
  on several hosts, JAX's preemption notice) saves a checkpoint at the next step boundary and
  returns early, without `results.json`: rerun the command to go on.

  Args:
    config: a config from `configs/` (see configs/common.py for every field).
    workdir: where checkpoints, logs, image grids and results.json go (local or `gs://...`).

  Returns:
    The final train state (replicated on every device).
  """
  from clu import periodic_actions

  from mask2face import identity, losses, models
  from mask2face.data.masks import FAMILY_NAMES

  t_start = time.time()
  workdirs.check_config(config)
  workdir = checkpointing.as_path(workdir)
  is_main = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)
  workdirs.check_resume(workdir, config)

  mesh = create_mesh(config)
  train_iter, eval_batches, prepared = input_pipeline.create_input_pipelines(config, workdir)
  num_train_examples = prepared.num_examples("train")  # Capped at data.max_examples.
  steps_per_epoch = input_pipeline.num_steps_per_epoch(num_train_examples, config.batch_size)
  num_train_steps = config.num_train_steps
  if num_train_steps <= 0:
    num_train_steps = config.num_epochs * steps_per_epoch
  eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
  if is_main:
    workdirs.write_config_record(workdir, config)
  guard = divergence.DivergenceGuard.from_config(config, workdir / "metrics.jsonl")

  model = models.model_from_config(config)
  tx, lr_fn = create_optimizer(config, num_train_steps)
  size = config.data.image_size
  state = create_train_state(
    model,
    tx,
    jax.random.PRNGKey(config.seed),
    (1, size, size, 3),
    mesh,
    loss_weights=hparams.loss_weights(config.loss),
  )
  num_params = count_params(state.params)
  logging.info("%s: %s parameters.", config.model_name, f"{num_params:,}")

  ckpt = Checkpointer(
    workdir / "checkpoints",
    max_to_keep=config.max_checkpoints_to_keep,
    best_metric=config.best_metric,
    best_mode=config.best_mode,
  )
  state, train_iter, progress = checkpointing.restore_or_initialize(ckpt, state, train_iter, config)
  state = hparams.set_values(state, config, num_train_steps)  # The config's, not a checkpoint's.
  start_step = int(state.step)

  loss_fn = functools.partial(losses.compute_loss, config.loss)
  p_train_step = make_train_step(model, tx, loss_fn, mesh)
  p_eval_step = make_eval_step(model, loss_fn, mesh, num_samples=config.get("num_samples", 1))
  log = bookkeeping.RunLog(config, workdir, resume_step=start_step)
  report = periodic_actions.ReportProgress(
    num_train_steps=num_train_steps, writer=log.writer, every_steps=config.log_every_steps
  )
  run_evaluation = functools.partial(
    evaluation.evaluate,
    p_eval_step,
    mesh=mesh,
    family_names=FAMILY_NAMES,
    num_images=config.num_image_grid,
  )

  val_baseline: dict = {}  # The masked input's row: computed on the first validation only.

  def validate(step: int) -> dict[str, float]:
    """Evaluates the validation split; logs its metrics and image grid at `step`."""
    with report.timed("eval"):
      result = run_evaluation(state, eval_batches("validation"), baseline=val_baseline)
    guard.check_eval(step, result.model, result.rows[evaluation.BASELINE_ROW], "validation")
    scalars = {f"eval_{k}": v for k, v in result.model.items() if "/" not in k}
    log.scalars(step, scalars)
    log.grid(f"eval_{step:07d}", step, result.grid, tag="eval_masked_pred_target")
    return scalars

  # The loop. `clock` counts training time only: compilation (the first step), evaluation and
  # checkpointing are left out of img/s. `batches` copies the next batch to the devices while
  # a step runs; its state is the input position after the last batch trained on.
  logging.info(
    "Training steps %d..%d (%d per epoch).", start_step + 1, num_train_steps, steps_per_epoch
  )
  if progress.stopped_early:
    # A rerun of a run that stopped early: training is over, only the test is left to redo.
    logging.info("The run stopped early at step %d; not training further.", start_step)
  clock = bookkeeping.StepClock(progress.timed_steps, progress.train_secs)
  batches = parallel.DevicePrefetch(train_iter, mesh, size=2)
  pending: list[tuple[int, dict[str, jax.Array]]] = []  # (step, metrics) not yet logged.
  step = start_step
  with checkpointing.Preemption() as preemption:
    while step < num_train_steps and not progress.stopped_early:
      with jax.profiler.StepTraceAnnotation("train", step_num=step + 1):
        state, step_metrics = p_train_step(state, next(batches))
      step += 1
      pending.append((step, step_metrics))
      clock.tick(state.step)
      report(step)

      last = step == num_train_steps
      preempted = preemption.reached(step)
      log_now = step % config.log_every_steps == 0 or last
      evaluate_now = step % eval_every == 0 or last
      save_now = step % config.checkpoint_every_steps == 0 or last or preempted
      check_finite(pending, now=log_now or evaluate_now or save_now)
      if log_now:
        scalars = bookkeeping.train_scalars(pending, step, lr_fn, clock, config.batch_size)
        pending = []
        bookkeeping.log_progress(step, num_train_steps, scalars)
        guard.check_loss(step, scalars["train_loss"])
        log.scalars(step, scalars)

      if evaluate_now:
        with clock.paused(state):
          value = float(validate(step)[config.best_metric])
          if progress.record(step, value):
            meta = progress.to_json()
            ckpt.save_best(step, state, metrics={config.best_metric: value}, meta=meta)
        if progress.should_stop():
          progress.stopped_early = True
          logging.info("Early stopping at step %d: %s", step, progress.summary(config.best_metric))
      if save_now or progress.stopped_early:
        with clock.paused(state):
          progress.timed_steps, progress.train_secs = clock.totals()
          ckpt.save(step, state, batches, meta=progress.to_json())
      if preempted and not last:
        ckpt.wait_until_finished()
        ckpt.close()
        log.writer.flush()
        logging.warning("Preempted: checkpoint %d saved; rerun the same command to resume.", step)
        return state
  progress.timed_steps, progress.train_secs = clock.totals()

  # The test split, with the best weights when validation picked some.
  test_state, test_step = workdirs.state_for_test(ckpt, state, progress.best_step, step, guard.warn)
  verifier = None
  if config.identity_metric and identity.dlib_available():
    verifier = identity.CrossPhotoVerifier.from_prepared(prepared, config.data, split="test")
  test = run_evaluation(
    test_state,
    eval_batches("test"),
    baseline={},
    row_fns=[evaluation.comparison_row(verifier)],
  )
  guard.check_eval(step, test.model, test.rows[evaluation.BASELINE_ROW], "test")
  log.scalars(step, {f"test_{k}": v for k, v in test.model.items() if "/" not in k}, jsonl=False)
  log.writer.flush()
  ckpt.close()
  results = bookkeeping.results_record(
    config,
    progress,
    steps=step,
    num_params=num_params,
    num_train_examples=num_train_examples,
    test=test.model,
    baseline=test.rows[evaluation.BASELINE_ROW],
    wall_secs=time.time() - t_start,
    first_step_secs=clock.first_step_secs,
  )
  # The comparison rows (composited, Telea, Navier-Stokes, clean faces' identity) beside them.
  others = {
    k: v for k, v in test.rows.items() if k not in (evaluation.MODEL_ROW, evaluation.BASELINE_ROW)
  }
  results.update(rows=others, test_checkpoint_step=test_step, warnings=guard.warnings)
  if is_main:
    log.grid("test", step, test.grid)
    bookkeeping.write_json_atomic(workdir / "results.json", results)
  bookkeeping.log_results(results)
  return state
