"""What the training loop records on the host: progress, timing, logs and the results record.

- `RunProgress`: early stopping and training-time totals, saved with every checkpoint as JSON.
- `StepClock`: seconds spent training, with compilation, evaluation and checkpointing left out;
  `log_progress` writes the progress line from its rates.
- `MetricsLog`: `workdir/metrics.jsonl`, one JSON object per logged step; `RunLog`: everything
  a training run writes as it goes (TensorBoard, metrics.jsonl, image grids; process 0 only),
  and `train_scalars`, the means it logs.
- `results_record`: the `workdir/results.json` of a finished run, read by `experiments.report`;
  `log_results` writes its test line.
- `git_commit`: the checkout's commit, recorded by the trainer and by the experiment runner.

jax is imported only where it is used: the experiment runner imports this module for
`git_commit` and stays a light process that never touches an accelerator.
"""

import contextlib
import dataclasses
import json
import math
import pathlib
import platform
import subprocess
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from absl import logging

from mask2face import atomic

# --- Files. ----------------------------------------------------------------------------------


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  """Writes `obj` as sorted, indented JSON; numpy and jax values become numbers or lists."""
  atomic.write_json(path, obj, sort_keys=True, default=_json_default)


def _json_default(x):
  import jax

  if isinstance(x, np.generic | np.ndarray | jax.Array):
    return np.asarray(x).tolist()
  return str(x)


def _to_python(v):
  v = np.asarray(v)
  return v.item() if v.ndim == 0 else v.tolist()


class MetricsLog:
  """`workdir/metrics.jsonl`: one JSON object per logged step, read by notebooks with pandas.

  `path` may be remote (`gs://...`, an etils.epath): object stores cannot append, so there the
  whole file is rewritten at each line (it is small).
  """

  def __init__(self, path, *, resume_step: int, enabled: bool = True):
    from etils import epath

    self.path = epath.Path(path)
    self.enabled = enabled
    self._remote = "://" in str(path)
    self._text = ""
    if enabled and self.path.exists():
      # Lines past the resumed checkpoint describe steps that will be trained again: drop them.
      kept = [line for line in self.path.read_text().splitlines() if _step_of(line) <= resume_step]
      self._text = "".join(line + "\n" for line in kept)
      atomic.write_text(self.path, self._text)

  def write(self, step: int, values: Mapping[str, Any]) -> None:
    """Appends one line: a reader sees every line written so far (a log, not a snapshot)."""
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _to_python(v) for k, v in values.items()}}
    line = json.dumps(record) + "\n"
    if self._remote:
      self._text += line
      atomic.write_text(self.path, self._text)
    else:
      with self.path.open("a") as f:
        f.write(line)


def _step_of(line: str) -> float:
  """A metrics.jsonl line's step; +inf for a blank line or one torn by a kill mid-write."""
  try:
    return json.loads(line).get("step", 0) if line.strip() else math.inf
  except json.JSONDecodeError:
    logging.warning("Dropping a torn line of metrics.jsonl: %r", line[:80])
    return math.inf


def git_commit() -> str:
  """The checkout's commit, '-dirty' when it has uncommitted changes ('unknown' outside git)."""
  try:
    out = subprocess.run(
      ["git", "describe", "--always", "--dirty", "--abbrev=40"],
      cwd=pathlib.Path(__file__).resolve().parent,
      capture_output=True,
      text=True,
      timeout=30,
      check=True,
    )
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  return out.stdout.strip() or "unknown"


# --- Progress and time. ----------------------------------------------------------------------


