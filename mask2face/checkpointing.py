"""Checkpoints of a training run: orbax managers for the latest steps and for the best one.

`workdir/checkpoints/<step>/` holds the train state (params, BatchNorm statistics, optimizer,
step, rng), the grain input iterator and a small JSON record (`bookkeeping.RunProgress`).
`workdir/checkpoints/best/<step>/` keeps the single best state by the validation metric, which
the final test evaluation uses. Saves are asynchronous and atomic (orbax writes a temporary
folder and renames it), so an interrupted save never leaves a half checkpoint behind.
"""

import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


def _abstract(tree: Any) -> Any:
  """Shapes, dtypes and shardings of `tree`: the restore target, so leaves land where they were."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
  """The periodic (`max_to_keep` latest) and best checkpoints of one workdir."""

  def __init__(
    self, directory, *, max_to_keep: int = 3, best_metric: str = "", best_mode: str = "min"
  ):
    if best_mode not in ("min", "max"):
      raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}")
    self.directory = pathlib.Path(directory).expanduser().resolve()
    self.best_metric = best_metric
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

  def reached_preemption(self, step: int) -> bool:
    return self._latest.reached_preemption(step)

  def save(self, step: int, state, data_iter, *, meta: dict) -> None:
    """Saves everything needed to resume at `step` (asynchronously)."""
    self._latest.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data_iter=grain.checkpoint.CheckpointSave(data_iter),
        meta=ocp.args.JsonSave(dict(meta)),
      ),
      force=True,
    )

  def save_best(self, step: int, state, *, metrics: dict, meta: dict) -> None:
    """Offers `state` as the best so far; orbax keeps it only if `metrics` beat the kept one."""
    self._best.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta))
      ),
      metrics={k: float(v) for k, v in metrics.items()},
      force=True,
    )

  def restore_latest(self, state_like, data_iter):
    """(state, data_iter, meta) from the latest checkpoint, or None when there is none.

    `state_like` gives the structure and shardings to restore into; `data_iter` is restored in
    place to the position it had at the save.
    """
    step = self._latest.latest_step()
    if step is None:
      return None
    logging.info("Restoring checkpoint %s/%d.", self.directory, step)
    restored = self._latest.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state_like)),
        data_iter=grain.checkpoint.CheckpointRestore(data_iter),
        meta=ocp.args.JsonRestore(),
      ),
    )
    return restored.state, restored.data_iter, dict(restored.meta)

  def restore_best(self, state_like):
    """The best state kept so far, or None."""
    self._best.wait_until_finished()
    step = self._best.best_step()
    if step is None:
      return None
    logging.info("Restoring the best checkpoint %s/best/%d.", self.directory, step)
    restored = self._best.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(state_like)))
    )
    return restored.state

  @staticmethod
  def load_weights(path, state_like):
    """Params and BatchNorm statistics from another run's checkpoint folder (`.../<step>`).

    The optimizer, step and rng of `state_like` are kept: this starts a new run from trained
    weights rather than resuming an old one.
    """
    path = pathlib.Path(path).expanduser().resolve()
    if not (path / "state").is_dir():
      raise ValueError(f"{path}: not a mask2face checkpoint step folder (no 'state' inside)")
    # The whole saved state is read (same model, same optimizer), then only weights kept.
    with ocp.StandardCheckpointer() as checkpointer:
      restored = checkpointer.restore(path / "state", _abstract(state_like))
    return state_like.replace(params=restored.params, batch_stats=restored.batch_stats)

  def wait_until_finished(self) -> None:
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    self._best.close()


def restore_weights(directory, *, which: str = "best") -> dict:
  """{'params', optionally 'batch_stats'} of a run's checkpoint, as numpy arrays.

  For inference and export, which have no optimizer to restore into: reads `directory/best`'s
  step when `which='best'` and one exists, else the latest `directory/<step>`, untargeted.
  """
  root = pathlib.Path(directory).expanduser().resolve()

  def steps(folder):
    return sorted(int(p.name) for p in folder.glob("[0-9]*") if (p / "state").is_dir())

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
