"""Nothing a user made is lost, nothing wrong is silent: training, workdirs and landmark caches.

One test (or two) per finding of the issue, each written to fail on the code before the fix:
(2) a refused resume rewrote config.json, (3) stale landmark caches, (4) two runs on one
workdir, (6) a diverged run saved as the best, (7) late failures that lose the training,
(8) files only their owner could read, (9) num_train_steps=-5 and a resume with another model.
Refusals come before any data is read, so those tests take a second; two tiny trainings
cover the rest. The tools (export, predict, the other CLIs) are in test_safety_tools.py.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from run_folder import write_run_folder

from mask2face import atomic, cli, config_files, divergence, train, workdirs
from mask2face.data import landmark_cache, pipeline
from mask2face.data.sources import get_source

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32
TINY = {"filters": (4, 8), "kernels": 3}


def tiny_config(source, cache, **overrides):
  """configs/unet.py:runlocal at 32 px, filters (4, 8): a step takes a moment on a CPU."""
  config = config_files.load(f"{REPO_ROOT}/configs/unet.py:runlocal")
  config.data.source = str(source)
  config.data.landmarks_cache = str(cache)
  config.data.image_size = SIZE
  config.data.test_size = 2
  config.data.val_fraction = 0.25
  config.data.max_examples = 0
  config.model.filters = TINY["filters"]
  config.batch_size = 4
  config.schedule = "constant"
  config.warmup_steps = 0
  config.eval_every_steps = 2
  config.log_every_steps = 1
  config.checkpoint_every_steps = 2
  config.num_train_steps = 4
  config.num_image_grid = 2
  config.compilation_cache_dir = ""
  config.update(overrides)
  return config


def make_faces(root: pathlib.Path, base: np.ndarray, people: int, shots: int = 2) -> pathlib.Path:
  """`people` folders of `shots` photos each, all of the one face at slightly different sizes."""
  for person in range(people):
    (root / f"person_{person}").mkdir(parents=True)
    for shot in range(shots):
      side = 200 + 8 * person + 4 * shot
      image = Image.fromarray(base).resize((side, side))
      image.save(root / f"person_{person}" / f"p{person}_{shot}.jpg", quality=90)
  return root


@pytest.fixture(scope="module")
def faces(tmp_path_factory, grace_hopper):
  return make_faces(tmp_path_factory.mktemp("faces"), grace_hopper, people=8)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("landmarks") / "faces.json"


def _no_such_folder(tmp_path):
  # The refusals under test come before the data: the old code reached it and failed there.
  return tmp_path / "no_such_faces"


# --- (2), (9) A refused resume leaves the run's record alone. ----------------------------------


def _larger_images(config):
  config.data.image_size = 128
  return config


def _another_model(config):
  """configs/resnet_unet.py:runlocal on the same data (as a user resuming with it would)."""
  other = config_files.load(f"{REPO_ROOT}/configs/resnet_unet.py:runlocal")
  other.data = config.data
  return other


@pytest.mark.parametrize(
  "change, field",
  [
    (_larger_images, "data.image_size 64 -> 128"),
    (_another_model, "model_name 'unet' -> 'resnet_unet'"),
  ],
)
def test_a_refused_resume_keeps_config_json(tmp_path, change, field):
  import jax.numpy as jnp

  from mask2face import models

  workdir = tmp_path / "run"
  workdir.mkdir()
  model = models.get_model("unet", **TINY)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
  write_run_folder(workdir, variables, model_name="unet", model_kwargs=TINY, size=64)
  config = tiny_config(_no_such_folder(tmp_path), tmp_path / "lm.json")
  config.data.image_size = 64
  atomic.write_json(workdir / "config.json", workdirs.config_record(config))
  record = (workdir / "config.json").read_bytes()

  with pytest.raises(cli.UserError) as refusal:
    train.train_and_evaluate(change(config), str(workdir))
  message = str(refusal.value)
  assert field in message and "another configuration" in message and "\n" not in message
  assert (workdir / "config.json").read_bytes() == record
  assert sorted(p.name for p in workdir.iterdir()) == ["checkpoints", "config.json"]


def test_a_resume_may_change_steps_and_cadence_but_not_the_data(tmp_path):
  config = tiny_config(tmp_path, tmp_path / "lm.json")
  record = workdirs.config_record(config)
  longer = tiny_config(
    tmp_path,
    tmp_path / "other_cache.json",  # Where landmarks are cached is not what they are.
    num_train_steps=400,
    eval_every_steps=100,
    log_every_steps=10,
    checkpoint_every_steps=50,
    early_stopping_patience=3,
  )
  longer.data.worker_count = 2
  assert workdirs.resume_differences(record, longer) == []
  other_data = tiny_config(tmp_path / "elsewhere", tmp_path / "lm.json")
  other_data.data.val_fraction = 0.5
  assert [d.split()[0] for d in workdirs.resume_differences(record, other_data)] == [
    "data.source",
    "data.val_fraction",
  ]
  no_clipping = tiny_config(tmp_path, tmp_path / "lm.json", grad_clip_norm=0.0)
  assert workdirs.resume_differences(record, no_clipping) == ["grad_clip_norm > 0 True -> False"]


# --- (7), (9) Bad values are refused before any data is read or anything written. -----------


@pytest.mark.parametrize(
  "overrides, expected",
  [
    ({"num_train_steps": -5}, "num_train_steps=-5"),
    ({"data.image_size": 50}, "data.image_size=50: unet needs a multiple of 4"),
  ],
)
def test_bad_values_are_refused_before_landmarking(faces, tmp_path, overrides, expected):
  cache = tmp_path / "lm.json"
  config = tiny_config(faces, cache)
  for key, value in overrides.items():
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
  with pytest.raises(cli.UserError, match=expected):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not cache.exists()  # No landmarking.
  assert not (tmp_path / "run").exists()  # No workdir either.


def test_config_problems_are_all_named_at_once():
  config = config_files.load(f"{REPO_ROOT}/configs/resnet_unet.py:runlocal")
  assert workdirs.config_problems(config) == []
  config.num_train_steps, config.batch_size, config.data.image_size = 0, 0, 96
  problems = workdirs.config_problems(config)
  assert len(problems) == 3, problems
  # A 6-level ResNet U-Net halves its input 6 times.
  assert "needs a multiple of 64 (its downsampling), e.g. 64 or 128" in problems[-1]


def test_splits_too_small_are_refused_before_training(tmp_path, grace_hopper):
  # Three people: one for the test, two for training, none left for validation.
  folder = make_faces(tmp_path / "few", grace_hopper, people=3, shots=1)
  config = tiny_config(folder, tmp_path / "lm.json", batch_size=2, eval_every_steps=-1)
  config.data.test_size = 1
  workdir = tmp_path / "run"
  with pytest.raises(cli.UserError, match=r"validation has 0 \(needs 1\)"):
    train.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()  # No checkpoint, no splits.json, no config.json.


# --- (4) One run per workdir. ----------------------------------------------------------------


def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    holder = {"host": socket.gethostname(), "pid": other.pid, "started": "earlier"}
    (workdir / "run.lock").write_text(json.dumps(holder))
    config = tiny_config(_no_such_folder(tmp_path), tmp_path / "lm.json")
    with pytest.raises(cli.UserError, match=rf"in use by another run \(host .*, pid {other.pid}"):
      train.train_and_evaluate(config, str(workdir))
    assert sorted(p.name for p in workdir.iterdir()) == ["run.lock"]
    assert json.loads((workdir / "run.lock").read_text()) == holder  # Still the other's.
  finally:
    other.kill()
    other.wait()
  # Its process is gone: the lock is stale and the next run takes it over.
  lock = workdirs.RunLock(workdir)
  lock.acquire()
  assert json.loads((workdir / "run.lock").read_text())["pid"] == os.getpid()
  lock.release()
  assert not (workdir / "run.lock").exists()


def test_a_lock_held_on_another_host_is_never_taken_over(tmp_path):
  holder = {"host": "some-other-machine", "pid": 1, "started": "earlier"}
  (tmp_path / "run.lock").write_text(json.dumps(holder))
  with pytest.raises(cli.UserError, match="some-other-machine"):
    workdirs.RunLock(tmp_path).acquire()
  workdirs.RunLock(tmp_path).release()  # Releasing a lock it does not hold removes nothing.
  assert json.loads((tmp_path / "run.lock").read_text()) == holder


# --- (6), (7) A diverged run says so; a lost best checkpoint costs only the best weights. --------


@pytest.fixture(scope="module")
def diverged_run(faces, cache, tmp_path_factory):
  """lr 1e4 for 4 steps (no NaN: outputs saturate; 1e9 overflows under XLA's cheaper CPU
  pipeline), the best checkpoint deleted before the test."""
  import shutil

  from mask2face.checkpointing import Checkpointer

  restore_best = Checkpointer.restore_best

  def delete_then_restore(self, state_like):
    self._best.wait_until_finished()
    shutil.rmtree(self.directory / "best")  # As a user (or a full disk) might.
    return restore_best(self, state_like)

  workdir = tmp_path_factory.mktemp("diverged")
  config = tiny_config(faces, cache, learning_rate=1e4)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(Checkpointer, "restore_best", delete_then_restore)
    train.train_and_evaluate(config, str(workdir))
  return json.loads((workdir / "results.json").read_text())


def test_a_diverged_run_is_flagged_in_results(diverged_run):
  results = diverged_run
  assert results["test"]["masked_psnr"] < results["baseline"]["masked_psnr"]
  kinds = {w["kind"]: w for w in results["warnings"]}
  assert "test_worse_than_input" in kinds, results["warnings"]
  assert "masked_psnr" in kinds["test_worse_than_input"]["message"]


def test_a_missing_best_checkpoint_falls_back_to_the_final_state(diverged_run):
  results = diverged_run
  (missing,) = [w for w in results["warnings"] if w["kind"] == "best_checkpoint_missing"]
  assert "testing the final state of step 4" in missing["message"]
  assert results["test_checkpoint_step"] == 4 and results["steps"] == 4
  assert results["test"]["count"] > 0


def test_the_guard_can_stop_a_run():
  guard = divergence.DivergenceGuard(factor=10.0, stop=True, metric="masked_psnr")
  guard.check_loss(1, 0.5)
  guard.check_loss(2, 4.0)  # 8x: not yet.
  with pytest.raises(divergence.DivergenceError, match="at step 3"):
    guard.check_loss(3, 6.0)
  guard = divergence.DivergenceGuard(stop=True, metric="masked_psnr")
  good, bad, base = {"masked_psnr": 15.0}, {"masked_psnr": 5.6}, {"masked_psnr": 12.2}
  guard.check_eval(10, bad, base, "validation")  # A young model may be worse: one is allowed.
  guard.check_eval(20, good, base, "validation")
  guard.check_eval(30, bad, base, "validation")
  with pytest.raises(divergence.DivergenceError, match="at step 40.*5.6 is worse"):
    guard.check_eval(40, bad, base, "validation")
  (warning,) = guard.warnings
  assert (warning["step"], warning["last_step"], warning["count"]) == (10, 40, 3)
  assert divergence.masked_counterpart("eval_loss") == "masked_psnr"
  assert divergence.masked_counterpart("eval_ssim") == "masked_ssim"
  assert divergence.masked_counterpart("eval_masked_l1") == "masked_l1"
  # Lower is better for l1: 0.3 against the input's 0.2 is worse.
  guard = divergence.DivergenceGuard(metric="masked_l1")
  guard.check_eval(5, {"masked_l1": 0.3}, {"masked_l1": 0.2}, "test")
  assert guard.warnings[0]["kind"] == "test_worse_than_input"


# --- (3) Landmark caches follow the files they describe. ----------------------------------------


def test_landmark_cache_notices_changed_added_and_removed_photos(
  tmp_path, grace_hopper, monkeypatch
):
  folder = make_faces(tmp_path / "faces", grace_hopper, people=3, shots=1)
  out = tmp_path / "lm.json"
  landmark_cache.compute_cache(get_source(str(folder)), out, progress=False)
  landmarked = []
  record = landmark_cache.landmark_record
  monkeypatch.setattr(
    landmark_cache,
    "landmark_record",
    lambda source, detector, key: landmarked.append(key) or record(source, detector, key),
  )

  # Replaced by a photo without a face (another size): the old points would land on nothing.
  y, x = np.mgrid[0:150, 0:170]
  gradient = np.stack([x, y, np.full_like(x, 90)], -1).astype(np.uint8)
  Image.fromarray(gradient).save(folder / "person_0" / "p0_0.jpg")
  (folder / "person_1" / "p1_0.jpg").unlink()
  Image.fromarray(grace_hopper).save(folder / "person_2" / "added.jpg")
  table = landmark_cache.compute_cache(get_source(str(folder)), out, progress=False)

  assert sorted(landmarked) == ["person_0/p0_0.jpg", "person_2/added.jpg"]  # Only those.
  assert table.problems["person_0/p0_0.jpg"][0] == "no_face"
  assert "person_2/added.jpg" in table and "person_2/p2_0.jpg" in table
  assert "person_1/p1_0.jpg" not in json.loads(out.read_text())["records"]
  # Nothing changed since: the cache is reused as it is, not even rewritten.
  landmarked.clear()
  mtime = out.stat().st_mtime_ns
  landmark_cache.compute_cache(get_source(str(folder)), out, progress=False)
  assert landmarked == [] and out.stat().st_mtime_ns == mtime


def test_training_data_includes_photos_added_to_a_cached_folder(tmp_path, grace_hopper):
  folder = make_faces(tmp_path / "faces", grace_hopper, people=4, shots=1)
  config = tiny_config(folder, tmp_path / "lm.json")
  config.data.test_size = 1
  before = pipeline.prepare_data(config.data)
  make_faces(tmp_path / "faces" / "later", grace_hopper, people=2, shots=1)
  after = pipeline.prepare_data(config.data)
  assert len(before.landmarks) == 4 and len(after.landmarks) == 6


# --- (8) Files are written with the user's umask. ---------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, grace_hopper, umask, mode):
  folder = make_faces(tmp_path / "faces", grace_hopper, people=1, shots=1)
  old = os.umask(umask)
  try:
    atomic.write_json(tmp_path / "results.json", {"a": 1})
    atomic.write_image(tmp_path / "grid.png", np.zeros((4, 4, 3), np.uint8))
    out = tmp_path / "lm.json"
    landmark_cache.compute_cache(get_source(str(folder)), out, progress=False)
    for path in ("results.json", "grid.png", "lm.json", "lm.json.report.json"):
      assert (tmp_path / path).stat().st_mode & 0o777 == mode, path
    assert atomic.current_umask() == umask  # Read, not changed.
    assert os.umask(umask) == umask
  finally:
    os.umask(old)


def test_a_resumed_run_keeps_the_first_loss_of_the_workdir(tmp_path):
  log = tmp_path / "metrics.jsonl"
  log.write_text(
    '{"step": 10, "eval_loss": 0.9}\n{"step": 50, "train_lo\n{"step": 50, "train_loss": 0.4}\n'
  )
  config = config_files.load(f"{REPO_ROOT}/configs/unet.py:runlocal")
  guard = divergence.DivergenceGuard.from_config(config, log)
  assert guard.first_loss == 0.4 and guard.metric == "masked_psnr"
  guard.check_loss(900, 0.05)  # A resume whose loss is far lower is no reference.
  guard.check_loss(950, 4.5)
  assert [w["kind"] for w in guard.warnings] == ["loss_diverged"]
  assert divergence.DivergenceGuard.from_config(config, tmp_path / "none.jsonl").first_loss is None


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO_ROOT / "configs").glob("*.py")))
def test_every_shipped_config_passes_the_checks(name):
  for arg in ("", ":runlocal"):
    config = config_files.load(f"{REPO_ROOT}/configs/{name}.py{arg}")
    if name == "common":
      config.model_name = "resnet_unet"  # common.py alone names a model without its settings.
    assert workdirs.config_problems(config) == [], f"{name}{arg}"