@dataclasses.dataclass
class RunProgress:
  """Early stopping and training-time totals: what a resume needs besides the train state.

  Saved with every checkpoint as a JSON dict (`to_json`, `from_json`). `mode` and `patience`
  are the rule, from the config, and are not saved.
  """

  mode: str = "min"  # Whether the watched metric improves downwards ('min') or up ('max').
  patience: int = 0  # Evaluations without improvement before stopping; 0 never stops.
  best_value: float | None = None
  best_step: int | None = None
  evals_since_best: int = 0
  stopped_early: bool = False
  # Over every run of the workdir, first steps (compilation) left out.
  timed_steps: int = 0
  train_secs: float = 0.0

  _RULE = ("mode", "patience")

  def record(self, step: int, value: float) -> bool:
    """Counts one evaluation; True when `value` is the best so far (NaN never is)."""
    improved = math.isfinite(value) and (
      self.best_value is None
      or (value < self.best_value if self.mode == "min" else value > self.best_value)
    )
    if improved:
      self.best_value, self.best_step, self.evals_since_best = value, step, 0
    else:
      self.evals_since_best += 1
    return improved

  def should_stop(self) -> bool:
    return self.patience > 0 and self.evals_since_best >= self.patience

  def summary(self, metric: str) -> str:
    """Why it stops, for the log."""
    best = "none" if self.best_value is None else f"{self.best_value:.5g}"
    return (
      f"{metric} has not improved for {self.evals_since_best} evaluations "
      f"(best {best} at step {self.best_step})."
    )

  def to_json(self) -> dict[str, Any]:
    return {
      f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self._RULE
    }

  @classmethod
  def from_json(cls, saved: Mapping[str, Any], **rule: Any) -> "RunProgress":
    """Reads `to_json`'s dict; missing keys (older checkpoints saved fewer) keep defaults."""
    names = {f.name for f in dataclasses.fields(cls)} - set(cls._RULE)
    return cls(**rule, **{k: v for k, v in saved.items() if k in names})


class StepClock:
  """Seconds spent training, with compilation, evaluation and checkpointing left out.

  `totals()` starts from `steps` and `secs` (earlier runs of the workdir, when resuming).
  """

  def __init__(self, steps: int = 0, secs: float = 0.0):
    self.steps, self.secs = 0, 0.0  # Since the last `take_rates`.
    self.total_steps, self.total_secs = steps, secs  # Before the last `take_rates`.
    self._since: float | None = time.time()
    self.first_step_secs: float | None = None  # Set by the first `tick`.

  def _lap(self) -> None:
    if self._since is not None:
      now = time.time()
      self.secs += now - self._since
      self._since = now

  def tick(self, ready=None) -> None:
    """Counts one step. The first one compiles: it is waited for (`ready`) and left out."""
    if self.first_step_secs is None:
      import jax

      jax.block_until_ready(ready)
      self._lap()
      self.first_step_secs, self.secs, self.steps = self.secs, 0.0, 0
      logging.info("First step (compilation included) took %.1f s.", self.first_step_secs)
    else:
      self.steps += 1

  @contextlib.contextmanager
  def paused(self, state=None) -> Iterator[None]:
    """Leaves the time inside the block out; work dispatched before it (`state`) counts."""
    if state is not None:
      import jax

      jax.block_until_ready(state)
    self._lap()
    self._since = None
    try:
      yield
    finally:
      self._since = time.time()

  def take_rates(self, batch_size: int) -> dict[str, float]:
    """`steps_per_sec` and `img_per_sec` since the previous call ({} if no step was timed)."""
    self._lap()
    steps, secs = self.steps, self.secs
    self.total_steps += steps
    self.total_secs += secs
    self.steps, self.secs = 0, 0.0
    if not steps:
      return {}
    return {"steps_per_sec": steps / secs, "img_per_sec": steps * batch_size / secs}

  def totals(self) -> tuple[int, float]:
    """(steps, seconds) in all."""
    self._lap()
    return self.total_steps + self.steps, self.total_secs + self.secs


def log_progress(step: int, num_train_steps: int, scalars: Mapping[str, float]) -> None:
  """The progress line of a logged step: loss, throughput and the time left."""
  if "steps_per_sec" not in scalars:
    return  # No timed step since the last line (the first step only compiled).
  logging.info(
    "step %d/%d: loss %.4f, %.1f img/s, %.2f steps/s, ETA %s",
    step,
    num_train_steps,
    scalars["train_loss"],
    scalars["img_per_sec"],
    scalars["steps_per_sec"],
    _format_secs((num_train_steps - step) / scalars["steps_per_sec"]),
  )


def _format_secs(secs: float) -> str:
  """H:MM:SS."""
  secs = int(max(secs, 0))
  return f"{secs // 3600}:{secs % 3600 // 60:02d}:{secs % 60:02d}"


