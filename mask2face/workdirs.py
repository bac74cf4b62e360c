"""Run-level checks of a training workdir: the config first, one run at a time, its record.

What `train.train_and_evaluate` does before it trains, in order:
- `check_config(config)`: every value that can be checked without data (step counts, batch
  sizes, an image size the model can take), all problems in one `cli.UserError`, before the
  workdir, the data or the landmark caches are touched.
- `locked`: one run per workdir. `workdir/run.lock` holds the holder's host, pid and start
  time; a second run is refused while the holder lives; a lock whose process is gone (same
  host, dead pid) is stale and taken over with a warning.
- `check_resume(workdir, config)`: a workdir whose `config.json` records another run is
  resumed only by a config that agrees on everything that shapes the checkpoint or the data
  (`RESUME_FIELDS`); step counts, evaluation, logging and checkpoint cadence may change.
- `min_split_sizes(config)`: what `prepare_data` must find in each split before it writes the
  workdir's `splits.json` (train at least one batch, validation and test at least one face).
- `write_config_record(workdir, config)`: `config.json`, written only by a run that starts.
- `state_for_test(...)`: the best checkpoint for the test, or the final state when it is gone.

Workdir paths are `etils.epath.Path`s (local paths behave as `pathlib`); the lock relies on
O_CREAT|O_EXCL, which holds on local and network file systems; on object stores (gs://) the
run goes ahead unlocked, with a warning.
"""

import contextlib
import datetime
import functools
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
from etils import epath

from mask2face import atomic, cli

CONFIG_FILE = "config.json"
LOCK_FILE = "run.lock"
# A lock file without a readable record this old was left by a crash between its creation and
# its first write (milliseconds apart).
UNREADABLE_LOCK_SECS = 60.0

# What a resume must keep: the checkpoint's structure (model, its input size, the optimizer's
# state) and the data it trains and is tested on. A section name covers all of its fields.
RESUME_FIELDS = (
  "model_name",
  "model",
  "data",
  "optimizer",
  "batch_size",
  "seed",
)
# `data` fields that say where or how fast data is read, not what it is.
DATA_FIELDS_FREE_TO_CHANGE = (
  "tfds_data_dir",
  "manual_dir",
  "landmarks_cache",
  "worker_count",
  "worker_buffer_size",
)


# --- The config, before anything else. -------------------------------------------------------


def config_problems(config) -> list[str]:
  """Every problem of `config` found without data; [] when it can start."""
  problems = []

  def need(ok: bool, message: str) -> None:
    if not ok:
      problems.append(message)

  steps = config.num_train_steps
  need(steps == -1 or steps > 0, f"num_train_steps={steps}: positive, or -1 for num_epochs")
  if steps == -1:
    need(config.num_epochs > 0, f"num_epochs={config.num_epochs} must be positive")
  need(config.batch_size > 0, f"batch_size={config.batch_size} must be positive")
  need(config.eval_batch_size >= 0, f"eval_batch_size={config.eval_batch_size}: 0 or positive")
  every = config.eval_every_steps
  need(every == -1 or every > 0, f"eval_every_steps={every}: positive, or -1 for once per epoch")
  for name in ("log_every_steps", "checkpoint_every_steps", "max_checkpoints_to_keep"):
    need(config[name] > 0, f"{name}={config[name]} must be positive")
  need(config.early_stopping_patience >= 0, "early_stopping_patience must be 0 (off) or more")
  need(config.best_mode in ("min", "max"), f"best_mode={config.best_mode!r}: 'min' or 'max'")
  need(not config.learning_rate < 0, f"learning_rate={config.learning_rate} is negative")
  factor = config.get("divergence_factor", 0.0)
  need(factor == 0 or factor > 1, f"divergence_factor={factor}: 0 (off) or above 1")
  data = config.data
  need(data.max_examples >= 0, f"data.max_examples={data.max_examples}: 0 (all) or positive")
  need(data.test_size > 0, f"data.test_size={data.test_size} must be positive")
  need(0 <= data.val_fraction < 1, f"data.val_fraction={data.val_fraction}: from 0 to below 1")
  if data.image_size <= 0:
    problems.append(f"data.image_size={data.image_size} must be positive")
  else:
    problems.extend(filter(None, [image_size_problem(config)]))
  return problems


def check_config(config) -> None:
  """Raises `cli.UserError` listing every problem of `config_problems`."""
  problems = config_problems(config)
  if problems:
    raise cli.UserError("bad config: " + "; ".join(problems))


