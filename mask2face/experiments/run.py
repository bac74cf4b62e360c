"""Runs every point of a grid, each in its own workdir under --root; reruns skip or resume.

  python -m mask2face.experiments.run --grid=experiments/architectures.py --root=/runs/arch
  # Two runs at a time, each on half of the GPUs (or TPU chips):
  python -m mask2face.experiments.run --grid=... --root=... --parallel=2
  # One command per line, for a cluster scheduler (--multihost: each run spans several hosts):
  python -m mask2face.experiments.run --grid=... --root=... --print-commands [--multihost]
  # On a CPU in minutes: runlocal configs on $MASK2FACE_SHARED_DATA/utkface (or --data=DIR).
  python -m mask2face.experiments.run --grid=... --root=/tmp/m2f/grid --runlocal

A point whose workdir holds `results.json` is complete and skipped; any other is (re)started
with the same command, which resumes from its last checkpoint (mask2face.main does that).
Every point gets `point.json` (config, overrides, seed, command) and `run.log` (the trainer's
output) in its workdir; the trainer itself writes `config.json` with the commit. A failed
point is reported and the runner moves on; a summary comes at the end. Before any point
starts, the runner prepares each distinct data source once (its landmark cache), so points
started together do not all compute the same cache.
"""

import collections
import concurrent.futures
import dataclasses
import datetime
import json
import os
import pathlib
import queue
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from absl import app, flags, logging
from etils import epath

from mask2face import atomic, bookkeeping, cli, config_files
from mask2face.experiments import devices as devices_lib
from mask2face.experiments import grid as grid_lib
from mask2face.experiments import prepare as prepare_lib
from mask2face.experiments.commands import (
  TRAINER,
  RunSettings,
  build_command,
  command_line,
)

# The trainer's own skip marker: written last, atomically, when a run has finished.
RESULTS_FILE = "results.json"
POINT_FILE = "point.json"
LOG_FILE = "run.log"


@dataclasses.dataclass
class Outcome:
  """What happened to one point: 'skipped' (complete before), 'done', 'failed' or 'pending'."""

  point: grid_lib.Point
  workdir: pathlib.Path
  status: str
  secs: float = 0.0
  detail: str = ""


# --- Running. ----------------------------------------------------------------------------------


def is_complete(workdir: pathlib.Path) -> bool:
  return (workdir / RESULTS_FILE).is_file()


def write_point_json(
  workdir: pathlib.Path,
  point: grid_lib.Point,
  command: Sequence[str],
  *,
  grid_file: str = "",
  env: Mapping[str, str] | None = None,
) -> None:
  """Records how the point is run; `attempts` counts starts (more than one: it resumed)."""
  path = workdir / POINT_FILE
  attempts = 0
  if path.exists():
    try:
      attempts = int(json.loads(path.read_text()).get("attempts", 0))
    except (ValueError, AttributeError):
      logging.warning("%s: unreadable, rewriting it", path)
  atomic.write_json(
    path,
    {
      "name": point.name,
      "group": point.group,
      "grid": grid_file,
      "config": point.config,
      "config_arg": point.arg,
      "overrides": dict(point.overrides),
      "budget": dict(point.shared),
      "seed": point.seed,
      "command": list(command),
      "command_line": command_line(command),
      "env": dict(env or {}),
      "attempts": attempts + 1,
      # The trainer records its commit in results.json at the end; this covers failed runs.
      "git_commit": bookkeeping.git_commit(),
      "started": datetime.datetime.now().isoformat(timespec="seconds"),
    },
    sort_keys=True,
    default=str,
  )


def _tail(path: pathlib.Path, lines: int = 5) -> str:
  try:
    text = path.read_text(errors="replace").strip().splitlines()
  except OSError:
    return ""
  return " | ".join(line.strip() for line in text[-lines:])


def run_point(
  point: grid_lib.Point,
  workdir: pathlib.Path,
  command: Sequence[str],
  *,
  env: Mapping[str, str] | None = None,
  grid_file: str = "",
) -> Outcome:
  """Runs (or resumes) one point in a subprocess; its output goes to `workdir/run.log`."""
  workdir.mkdir(parents=True, exist_ok=True)
  if (workdir / "checkpoints").is_dir():
    logging.info("%s: resuming (the workdir has checkpoints)", point.name)
  write_point_json(workdir, point, command, grid_file=grid_file, env=env)
  full_env = {**os.environ, **(env or {})}
  # Config files import mask2face.config_files: this checkout's package must be the one found.
  full_env["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(grid_lib.REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
  )
  start = time.time()
  log_path = workdir / LOG_FILE
  with log_path.open("a") as log:
    log.write(
      f"\n=== {datetime.datetime.now().isoformat(timespec='seconds')} {shlex.join(command)}\n"
    )
    log.flush()
    try:
      rc = subprocess.run(
        list(command),
        cwd=grid_lib.REPO_ROOT,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        check=False,
      ).returncode
    except OSError as e:
      return Outcome(point, workdir, "failed", time.time() - start, f"could not start: {e}")
  secs = time.time() - start
  if rc == 0 and is_complete(workdir):
    return Outcome(point, workdir, "done", secs)
  why = f"exit code {rc}" if rc else f"exit code 0 but no {RESULTS_FILE}"
  return Outcome(point, workdir, "failed", secs, f"{why}; see {log_path}: {_tail(log_path)}")


