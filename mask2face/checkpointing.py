"""Checkpoints of a training run: orbax managers for the latest steps and for the best one.

`workdir/checkpoints/<step>/` holds the train state (params, BatchNorm statistics, optimizer,
step, rng), the grain input iterator and a small JSON record (`bookkeeping.RunProgress`).
`workdir/checkpoints/best/<step>/` keeps the single best state by the validation metric, which
the final test evaluation uses. Paths are `etils.epath` paths, so `gs://` workdirs work.

What makes a run survive being killed at any moment (tests/test_preemption.py):
- orbax writes each save into `<step>.orbax-checkpoint-tmp-*` and renames it when complete, so
  a kill mid-save leaves a temporary folder that the managers ignore (it is logged, not
  deleted);
- a rerun replays the steps after the last complete save exactly, so a step may come round
  again that one of the managers already holds (typically the best one, saved just before the
  kill): that save is skipped, the folder on disk already holds the same state;
- a step folder that cannot be restored is moved to `checkpoints/unreadable/` with a warning
  naming it, and the run resumes from the one before (nothing is deleted);
- `Preemption` turns the scheduler's SIGTERM into a save at the next step boundary.
"""

import datetime
import signal
import threading
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from mask2face import parallel

UNREADABLE_DIR = "unreadable"


def as_path(path) -> epath.Path:
  """`path` as an epath (local or remote: `gs://...`), `~` expanded, local paths absolute."""
  path = epath.Path(path).expanduser()
  return path if "://" in str(path) else path.resolve()


def _abstract(tree: Any) -> Any:
  """Shapes, dtypes and shardings of `tree`: the restore target, so leaves land where they were."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class _IteratorState:
  """The input iterator's state at the save, frozen (orbax may write it from another thread)."""

  def __init__(self, state: bytes):
    self._state = state

  def get_state(self) -> bytes:
    return self._state


def _log_interrupted_saves(directory: epath.Path) -> None:
  if directory.exists():
    for path in sorted(directory.glob("*.orbax-checkpoint-tmp*")):
      logging.warning("Ignoring %s: a save interrupted before it completed.", path)


class Checkpointer:
  """The periodic (`max_to_keep` latest) and best checkpoints of one workdir."""

  def __init__(
    self, directory, *, max_to_keep: int = 3, best_metric: str = "", best_mode: str = "min"
  ):
    if best_mode not in ("min", "max"):
      raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
    self.directory = as_path(directory)
    self.best_metric = best_metric
    _log_interrupted_saves(self.directory)
    _log_interrupted_saves(self.directory / "best")
    self._latest = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
      item_names=("state", "data_iter", "meta"),
      item_handlers={"data_iter": grain.checkpoint.CheckpointHandler()},
    )
    self._best = ocp.CheckpointManager(
      self.directory / "best",
      options=ocp.CheckpointManagerOptions(
        max_to_keep=1,
        best_fn=lambda metrics: float(metrics[best_metric]),
        best_mode=best_mode,
        keep_checkpoints_without_metrics=False,
        create=True,
      ),
      item_names=("state", "meta"),
    )

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def save(self, step: int, state, data_iter, *, meta: dict) -> None:
    """Saves everything needed to resume at `step` (asynchronously)."""
    if step in self._latest.all_steps():
      logging.info("Checkpoint %s/%d exists already; not saving it again.", self.directory, step)
      return
    self._latest.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=grain.checkpoint.CheckpointSave(_IteratorState(data_iter.get_state())),
        meta=ocp.args.JsonSave(dict(meta)),
      ),
      force=True,
    )

  def save_best(self, step: int, state, *, metrics: dict, meta: dict) -> None:
    """Offers `state` as the best so far; orbax keeps it only if `metrics` beat the kept one.

    A step the best manager already holds is skipped: a rerun replaying the steps after its
    last complete save reaches it again with the same state (the run was killed after it).
    """
    if step in self._best.all_steps():
      logging.info("Best checkpoint %s/best/%d exists already.", self.directory, step)
      return
    self._best.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))
      ),
      metrics={k: float(v) for k, v in metrics.items()},
      force=True,
    )

  def restore_latest(self, state_like, data_iter):
    """(state, data_iter, meta) from the latest readable checkpoint, or None when there is none.

    `state_like` gives the structure and shardings to restore into; `data_iter` is restored in
    place to the position it had at the save. Unreadable checkpoints are set aside.
    """
    for step in reversed(self._latest.all_steps()):
      logging.info("Restoring checkpoint %s/%d.", self.directory, step)
      try:
        restored = self._latest.restore(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract(state_like)),
            data_iter=grain.checkpoint.CheckpointRestore(data_iter),
            meta=ocp.args.JsonRestore(),
          ),
        )
        ok = True
      except Exception as e:  # Whatever a damaged folder raises (orbax, tensorstore, JSON).
        logging.warning(
          "Checkpoint %s/%d is unreadable: %s: %s", self.directory, step, type(e).__name__, e
        )
        ok = False
      if parallel.all_hosts(ok):
        return restored.state, restored.data_iter, dict(restored.meta)
      self._set_aside(self._latest, step)
    return None

  def restore_best(self, state_like):
    """The best state kept so far, or None (also when it is unreadable: it is set aside)."""
    self._best.wait_until_finished()
    step = self._best.best_step()
    if step is None:
      return None
    logging.info("Restoring the best checkpoint %s/best/%d.", self.directory, step)
    try:
      restored = self._best.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(state_like)))
      )
      ok = True
    except Exception as e:  # As in restore_latest.
      logging.warning("Best checkpoint %s/best/%d is unreadable: %s", self.directory, step, e)
      ok = False
    if parallel.all_hosts(ok):
      return restored.state
    self._set_aside(self._best, step)
    return None

  def _set_aside(self, manager: ocp.CheckpointManager, step: int) -> None:
    """Moves an unreadable step folder to `checkpoints/unreadable/` (kept for inspection)."""
    source = manager.directory / str(step)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = self.directory / UNREADABLE_DIR / f"{source.parent.name}-{step}-{stamp}"
    if jax.process_index() == 0:
      target.parent.mkdir(parents=True, exist_ok=True)
      source.rename(target)
      logging.warning("Skipped checkpoint %s (unreadable); moved it to %s.", source, target)
    parallel.sync(f"checkpoint set aside {source}")
    manager.reload()

  @staticmethod
  def load_weights(path, state_like):
    """Params and BatchNorm statistics from another run's step folder or a bundled model.

    `path` is a step folder of another run (`.../checkpoints/<step>`) or `bundled:NAME` (the
    weights shipped in `mask2face/pretrained/`, see `mask2face.bundled`). Only the weights are
    read, so the other run may have had another optimizer or state layout; the optimizer,
    step and rng of `state_like` are kept: this starts a new run from trained weights rather
    than resuming an old one.
    """
    from mask2face import bundled

    if str(path).startswith(bundled.PREFIX):
      name = str(path)[len(bundled.PREFIX) :]
      variables = bundled.load_variables(bundled.WEIGHTS_DIR / f"{name}.npz")
    else:
      path = as_path(path)
      if not (path / "state").is_dir():
        raise ValueError(f"{path}: not a mask2face checkpoint step folder (no 'state' inside)")
      with ocp.StandardCheckpointer() as checkpointer:
        saved = checkpointer.restore(path / "state")
      variables = {"params": saved["params"], "batch_stats": saved.get("batch_stats") or {}}
    return state_like.replace(
      params=_placed_like(variables["params"], state_like.params, path, "parameters"),
      batch_stats=_placed_like(
        variables.get("batch_stats") or {}, state_like.batch_stats, path, "BatchNorm statistics"
      ),
    )

  def wait_until_finished(self) -> None:
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    self._best.close()