def _accepts(model, size: int) -> bool:
  """Whether `model` maps a [1, size, size, 3] input to its own shape (traced, not run)."""
  import jax
  import jax.numpy as jnp

  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  rngs = {name: jax.random.key(i) for i, name in enumerate(("params", "dropout", "latent"))}
  try:
    (pred, _), _ = jax.eval_shape(lambda x: model.init_with_output(rngs, x, train=False), x)
  except Exception:  # A shape error of any kind: the size does not fit.
    return False
  return pred.shape == x.shape


def image_size_problem(config) -> str | None:
  """Why the model of `config` cannot take `data.image_size`, or None when it can.

  Found from the model itself (`jax.eval_shape`, no compute), so every architecture and
  depth is covered: a U-Net halves the image at each level and needs a size its
  downsampling divides.
  """
  from mask2face import models

  try:
    model = models.model_from_config(config, axis_name=None)
  except ValueError as e:
    return str(e)
  size = int(config.data.image_size)
  if _accepts(model, size):
    return None
  # The smallest power of two the model's sizes must be multiples of (3 * 2^k is the
  # smallest size at which a factor 2^k divides and no more).
  multiple = next((2**k for k in range(11) if _accepts(model, 3 * 2**k)), None)
  if multiple is None:
    return f"data.image_size={size}: {config.model_name} cannot take this size"
  lower, upper = size // multiple * multiple, -(-size // multiple) * multiple
  nearest = " or ".join(str(s) for s in (lower, upper) if s > 0)
  return (
    f"data.image_size={size}: {config.model_name} needs a multiple of {multiple} "
    f"(its downsampling), e.g. {nearest}"
  )


# --- One run per workdir. ---------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # Another user's process.
  except (OSError, OverflowError, ValueError):
    return False
  return True


class RunLock:
  """`workdir/run.lock`: created exclusively, holding the holder's host, pid and start time."""

  def __init__(self, workdir):
    self.path = epath.Path(workdir) / LOCK_FILE
    self.record = {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "started": datetime.datetime.now().isoformat(timespec="seconds"),
      "command": " ".join(sys.argv),
    }
    self.held = False

  def _holder(self) -> dict | None:
    """The lock's record, or None when it is unreadable (torn or being written)."""
    try:
      record = json.loads(self.path.read_text())
    except (OSError, ValueError):
      return None
    return record if isinstance(record, dict) else None

  def _stale(self, holder: dict | None) -> bool:
    if holder is None:
      try:
        age = time.time() - os.stat(self.path).st_mtime
      except FileNotFoundError:
        return True
      return age > UNREADABLE_LOCK_SECS
    if holder.get("host") != self.record["host"]:
      return False  # Another machine's process cannot be checked from here.
    return not _pid_alive(int(holder.get("pid", -1)))

  def acquire(self) -> None:
    """Takes the lock, or raises `cli.UserError` naming the run that holds it."""
    if "://" in str(self.path):
      # Object stores (gs://) have no exclusive create: one run per workdir is up to the user.
      logging.warning("%s: not locked (exclusive files need a file system)", self.path)
      return
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, atomic.file_mode())
      except FileExistsError:
        holder = self._holder()
        if not self._stale(holder):
          raise cli.UserError(self._refusal(holder)) from None
        # Re-read just before removing: another starter may have replaced it meanwhile.
        if self._holder() != holder:
          continue
        logging.warning("%s: taking over a stale lock (%s)", self.path, self._describe(holder))
        self.path.unlink(missing_ok=True)
        continue
      with os.fdopen(fd, "w") as f:
        f.write(json.dumps(self.record) + "\n")
      self.held = True
      return
    raise cli.UserError(f"{self.path}: could not take the lock (other runs starting at once?)")

  def _describe(self, holder: dict | None) -> str:
    if holder is None:
      return "an unreadable lock file"
    return f"host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('started')}"

  def _refusal(self, holder: dict | None) -> str:
    return (
      f"{self.path.parent} is in use by another run ({self._describe(holder)}): wait for it "
      f"to finish, or delete {self.path} if that run is gone"
    )

  def release(self) -> None:
    """Removes the lock if it is still ours (never another run's)."""
    if self.held and self._holder() == self.record:
      self.path.unlink(missing_ok=True)
    self.held = False


