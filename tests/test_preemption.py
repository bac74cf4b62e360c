"""Runs survive being killed: kill -9 at random moments, SIGTERM, damaged checkpoint folders.

The fault-injection test drives `python -m mask2face.main` in subprocesses: an uninterrupted
run, then the same command killed with SIGKILL at seeded random moments of its training loop
(mid-step, mid-evaluation, mid-save of a latest or best checkpoint) and rerun, until at least
ten kills have landed; every run that finishes must write the same results.json metrics (and
validation lines) as the uninterrupted one: on CPU they are identical. The in-process tests
pin the cases down one by one: the best checkpoint ahead of the latest one (the reported
StepAlreadyExistsError), and unreadable or interrupted checkpoint folders.
"""

import json
import os
import pathlib
import signal
import time

import numpy as np
import pytest
import tiny_run

from mask2face import checkpointing, train
from mask2face.data import sources
from mask2face.data.landmark_cache import compute_cache

NUM_KILLS = 10


@pytest.fixture(scope="module")
def faces(tmp_path_factory, astronaut, grace_hopper):
  root = tiny_run.make_faces(tmp_path_factory.mktemp("faces"), astronaut, grace_hopper)
  cache = root.parent / "landmarks.json"
  compute_cache(sources.get_source(str(root)), cache, workers=1, progress=False)
  return root, cache


def test_killed_anywhere_the_rerun_finishes_with_the_same_results(faces, tmp_path):
  folder, cache = faces
  flags = tiny_run.config_flags(folder, cache, tmp_path / "jax_cache")
  started = time.monotonic()
  straight, log = tmp_path / "straight", tmp_path / "straight.log"
  assert tiny_run.start(straight, flags, log=log).wait(timeout=900) == 0, log.read_text()[-3000:]
  want, want_evals = tiny_run.results(straight), tiny_run.eval_lines(straight)
  # A step with its evaluation and save, as the uninterrupted run took them (compiled).
  step_secs = 3 * float(np.median(np.diff(tiny_run.step_times(log)[1:])))

  # Each kill lands at a seeded random moment after a seeded random step k has been logged
  # (or the first step of a rerun resumed past k): inside step k + 1, k's evaluation or saves,
  # or, for k = 12, the test pass. A rerun left only the test pass logs no step and finishes:
  # it is checked, and the next kills go to a fresh workdir.
  rng = np.random.default_rng(0)
  kills, completed, attempt = [], 0, 0
  workdir = tmp_path / "killed_0"
  while len(kills) < NUM_KILLS:
    log = tmp_path / f"attempt_{attempt}.log"
    attempt += 1
    k, delay = int(rng.integers(1, 13)), rng.uniform(0.0, step_secs)
    proc = tiny_run.start(workdir, flags, log=log)
    reached = tiny_run.wait_for(
      lambda log=log, k=k: max(tiny_run.step_times(log, with_steps=True)[1], default=0) >= k,
      timeout=900,
      proc=proc,
      what=f"step {k}",
    )
    if reached:
      time.sleep(delay)
    if proc.poll() is None:
      tiny_run.stop(proc)
      kills.append(f"after step {k} + {delay:.2f} s: {tiny_run.last_event(log)}")
      continue
    assert proc.returncode == 0, log.read_text()[-3000:]
    _assert_same_run(workdir, want, want_evals)
    completed += 1
    workdir = tmp_path / f"killed_{completed}"
  log = tmp_path / "final.log"
  assert tiny_run.start(workdir, flags, log=log).wait(timeout=900) == 0, log.read_text()[-3000:]
  _assert_same_run(workdir, want, want_evals)
  print(
    f"{len(kills)} kills, {completed + 1} workdirs, {attempt + 2} runs in "
    f"{time.monotonic() - started:.0f} s:",
    *kills,
    sep="\n  ",
  )


def _assert_same_run(workdir, want, want_evals):
  tiny_run.assert_same_results(want, tiny_run.results(workdir))
  assert _same_evals(want_evals, tiny_run.eval_lines(workdir))
  # No kill left a folder that a rerun took for a damaged checkpoint.
  assert not (workdir / "checkpoints" / checkpointing.UNREADABLE_DIR).exists()


