"""A tiny training run driven through `python -m mask2face.main` in subprocesses.

Shared by tests/test_preemption.py and tests/test_multihost.py: the faces (made from the two
photos shipped in wheels), the command-line flags of a unet that trains at 32 px, and helpers
to start, stop and compare runs. Subprocesses start in their own session, so a kill reaches
their grain workers too.
"""

import contextlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Quick compiles: the tiny programs gain nothing from XLA's expensive passes.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# What must not change when a run is interrupted (timings and the machine may).
RESULT_KEYS = ("test", "baseline", "best_metric", "steps", "test_checkpoint_step", "stopped_early")


def make_faces(root: pathlib.Path, astronaut, grace_hopper, *, people: int = 8) -> pathlib.Path:
  """`people` 'people' with two photos each, alternating the two wheel faces at several sizes."""
  for person in range(people):
    base = astronaut if person % 2 else grace_hopper
    folder = root / f"person_{person}"
    folder.mkdir(parents=True)
    for shot in range(2):
      image = Image.fromarray(base).resize((240 + 8 * person, 240 + 8 * person))
      if shot:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
      image.save(folder / f"person_{person}_{shot:04d}.jpg", quality=90)
  return root


# configs/unet.py:runlocal shrunk to filters (4, 8) at 32 px: 12 steps, 4 evaluations, 6 saves.
TINY = {
  "data.image_size": 32,
  "data.test_size": 2.0,
  "data.val_fraction": 0.25,
  "data.max_examples": 0,
  "model.filters": (4, 8),
  "batch_size": 4,
  "eval_batch_size": 4,
  "schedule": "constant",
  "warmup_steps": 0,
  "num_train_steps": 12,
  "eval_every_steps": 3,
  "log_every_steps": 1,
  "checkpoint_every_steps": 2,
  "num_image_grid": 2,
  "compilation_cache_min_secs": 0.0,
}


def tiny_values(faces, cache, compile_cache, **overrides) -> dict:
  """Every override of the tiny run; a shared `compile_cache` lets reruns skip compiling."""
  return {
    "data.source": str(faces),
    "data.landmarks_cache": str(cache),
    **TINY,
    "compilation_cache_dir": str(compile_cache),
    **overrides,
  }


def config_flags(faces, cache, compile_cache, **overrides) -> list[str]:
  """The tiny run's command-line flags for mask2face.main."""
  values = tiny_values(faces, cache, compile_cache, **overrides)
  text = {
    k: ",".join(map(str, v)).join("()") if isinstance(v, tuple) else v for k, v in values.items()
  }
  return [f"--config={REPO_ROOT}/configs/unet.py:runlocal"] + [
    f"--config.{k}={v}" for k, v in text.items()
  ]


def tiny_config(faces, cache, **overrides):
  """The same run as a ConfigDict, for calling train.train_and_evaluate in the test process."""
  from mask2face import config_files

  config = config_files.load(f"{REPO_ROOT}/configs/unet.py:runlocal")
  for key, value in tiny_values(faces, cache, "", **overrides).items():
    section, _, name = key.rpartition(".")
    (config[section] if section else config)[name] = value
  return config


def environment(devices: int = 1, **extra: str) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", **extra)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {FAST_XLA}"
  return env


def start(workdir, flags, *, log: pathlib.Path, env=None) -> subprocess.Popen:
  """`python -m mask2face.main` in its own session, its output appended to `log`."""
  with open(log, "ab") as out:
    return subprocess.Popen(
      [sys.executable, "-m", "mask2face.main", f"--workdir={workdir}", *flags],
      cwd=REPO_ROOT,
      env=env or environment(),
      stdout=out,
      stderr=subprocess.STDOUT,
      start_new_session=True,
    )


def stop(proc: subprocess.Popen, sig=signal.SIGKILL) -> int:
  """Sends `sig` to the run's whole process group (its grain workers too); returns its status."""
  with contextlib.suppress(ProcessLookupError):
    os.killpg(proc.pid, sig)
  return proc.wait(timeout=300)


def wait_for(condition, *, timeout: float, proc: subprocess.Popen | None = None, what: str = ""):
  """Polls `condition()` until true; fails when `proc` exits first or time runs out."""
  deadline = time.monotonic() + timeout
  while not condition():
    if proc is not None and proc.poll() is not None:
      return False
    if time.monotonic() > deadline:
      raise TimeoutError(f"waited {timeout} s for {what}")
    time.sleep(0.02)
  return True


def log_has(log: pathlib.Path, text: str, *, after: int = 0) -> bool:
  return log.exists() and text in log.read_text(errors="replace")[after:]


_STEP_LINE = re.compile(r"^I\d{4} (\d\d):(\d\d):(\d\d\.\d+) .*\] step (\d+)/\d+:", re.MULTILINE)


def step_times(log: pathlib.Path, *, with_steps: bool = False):
  """Seconds of day at which the trainer logged each step line ([steps] too if asked)."""
  text = log.read_text(errors="replace") if log.exists() else ""
  found = _STEP_LINE.findall(text)
  times = [int(h) * 3600 + int(m) * 60 + float(s) for h, m, s, _ in found]
  return (times, [int(x[-1]) for x in found]) if with_steps else times


def last_event(log: pathlib.Path) -> str:
  """What the trainer was last seen doing, for the record of a kill."""
  lines = [x for x in log.read_text(errors="replace").splitlines() if x.startswith(("I1", "W1"))]
  return lines[-1].split("] ", 1)[-1][:90] if lines else "(starting)"


def results(workdir: pathlib.Path) -> dict:
  """The fields of `results.json` that an interruption must not change."""
  record = json.loads((workdir / "results.json").read_text())
  return {k: record[k] for k in RESULT_KEYS}


def eval_lines(workdir: pathlib.Path) -> dict[int, dict]:
  """Validation metrics by step, from metrics.jsonl (one line per evaluated step)."""
  out = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if "eval_loss" in record:
      assert record["step"] not in out, f"step {record['step']} evaluated twice in the log"
      out[record["step"]] = record
  return out


def assert_same_results(a: dict, b: dict, *, atol: float = 0.0) -> None:
  """Equal result records; numbers within `atol` (0: identical)."""
  assert a.keys() == b.keys()
  for key in a:
    if isinstance(a[key], dict):
      assert a[key].keys() == b[key].keys(), key
      for name in a[key]:
        x, y = a[key][name], b[key][name]
        if atol and isinstance(x, float):
          np.testing.assert_allclose(y, x, atol=atol, rtol=0, err_msg=f"{key}/{name}")
        else:
          assert x == y or (x != x and y != y), f"{key}/{name}: {x!r} != {y!r}"
    else:
      assert a[key] == b[key], f"{key}: {a[key]!r} != {b[key]!r}"