def locked(train_fn: Callable) -> Callable:
  """Decorates `train_and_evaluate(config, workdir)`: the call holds the workdir's lock.

  Only the main process (process 0) takes the lock; with several processes, a refusal there
  is broadcast so that every process stops. A workdir this call created and left empty (a
  refused run) is removed again.
  """

  @functools.wraps(train_fn)
  def wrapped(config, workdir, *args, **kwargs):
    import jax

    path = epath.Path(workdir).expanduser()
    is_main = jax.process_index() == 0
    created = is_main and not path.exists()
    lock, error = RunLock(path), None
    if is_main:
      path.mkdir(parents=True, exist_ok=True)
      try:
        lock.acquire()
      except cli.UserError as e:
        error = e
    if jax.process_count() > 1:
      import numpy as np
      from jax.experimental import multihost_utils

      refused = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
      if refused and error is None:
        error = cli.UserError(f"{path}: process 0 refused the run (see its log)")
    try:
      if error is not None:
        raise error
      return train_fn(config, workdir, *args, **kwargs)
    finally:
      lock.release()
      if created:
        # Only a folder this refused call left empty (epath's rmdir raises ValueError, not
        # OSError, on a folder that is not empty).
        with contextlib.suppress(OSError, ValueError):
          if not any(path.iterdir()):
            path.rmdir()

  return wrapped


# --- The record of the run, and resuming it. ---------------------------------------------------


def config_record(config) -> dict[str, Any]:
  """The config as `config.json` stores it (tuples as lists: what a reread gives)."""
  return json.loads(config.to_json_best_effort())


def write_config_record(workdir, config) -> None:
  """Writes `workdir/config.json` (what predict and export rebuild the model from)."""
  from mask2face import bookkeeping

  bookkeeping.write_json_atomic(epath.Path(workdir) / CONFIG_FILE, config_record(config))


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _resume_view(record: Mapping) -> dict[str, Any]:
  """The dotted fields of a config record that a resume must keep."""
  view = {}
  for field in RESUME_FIELDS:
    if field not in record:
      continue
    value = record[field]
    if isinstance(value, Mapping):
      view.update(_flatten(value, field + "."))
    else:
      view[field] = value
  for field in DATA_FIELDS_FREE_TO_CHANGE:
    view.pop(f"data.{field}", None)
  # Clipping adds a step (and its state) to the optimizer chain; its threshold may change.
  if "grad_clip_norm" in record:
    view["grad_clip_norm > 0"] = float(record["grad_clip_norm"]) > 0
  return view


def resume_differences(stored: Mapping, config) -> list[str]:
  """'field old -> new' for each field a resume must keep but `config` changes.

  A field the stored record lacks (an older mask2face wrote it) is not compared.
  """
  old, new = _resume_view(stored), _resume_view(config_record(config))
  return [
    f"{name} {old[name]!r} -> {new.get(name)!r}"
    for name in sorted(old)
    if name in old and new.get(name) != old[name]
  ]


def check_resume(workdir, config) -> None:
  """Refuses (`cli.UserError`, one line) a config that cannot resume the run in `workdir`."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return  # A new run.
  try:
    stored = atomic.read_json(path, what="the run's config record")
  except ValueError as e:
    raise cli.UserError(f"{e}: cannot tell what this workdir holds; use another workdir") from e
  if not isinstance(stored, dict):
    raise cli.UserError(f"{path}: not a config record; use another workdir")
  differences = resume_differences(stored, config)
  if differences:
    raise cli.UserError(
      f"{workdir} holds a run of another configuration ({'; '.join(differences)}): rerun "
      "with its settings to resume it, or use a new workdir (config.init_checkpoint="
      f"{workdir}/checkpoints/<step> starts from its weights)"
    )


def min_split_sizes(config) -> dict[str, int]:
  """The fewest examples each split needs: one training batch, one face to evaluate."""
  return {"train": int(config.batch_size), "validation": 1, "test": 1}


# --- The test's checkpoint. --------------------------------------------------------------------


def state_for_test(ckpt, state, best_step: int | None, final_step: int, warn: Callable):
  """(state, step) to test: the best checkpoint, or `state` at `final_step` without one.

  A best checkpoint that has gone missing (deleted during the run, a full disk) costs the
  test its best weights, not the run its results: `warn(step, kind, message)` records why.
  """
  if best_step is None:
    return state, final_step
  try:
    best = ckpt.restore_best(state)
  except (OSError, ValueError, KeyError) as e:
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    warn(
      final_step,
      "best_checkpoint_missing",
      f"the best checkpoint (step {best_step}) cannot be restored ({type(e).__name__}: "
      f"{first_line}); testing the final state of step {final_step} instead",
    )
    return state, final_step
  if best is None:
    return state, final_step
  return best, best_step