def _same_evals(want: dict, got: dict) -> bool:
  """The validation lines of two runs agree on every eval_* metric (timings left out)."""
  assert want.keys() == got.keys()
  for step, line in want.items():
    for key, value in line.items():
      if key.startswith("eval_"):
        assert got[step][key] == value, (step, key, value, got[step][key])
  return True


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(faces, tmp_path):
  folder, cache = faces
  flags = tiny_run.config_flags(folder, cache, tmp_path / "jax_cache", num_train_steps=8)
  workdir, log = tmp_path / "run", tmp_path / "run.log"
  proc = tiny_run.start(workdir, flags, log=log)
  first_save = workdir / "checkpoints" / "2"
  assert tiny_run.wait_for(first_save.exists, timeout=600, proc=proc, what="the first checkpoint")
  status = tiny_run.stop(proc, signal.SIGTERM)
  text = log.read_text()
  assert status == 0, text[-3000:]
  assert "Preempted: checkpoint" in text and "rerun the same command to resume" in text
  assert not (workdir / "results.json").exists()
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert 2 <= saved[-1] < 8

  # The rerun goes on from there to the same results as a run never stopped.
  assert tiny_run.start(workdir, flags, log=log).wait(timeout=600) == 0
  straight = tmp_path / "straight"
  assert tiny_run.start(straight, flags, log=tmp_path / "straight.log").wait(timeout=600) == 0
  tiny_run.assert_same_results(tiny_run.results(straight), tiny_run.results(workdir))


# --- In-process cases. ------------------------------------------------------------------------


def _config(faces, **overrides):
  """The tiny run in-process: 4 steps, an evaluation at every step, saves at 2 and 4."""
  return tiny_run.tiny_config(*faces, **{"num_train_steps": 4, "eval_every_steps": 1, **overrides})


@pytest.fixture(scope="module")
def straight_results(faces, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("straight")
  train.train_and_evaluate(_config(faces), str(workdir))
  return tiny_run.results(workdir)


def test_best_checkpoint_ahead_of_the_latest_one(faces, straight_results, tmp_path, monkeypatch):
  # The reported StepAlreadyExistsError: a kill after a best save and before the next latest
  # save. Saving at step 4 only, the rerun starts over and reaches the best manager's step.
  config = _config(faces, checkpoint_every_steps=4)
  real_save = checkpointing.Checkpointer.save

  def killed_at_4(self, step, *args, **kwargs):
    if step == 4:
      self.wait_until_finished()
      raise KeyboardInterrupt("killed")
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpointing.Checkpointer, "save", killed_at_4)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, str(tmp_path))
  monkeypatch.undo()
  checkpoints = tmp_path / "checkpoints"
  best = [int(p.name) for p in (checkpoints / "best").iterdir() if p.name.isdigit()]
  assert best and not any(p.name.isdigit() for p in checkpoints.iterdir())
  train.train_and_evaluate(config, str(tmp_path))
  tiny_run.assert_same_results(straight_results, tiny_run.results(tmp_path))


def test_unreadable_checkpoint_is_skipped_and_kept(faces, straight_results, tmp_path, caplog):
  config = _config(faces, num_train_steps=3)
  train.train_and_evaluate(config, str(tmp_path))
  checkpoints = tmp_path / "checkpoints"
  # Step 3 damaged (every file of its train state emptied), and a save of step 4 interrupted.
  for path in (checkpoints / "3" / "state").rglob("*"):
    if path.is_file():
      path.write_bytes(b"")
  interrupted = checkpoints / "4.orbax-checkpoint-tmp-1234567"
  (interrupted / "state").mkdir(parents=True)
  user_file = tmp_path / "notes.txt"
  user_file.write_text("mine")

  train.train_and_evaluate(_config(faces), str(tmp_path))
  messages = "\n".join(r.getMessage() for r in caplog.records)
  assert f"{checkpoints}/3 is unreadable" in messages
  assert str(interrupted) in messages  # Named, ignored and left alone.
  assert interrupted.is_dir() and user_file.read_text() == "mine"
  set_aside = list((checkpoints / checkpointing.UNREADABLE_DIR).iterdir())
  assert [p.name.split("-")[:2] for p in set_aside] == [["checkpoints", "3"]]
  tiny_run.assert_same_results(straight_results, tiny_run.results(tmp_path))


def test_metrics_log_drops_a_torn_line(tmp_path):
  from mask2face import bookkeeping

  path = tmp_path / "metrics.jsonl"
  path.write_text(json.dumps({"step": 1, "a": 1.0}) + "\n" + '{"step": 2, "a"')
  log = bookkeeping.MetricsLog(path, resume_step=5)
  log.write(2, {"a": 2.0})
  assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]


def test_workdir_paths_keep_their_scheme():
  assert (
    str(checkpointing.as_path("gs://bucket/run") / "checkpoints") == "gs://bucket/run/checkpoints"
  )
  assert checkpointing.as_path("~/x") == pathlib.Path(os.path.expanduser("~/x")).resolve()