def _placed_like(tree, like, source, what: str):
  """`tree`'s arrays with `like`'s dtypes and shardings; a clear error when they do not fit."""
  shapes = jax.tree.map(lambda x: tuple(np.shape(x)), tree)
  wanted = jax.tree.map(lambda x: tuple(x.shape), like)
  if shapes != wanted:
    raise ValueError(
      f"{source}: its {what} do not fit this config's model (another architecture, width or "
      "number of levels?)"
    )
  return jax.tree.map(
    lambda x, ref: jax.device_put(np.asarray(x, ref.dtype), ref.sharding), tree, like
  )


def restore_or_initialize(ckpt: Checkpointer, state, train_iter, config):
  """(state, train iterator, RunProgress) to start from.

  Resume order: (1) the latest readable checkpoint in workdir/checkpoints (params, optimizer,
  step, rng, input iterator, early-stopping record); else (2) `config.init_checkpoint`
  (weights only, e.g. to fine-tune); else (3) the fresh initialisation `state`.
  """
  from mask2face import bookkeeping

  rule = dict(mode=config.best_mode, patience=config.early_stopping_patience)
  restored = ckpt.restore_latest(state, train_iter)
  if restored is not None:
    state, train_iter, saved = restored
    logging.info("Resumed from %s at step %d.", ckpt.directory, int(state.step))
    return state, train_iter, bookkeeping.RunProgress.from_json(saved, **rule)
  if config.init_checkpoint:
    state = Checkpointer.load_weights(config.init_checkpoint, state)
    logging.info("Initialised weights from %s.", config.init_checkpoint)
  return state, train_iter, bookkeeping.RunProgress(**rule)


class Preemption:
  """Turns a scheduler's SIGTERM into 'save at the next step boundary, then stop'.

  On one host a SIGTERM handler sets a flag (installed while the context is open, in the main
  thread). On several hosts JAX's preemption service (started by `jax.distributed.initialize`)
  catches SIGTERM itself and `reached(step)` is its sync point: every host gets True at the
  same step, whichever of them was signalled.
  """

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self) -> "Preemption":
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self.requested = True
    logging.warning("SIGTERM: saving a checkpoint after the current step, then stopping.")

  def reached(self, step: int) -> bool:
    """Whether to save at `step` and stop; call it at every step (a sync point on hosts)."""
    if jax.process_count() > 1:
      return ocp.multihost.reached_preemption(step)
    return self.requested


def restore_weights(directory, *, which: str = "best") -> dict:
  """{'params', optionally 'batch_stats'} of a run's checkpoint, as numpy arrays.

  For inference and export, which have no optimizer to restore into: reads `directory/best`'s
  step when `which='best'` and one exists, else the latest `directory/<step>`, untargeted.
  """
  root = as_path(directory)

  def steps(folder):
    return sorted(
      int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "state").is_dir()
    )

  candidates = [root / "best", root] if which == "best" else [root]
  for folder in candidates:
    found = steps(folder) if folder.is_dir() else []
    if found:
      path = folder / str(found[-1]) / "state"
      break
  else:
    raise ValueError(f"{root}: no checkpoint found (expected <step>/state folders)")
  logging.info("Restoring weights from %s", path)
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(path)
  if not isinstance(state, dict) or "params" not in state:
    raise ValueError(f"{path}: not a mask2face train state (no 'params')")
  variables = {"params": state["params"]}
  if state.get("batch_stats"):
    variables["batch_stats"] = state["batch_stats"]
  return variables
