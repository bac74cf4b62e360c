"""Host bookkeeping of a run: the early-stopping record and its JSON, the step clock, the log."""

import json

import pytest

from mask2face import bookkeeping
from mask2face.bookkeeping import RunProgress, StepClock


def test_patience_counts_evaluations_without_improvement():
  progress = RunProgress(mode="min", patience=2)
  assert progress.record(1, 1.0)
  assert not progress.record(2, 1.5)
  assert (progress.evals_since_best, progress.should_stop()) == (1, False)
  assert not progress.record(3, float("nan"))  # NaN never improves, and counts as a miss.
  assert progress.should_stop()
  assert (progress.best_value, progress.best_step) == (1.0, 1)
  assert "best 1 at step 1" in progress.summary("eval_loss")
  assert progress.record(4, 0.5) and not progress.should_stop()  # An improvement resets it.
  assert (progress.best_value, progress.best_step, progress.evals_since_best) == (0.5, 4, 0)


def test_max_mode_and_zero_patience():
  progress = RunProgress(mode="max", patience=0)
  assert progress.record(1, 1.0) and progress.record(2, 2.0)
  assert not progress.record(3, 2.0)  # Equal is not better.
  for step in range(4, 20):
    progress.record(step, 0.0)
  assert progress.evals_since_best == 17 and not progress.should_stop()  # 0: never stops.


def test_json_round_trip_keeps_state_not_rule():
  progress = RunProgress(mode="max", patience=3)
  progress.record(7, 0.25)
  progress.record(8, 0.125)
  progress.stopped_early, progress.timed_steps, progress.train_secs = True, 12, 3.5
  saved = json.loads(json.dumps(progress.to_json()))  # As orbax's JsonSave stores it.
  assert set(saved) == {
    "best_value",
    "best_step",
    "evals_since_best",
    "stopped_early",
    "timed_steps",
    "train_secs",
  }
  assert RunProgress.from_json(saved, mode="max", patience=3) == progress


def test_old_checkpoint_dicts_restore_with_defaults():
  # A best checkpoint saved before the first periodic save held only the early-stopping keys.
  old = {"best_value": 0.5, "best_step": 3, "evals_since_best": 1}
  progress = RunProgress.from_json(old, mode="min", patience=2)
  assert (progress.best_value, progress.best_step, progress.evals_since_best) == (0.5, 3, 1)
  assert (progress.stopped_early, progress.timed_steps, progress.train_secs) == (False, 0, 0.0)
  assert (progress.mode, progress.patience) == ("min", 2)
  assert not progress.record(4, 0.75) and progress.should_stop()
  assert RunProgress.from_json({}) == RunProgress()


@pytest.fixture
def fake_time(monkeypatch):
  """bookkeeping's time.time(), advanced by hand: `fake_time(secs)`."""
  now = [1000.0]
  monkeypatch.setattr(bookkeeping.time, "time", lambda: now[0])

  def advance(secs):
    now[0] += secs

  return advance


def test_step_clock_leaves_out_the_first_step_and_pauses(fake_time):
  clock = StepClock(steps=5, secs=10.0)  # A resumed run: earlier runs' totals.
  fake_time(30.0)  # The first step compiles.
  clock.tick()
  assert clock.first_step_secs == 30.0 and clock.totals() == (5, 10.0)
  for _ in range(2):
    fake_time(0.5)
    clock.tick()
  assert clock.take_rates(batch_size=4) == {"steps_per_sec": 2.0, "img_per_sec": 8.0}
  assert clock.take_rates(batch_size=4) == {}  # No step since.
  with clock.paused():
    fake_time(100.0)  # Evaluation: not training time.
  fake_time(1.0)
  clock.tick()
  assert clock.first_step_secs == 30.0  # Only the first tick is left out.
  assert clock.totals() == (8, 12.0)


def test_metrics_log_drops_lines_past_the_resumed_step(tmp_path):
  path = tmp_path / "metrics.jsonl"
  log = bookkeeping.MetricsLog(path, resume_step=0)
  for step in (1, 2, 3):
    log.write(step, {"train_loss": 1.0 / step})
  bookkeeping.MetricsLog(path, resume_step=2).write(3, {"train_loss": 0.5})
  lines = [json.loads(x) for x in path.read_text().splitlines()]
  assert [(x["step"], x["train_loss"]) for x in lines] == [(1, 1.0), (2, 0.5), (3, 0.5)]
  assert not list(tmp_path.glob(".*.tmp"))  # The rewrite went through atomic.py.