def run_points(
  points: Sequence[grid_lib.Point],
  root: str | os.PathLike,
  settings: RunSettings | None = None,
  *,
  parallel: int = 1,
  devices: str = "",
  prepare: bool | None = None,
) -> list[Outcome]:
  """Runs every incomplete point under `root`, `parallel` at a time on disjoint devices.

  Args:
    settings: what every point shares (runlocal, --data, overrides, trainer, grid file).
    devices: the devices to share out (`devices.device_groups`); '' = detect.
    prepare: prepare each distinct data source (landmark cache) here before starting points
      (`prepare.prepare_sources`); None = only for mask2face's own trainer, whose first step
      it is.

  Returns:
    One Outcome per point, in grid order. Failures do not stop the other points.
  """
  settings = settings or RunSettings()
  root = pathlib.Path(root).expanduser().resolve()
  envs = devices_lib.device_groups(parallel, devices)
  outcomes: dict[int, Outcome] = {}
  todo = []
  for i, point in enumerate(points):
    workdir = root / point.name
    if is_complete(workdir):
      outcomes[i] = Outcome(point, workdir, "skipped")
    else:
      todo.append(i)
  logging.info(
    "%d points: %d complete (skipped), %d to run, %d at a time.",
    len(points),
    len(points) - len(todo),
    len(todo),
    parallel,
  )
  if prepare is None:
    prepare = settings.trainer == TRAINER
  if prepare and todo:
    prepare_lib.prepare_sources([points[i] for i in todo], settings)
  free_envs: queue.Queue = queue.Queue()
  for env in envs:
    free_envs.put(env)

  def work(i: int) -> Outcome:
    env = free_envs.get()  # A device group nobody else is using.
    try:
      point = points[i]
      workdir = root / point.name
      command = build_command(point, workdir, settings)
      logging.info("Starting %s%s", point.name, f" on {env}" if env else "")
      return run_point(point, workdir, command, env=env, grid_file=settings.grid_file)
    finally:
      free_envs.put(env)

  start = time.time()
  finished = 0
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=parallel)
  try:
    futures = {pool.submit(work, i): i for i in todo}
    for future in concurrent.futures.as_completed(futures):
      i = futures[future]
      outcome = future.result()
      outcomes[i] = outcome
      finished += 1
      elapsed = time.time() - start
      eta = elapsed / finished * (len(todo) - finished)
      log = logging.info if outcome.status == "done" else logging.error
      log(
        "[%d/%d] %s %s in %.0f s%s; ETA %.0f s",
        finished,
        len(todo),
        outcome.point.name,
        outcome.status,
        outcome.secs,
        f" ({outcome.detail})" if outcome.detail else "",
        eta,
      )
  except BaseException:
    # Ctrl-C reaches the running trainers too; start no new ones.
    logging.error("Interrupted: rerun the same command to resume the unfinished points.")
    pool.shutdown(wait=False, cancel_futures=True)
    raise
  pool.shutdown()
  return [outcomes[i] for i in range(len(points))]


def format_outcomes(outcomes: Sequence[Outcome]) -> str:
  """A few lines: counts per status, then every failed point with its reason."""
  counts = collections.Counter(o.status for o in outcomes)
  lines = [
    f"{len(outcomes)} points: "
    + ", ".join(f"{counts[s]} {s}" for s in ("done", "skipped", "failed", "pending") if counts[s])
  ]
  lines += [f"FAILED {o.point.name}: {o.detail}" for o in outcomes if o.status == "failed"]
  return "\n".join(lines)


