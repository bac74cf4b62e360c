"""The divergence guard: a run that went wrong without a NaN is said so, or stopped.

A learning rate far too high rarely gives a NaN: outputs saturate, the loss settles high and the
run "succeeds" with a dead model. Two signs give it away, and the NaN guard sees neither:
- the training loss grows far above its starting value (`config.divergence_factor` times the
  first logged loss; 0 turns this check off);
- an evaluation is worse than the masked input itself, on the masked-region counterpart of
  `config.best_metric` (eval_masked_psnr for eval_loss): the model destroys what it is
  given. The first evaluations of a young model may be; a trained one never should.

Each sign is a warning in the log and in `results.json` (`warnings`). With
`config.stop_on_divergence` the run stops (`DivergenceError`, no results.json): at once on the
loss, and on the second evaluation in a row that is worse than the masked input (one bad
evaluation is allowed: an untrained model is often worse than its input). The guard also
collects the trainer's other warnings (a fallback taken), so results.json lists them all.
"""

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from absl import logging

# Metrics that improve upwards; every other (l1, loss) improves downwards.
_HIGHER_IS_BETTER = ("psnr", "ssim")
# Evaluations in a row worse than the masked input that stop a run (stop_on_divergence).
STOP_AFTER_BAD_EVALS = 2


class DivergenceError(FloatingPointError):
  """Training diverged (stop_on_divergence); the message names the step and the sign."""


def masked_counterpart(best_metric: str) -> str:
  """The baseline metric an evaluation is compared on: `eval_ssim` -> `masked_ssim`."""
  name = best_metric.removeprefix("eval_").removeprefix("test_")
  if name.startswith("masked_"):
    return name
  if any(name.endswith(m) for m in ("psnr", "ssim", "l1")):
    return f"masked_{name}"
  return "masked_psnr"  # The loss has no masked-input counterpart.


def higher_is_better(metric: str) -> bool:
  return any(m in metric for m in _HIGHER_IS_BETTER)


def first_logged_loss(path) -> float | None:
  """The first finite `train_loss` of a metrics.jsonl, or None (no file, no such line)."""
  try:
    with open(path) as f:
      for line in f:
        try:
          loss = json.loads(line).get("train_loss")
        except (ValueError, AttributeError):
          continue  # A torn line.
        if isinstance(loss, int | float) and math.isfinite(loss):
          return float(loss)
  except OSError:
    pass
  return None


@dataclasses.dataclass
class DivergenceGuard:
  """Watches a run's logged losses and evaluations; `warnings` go into results.json."""

  factor: float = 10.0  # Loss above factor x the first logged loss; 0 = off.
  stop: bool = False
  metric: str = "masked_psnr"
  warnings: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  first_loss: float | None = None
  bad_evals: int = 0  # Consecutive evaluations worse than the masked input.

  @classmethod
  def from_config(cls, config, metrics_log=None) -> "DivergenceGuard":
    """The guard of `config`; a resumed run's reference loss is the first in `metrics_log`
    (the workdir's metrics.jsonl), not the first after the resume."""
    guard = cls(
      factor=float(config.get("divergence_factor", 10.0)),
      stop=bool(config.get("stop_on_divergence", False)),
      metric=masked_counterpart(config.best_metric),
    )
    guard.first_loss = first_logged_loss(metrics_log) if metrics_log else None
    return guard

  def warn(self, step: int, kind: str, message: str) -> None:
    """Logs a warning and records it; a kind already recorded only updates its last step."""
    logging.warning("Step %d: %s", step, message)
    for seen in self.warnings:
      if seen["kind"] == kind:
        seen["last_step"], seen["count"] = int(step), seen["count"] + 1
        return
    record = {"kind": kind, "step": int(step), "last_step": int(step), "count": 1}
    self.warnings.append({**record, "message": message})

  def _diverged(self, step: int, kind: str, message: str, *, stop_now: bool) -> None:
    self.warn(step, kind, message)
    if self.stop and stop_now:
      raise DivergenceError(f"training diverged at step {step}: {message} (stop_on_divergence)")

  def check_loss(self, step: int, loss: float) -> None:
    """One logged (mean) training loss; the first finite one is the reference."""
    if not math.isfinite(loss):
      return  # The NaN guard's business.
    if self.first_loss is None:
      self.first_loss = loss
      return
    if self.factor > 0 and self.first_loss > 0 and loss > self.factor * self.first_loss:
      self._diverged(
        step,
        "loss_diverged",
        f"training loss {loss:.4g} is more than {self.factor:g} times its first logged value "
        f"{self.first_loss:.4g}: the run is diverging (learning rate too high?)",
        stop_now=True,
      )

  def check_eval(
    self, step: int, result: Mapping[str, float], baseline: Mapping[str, float], split: str
  ) -> None:
    """One evaluation against the masked input of the same examples."""
    model, masked_input = result.get(self.metric), baseline.get(self.metric)
    if model is None or masked_input is None:
      return
    model, masked_input = float(model), float(masked_input)
    finite = math.isfinite(model)
    worse = not finite or (
      model < masked_input if higher_is_better(self.metric) else model > masked_input
    )
    if not math.isfinite(masked_input) or not worse:
      self.bad_evals = 0
      return
    self.bad_evals += 1
    self._diverged(
      step,
      f"{split}_worse_than_input",
      f"{split} {self.metric} {model:.4g} is worse than the masked input's {masked_input:.4g}: "
      "the model does harm (diverged, or not trained enough)",
      stop_now=split != "test" and self.bad_evals >= STOP_AFTER_BAD_EVALS,
    )