# --- What a run writes while it trains. ---------------------------------------------------


class RunLog:
  """A run's records: TensorBoard (clu), `metrics.jsonl` and image grids.

  Only process 0 writes files; the other hosts log to the console.
  """

  def __init__(self, config, workdir, *, resume_step: int):
    import jax
    from clu import metric_writers

    self.is_main = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(str(workdir), just_logging=not self.is_main)
    self.jsonl = MetricsLog(
      workdir / "metrics.jsonl", resume_step=resume_step, enabled=self.is_main
    )
    self.images = workdir / "images"
    if self.is_main:
      self.images.mkdir(parents=True, exist_ok=True)
      hparams = {
        k: v for k, v in config.to_dict().items() if isinstance(v, int | float | str | bool)
      }
      self.writer.write_hparams(hparams)

  def scalars(self, step: int, scalars: Mapping[str, float], *, jsonl: bool = True) -> None:
    self.writer.write_scalars(step, scalars)
    if jsonl:
      self.jsonl.write(step, scalars)

  def grid(self, name: str, step: int, grid: np.ndarray | None, *, tag: str = "") -> None:
    """Writes `images/<name>.png` (and to TensorBoard under `tag`, if given)."""
    if grid is None or not self.is_main:
      return
    atomic.write_image(self.images / f"{name}.png", grid)
    if tag:
      self.writer.write_images(step, {tag: grid[None]})


def train_scalars(pending, step: int, lr_fn, clock: StepClock, batch_size: int) -> dict[str, float]:
  """Means of the steps since the last log line, the learning rate and the throughput."""
  import jax

  fetched = jax.device_get([m for _, m in pending])
  scalars = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0] if k != "train_finite"}
  scalars["learning_rate"] = float(lr_fn(step - 1))
  scalars.update(clock.take_rates(batch_size))
  return scalars


# --- The results record. -----------------------------------------------------------------------


def results_record(
  config,
  progress: RunProgress,
  *,
  steps: int,
  num_params: int,
  num_train_examples: int,
  test: Mapping[str, float],
  baseline: Mapping[str, float],
  wall_secs: float,
  first_step_secs: float | None,
) -> dict[str, Any]:
  """`results.json` of a finished run: config, size, test metrics, timing, machine, commit."""
  import jax

  from mask2face.models import layers

  timed_steps, train_secs = progress.timed_steps, progress.train_secs
  return {
    "config_name": config.name,
    "architecture": config.model_name,
    "model": config.model.to_dict(),
    # 'auto' as resolved on this run's devices (bfloat16 on GPU/TPU, float32 on CPU).
    "compute_dtype": layers.resolve_dtype(config.model.get("dtype")).name,
    "num_params": num_params,
    "test": dict(test),
    "baseline": dict(baseline),
    "test_checkpoint_step": progress.best_step or steps,
    "best_metric": {config.best_metric: progress.best_value},
    "steps": steps,
    "stopped_early": progress.stopped_early,
    "num_train_examples": num_train_examples,
    "wall_secs": wall_secs,
    "train_secs": train_secs,
    "first_step_secs": first_step_secs,
    # Over every run of this workdir, first steps (compilation) left out.
    "img_per_sec": timed_steps * config.batch_size / train_secs if train_secs > 0 else None,
    "steps_per_sec": timed_steps / train_secs if train_secs > 0 else None,
    "device_kind": jax.devices()[0].device_kind,
    "device_count": jax.device_count(),
    "process_count": jax.process_count(),
    "platform": platform.node(),
    "git_commit": git_commit(),
  }


def log_results(results: Mapping[str, Any]) -> None:
  """The test line of a finished run, from its `results_record`."""
  test, baseline = results["test"], results["baseline"]
  logging.info(
    "Test: masked PSNR %.2f dB (masked input %.2f dB), PSNR %.2f dB, SSIM %.4f.",
    test.get("masked_psnr", float("nan")),
    baseline.get("masked_psnr", float("nan")),
    test.get("psnr", float("nan")),
    test.get("ssim", float("nan")),
  )