def print_commands(
  points: Sequence[grid_lib.Point],
  root: str | os.PathLike,
  settings: RunSettings | None = None,
  *,
  out=None,
) -> list[Outcome]:
  """Prints one shell line per incomplete point (and writes its point.json); runs nothing.

  Each line is the whole job of one point, the same on every host that runs it (a SLURM array
  task's nodes, a TPU pod's workers: see the README); `root` may be remote (`gs://...`).
  """
  settings = settings or RunSettings()
  out = out or sys.stdout
  root = epath.Path(root).expanduser()
  if "://" not in str(root):
    root = root.resolve()
  outcomes = []
  for point in points:
    workdir = root / point.name
    if is_complete(workdir):
      outcomes.append(Outcome(point, workdir, "skipped"))
      continue
    command = build_command(point, workdir, settings)
    workdir.mkdir(parents=True, exist_ok=True)
    write_point_json(workdir, point, command, grid_file=settings.grid_file)
    cli.emit(command_line(command), file=out)
    outcomes.append(Outcome(point, workdir, "pending"))
  return outcomes


# --- Command line. -----------------------------------------------------------------------------


def define_flags() -> None:
  """The CLI's flags (defined only when run as a program, so importing this module is free)."""
  flags.DEFINE_string("grid", None, "A grid file, e.g. experiments/architectures.py.")
  flags.DEFINE_string("root", None, "Where the points' workdirs go (one folder per point).")
  flags.DEFINE_bool("runlocal", False, "Pass :runlocal to every config and train on local faces.")
  flags.DEFINE_string(
    "data",
    None,
    "Face folder for every point (default under --runlocal: the faces runlocal configs train on, "
    "$MASK2FACE_SHARED_DATA/utkface, else .../lfw_gray).",
  )
  flags.DEFINE_integer("parallel", 1, "Runs at a time, each on its own share of the devices.")
  flags.DEFINE_string("devices", "", "gpu:0,1,... or tpu:0,1,...; '' = detect.")
  # The dashed spelling is the documented one; --print_commands works too.
  flags.DEFINE_bool("print-commands", False, "Print one command per point instead of running.")
  flags.DEFINE_alias("print_commands", "print-commands")
  flags.DEFINE_bool(
    "multihost",
    False,
    "Add --config.multihost=True to every command (one run over several hosts: a TPU pod, "
    "a multi-node SLURM job); for --print-commands.",
  )
  flags.DEFINE_multi_string("override", [], "key=value for every point, e.g. num_train_steps=10.")
  flags.DEFINE_list("seeds", None, "Replace every configuration's seeds, e.g. --seeds=0.")
  flags.DEFINE_string("only", "", "Run only points whose name contains this text.")
  flags.mark_flags_as_required(["grid", "root"])


def default_data_dir() -> pathlib.Path | None:
  """The first present of configs/common.py's LOCAL_FACES: the faces `:runlocal` trains on.

  UTKFace's colour crops, else the grayscale LFW subset, under $MASK2FACE_SHARED_DATA or
  ../shared/data beside the checkout (read from the config file, so a grid and a single
  `:runlocal` run train on the same faces).
  """
  common = config_files.load_module(grid_lib.REPO_ROOT / "configs" / "common.py")
  return next((path for path in common.LOCAL_FACES if path.is_dir()), None)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  FLAGS = flags.FLAGS
  seeds = [int(s) for s in FLAGS.seeds] if FLAGS.seeds else None
  points = grid_lib.load_grid(FLAGS.grid, runlocal=FLAGS.runlocal, seeds=seeds)
  if FLAGS.only:
    points = [p for p in points if FLAGS.only in p.name]
    if not points:
      raise app.UsageError(f"--only={FLAGS.only!r} matches no point of {FLAGS.grid}")
  data = FLAGS.data
  if FLAGS.runlocal and not data:
    found = default_data_dir()
    if found is None:
      raise app.UsageError(
        "--runlocal needs faces: pass --data=DIR or set MASK2FACE_SHARED_DATA "
        "(utkface or lfw_gray inside)"
      )
    data = str(found)
  if data and not data.startswith("tfds:"):
    if not pathlib.Path(data).expanduser().is_dir():
      raise app.UsageError(f"--data={data}: no such folder")
    data = str(pathlib.Path(data).expanduser().resolve())  # The trainers run from REPO_ROOT.
  try:
    extra = config_files.parse_overrides(FLAGS.override)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if FLAGS.multihost:
    extra["multihost"] = "True"
  settings = RunSettings(
    runlocal=FLAGS.runlocal,
    data=data,
    extra=extra,
    grid_file=str(pathlib.Path(FLAGS.grid).resolve()),
  )
  if FLAGS["print-commands"].value:
    outcomes = print_commands(points, FLAGS.root, settings)
    logging.info(format_outcomes(outcomes))
    return
  outcomes = run_points(
    points, FLAGS.root, settings, parallel=FLAGS.parallel, devices=FLAGS.devices
  )
  cli.emit(format_outcomes(outcomes))
  if any(o.status == "failed" for o in outcomes):
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
