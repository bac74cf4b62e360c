"""Runs every point of a grid, each in its own workdir under --root; reruns skip or resume.

  python -m mask2face.experiments.run --grid=experiments/architectures.py --root=/runs/arch
  # Two runs at a time, each on half of the GPUs (or TPU chips):
  python -m mask2face.experiments.run --grid=... --root=... --parallel=2
  # One command per line, for a cluster scheduler:
  python -m mask2face.experiments.run --grid=... --root=... --print-commands
  # On a CPU in minutes: runlocal configs on $MASK2FACE_SHARED_DATA/lfw_gray (or --data=DIR).
  python -m mask2face.experiments.run --grid=... --root=/tmp/m2f/grid --runlocal

A point whose workdir holds `results.json` is complete and skipped; any other is (re)started
with the same command, which resumes from its last checkpoint (mask2face.main does that).
Every point gets `point.json` (config, overrides, seed, command) and `run.log` (the trainer's
output) in its workdir; the trainer itself writes `config.json` with the commit. A failed
point is reported and the runner moves on; a summary comes at the end. Before any point
starts, the runner prepares each distinct data source once (its landmark cache), so points
started together do not all compute the same cache.
"""

import ast
import collections
import concurrent.futures
import dataclasses
import datetime
import glob
import json
import os
import pathlib
import queue
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app, flags, logging

from mask2face import atomic, bookkeeping, cli
from mask2face.experiments import grid as grid_lib

TRAINER = (sys.executable, "-m", "mask2face.main")
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


# --- Commands. ---------------------------------------------------------------------------------


def default_data_dir() -> pathlib.Path | None:
  """`$MASK2FACE_SHARED_DATA/lfw_gray`, else `../shared/data/lfw_gray` beside the checkout."""
  env = os.environ.get("MASK2FACE_SHARED_DATA")
  base = pathlib.Path(env) if env else grid_lib.REPO_ROOT.parent / "shared" / "data"
  path = base / "lfw_gray"
  return path if path.is_dir() else None


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
  """`['batch_size=8', 'model.filters=(4,8)']` -> {key: value as written on the command line}."""
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    key = key.strip().removeprefix("--").removeprefix("config.")
    if not sep or not key:
      raise ValueError(f"--override {item!r}: expected key=value, e.g. num_train_steps=100")
    out[key] = value
  return out


def point_overrides(
  point: grid_lib.Point, *, data: str | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
  """Every `--config.key=value` of a point, as strings: BUDGET, point, --data, --override."""
  values = {k: grid_lib.flag_value(v) for k, v in point.all_overrides().items()}
  if data:
    values["data.source"] = str(data)
  values.update(extra or {})
  values["seed"] = str(point.seed)
  return values


def build_command(
  point: grid_lib.Point,
  workdir: str | os.PathLike,
  *,
  runlocal: bool = False,
  data: str | None = None,
  extra: Mapping[str, str] | None = None,
  trainer: Sequence[str] = TRAINER,
) -> list[str]:
  """The trainer's argv for `point` (run from REPO_ROOT, so configs can import each other)."""
  arg = ",".join(a for a in ("runlocal" if runlocal else "", point.arg) if a)
  config = point.config + (f":{arg}" if arg else "")
  command = [*trainer, f"--config={config}", f"--workdir={workdir}"]
  overrides = point_overrides(point, data=data, extra=extra)
  command += [f"--config.{k}={v}" for k, v in overrides.items()]
  return command


def command_line(command: Sequence[str]) -> str:
  """One shell line that runs `command` from any directory."""
  return f"cd {shlex.quote(str(grid_lib.REPO_ROOT))} && {shlex.join(command)}"


# --- Devices. ----------------------------------------------------------------------------------


def _count_gpus() -> int:
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return 0
  return (
    sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0
  )


def _count_tpu_chips() -> int:
  # TPU VMs expose one /dev/accelN (v2-v4) or /dev/vfio/N (v5e and later) per chip.
  return len(glob.glob("/dev/accel[0-9]*")) or len(glob.glob("/dev/vfio/[0-9]*"))


# TPU_CHIPS_PER_PROCESS_BOUNDS for a group of n chips of one host.
_TPU_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1"}


def device_groups(parallel: int, devices: str = "") -> list[dict[str, str]]:
  """Environment updates that give each of `parallel` workers its own share of the devices.

  Args:
    parallel: how many runs at a time.
    devices: 'gpu:0,1,2,3' or 'tpu:0,1,2,3' (or plain ids, meaning GPUs); '' = detect:
      CUDA_VISIBLE_DEVICES, else nvidia-smi's GPUs, else the TPU chips of this host.

  Returns:
    One dict per worker. Without accelerators (a CPU), the workers share the host: empty dicts.

  Raises:
    ValueError: the devices do not divide into `parallel` equal groups.
  """
  if parallel < 1:
    raise ValueError(f"--parallel={parallel}: must be at least 1")
  kind, ids = "gpu", []
  if devices:
    kind, sep, rest = devices.partition(":")
    if not sep:
      kind, rest = "gpu", devices
    ids = [d.strip() for d in rest.split(",") if d.strip()]
  elif os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
    ids = [d.strip() for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
  elif n := _count_gpus():
    ids = [str(i) for i in range(n)]
  elif n := _count_tpu_chips():
    kind, ids = "tpu", [str(i) for i in range(n)]
  if kind not in ("gpu", "tpu"):
    raise ValueError(f"--devices={devices!r}: expected gpu:IDS or tpu:IDS")
  if not ids:
    if parallel > 1:
      logging.info("No accelerator found: %d runs at a time share the CPU.", parallel)
    return [{} for _ in range(parallel)]
  if len(ids) % parallel:
    raise ValueError(
      f"--parallel={parallel} does not divide the {len(ids)} {kind.upper()}(s) {ids} evenly"
    )
  size = len(ids) // parallel
  groups = [ids[i * size : (i + 1) * size] for i in range(parallel)]
  if kind == "gpu":
    return [{"CUDA_VISIBLE_DEVICES": ",".join(g)} for g in groups]
  if size not in _TPU_BOUNDS:
    raise ValueError(f"--parallel={parallel}: {size} TPU chips per run; use 1, 2 or 4")
  envs = []
  for i, group in enumerate(groups):
    port = str(8476 + i)  # Each process needs its own coordination port.
    envs.append(
      {
        "TPU_VISIBLE_CHIPS": ",".join(group),
        "TPU_VISIBLE_DEVICES": ",".join(group),  # The older name of the same setting.
        "TPU_CHIPS_PER_PROCESS_BOUNDS": _TPU_BOUNDS[size],
        "TPU_PROCESS_BOUNDS": "1,1,1",
        "TPU_PROCESS_PORT": port,
        "TPU_PROCESS_ADDRESSES": f"localhost:{port}",
        "TPU_MESH_CONTROLLER_PORT": port,
        "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{port}",
      }
    )
  return envs


# --- Data, once for every point. ---------------------------------------------------------------

# The `config.data` fields that decide a source's landmark cache (the expensive shared part).
DATA_SOURCE_FIELDS = (
  "source",
  "identity_pattern",
  "tfds_data_dir",
  "manual_dir",
  "landmarks_cache",
)


def _parse_flag(text: str, like: Any) -> Any:
  """`text` as ml_collections' config flags would parse it for a field holding `like`."""
  if isinstance(like, str):
    return text
  try:
    return ast.literal_eval(text)
  except (SyntaxError, ValueError):
    return text


def point_data_config(
  point: grid_lib.Point,
  *,
  runlocal: bool = False,
  data: str | None = None,
  extra: Mapping[str, str] | None = None,
):
  """The `config.data` section the point's trainer will see: config, runlocal, overrides."""
  arg = ",".join(a for a in ("runlocal" if runlocal else "", point.arg) if a)
  module = grid_lib.load_module(grid_lib.resolve_config(point.config))
  data_config = module.get_config(arg or None).data
  for key, text in point_overrides(point, data=data, extra=extra).items():
    field = key.removeprefix("data.")
    if key.startswith("data.") and field in data_config:
      data_config[field] = _parse_flag(text, data_config[field])
  return data_config


def prepare_sources(
  points: Sequence[grid_lib.Point],
  *,
  runlocal: bool = False,
  data: str | None = None,
  extra: Mapping[str, str] | None = None,
) -> int:
  """Prepares each distinct data source of `points` once, in this process.

  Every trainer starts with `pipeline.prepare_data`, which computes the source's landmark cache
  when it is missing; N points started at once would all compute the same cache. Done here
  first, the trainers only load it. A source that cannot be prepared is logged and left to the
  points, which report their own error.

  Returns:
    How many distinct sources were prepared.
  """
  from mask2face.data import pipeline

  seen, prepared = set(), 0
  for point in points:
    try:
      data_config = point_data_config(point, runlocal=runlocal, data=data, extra=extra)
    except Exception as e:  # A broken config fails in its own point, with its own message.
      logging.warning("%s: cannot read its data config (%s: %s)", point.name, type(e).__name__, e)
      continue
    key = tuple(str(data_config.get(f, "")) for f in DATA_SOURCE_FIELDS)
    if key in seen:
      continue
    seen.add(key)
    logging.info(
      "Preparing the data of %s once for every point (landmarks: %s)",
      data_config.source,
      data_config.landmarks_cache or "default cache",
    )
    start = time.time()
    try:
      found = pipeline.prepare_data(data_config)
    except Exception as e:  # Each point retries and reports it; the grid goes on.
      logging.warning(
        "Could not prepare %s (%s: %s); each point will try on its own.",
        data_config.source,
        type(e).__name__,
        e,
      )
      continue
    prepared += 1
    logging.info(
      "Data ready in %.0f s: %d faces, landmarks in %s",
      time.time() - start,
      len(found.landmarks),
      found.landmarks_path or "the cache",
    )
  return prepared


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
  # The configs import `configs.common`: the repo root must be importable.
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
  *,
  runlocal: bool = False,
  data: str | None = None,
  extra: Mapping[str, str] | None = None,
  parallel: int = 1,
  devices: str = "",
  trainer: Sequence[str] = TRAINER,
  grid_file: str = "",
  prepare: bool | None = None,
) -> list[Outcome]:
  """Runs every incomplete point under `root`, `parallel` at a time on disjoint devices.

  Args:
    prepare: prepare each distinct data source (landmark cache) here before starting points
      (`prepare_sources`); None = only for mask2face's own trainer, whose first step it is.

  Returns:
    One Outcome per point, in grid order. Failures do not stop the other points.
  """
  root = pathlib.Path(root).expanduser().resolve()
  envs = device_groups(parallel, devices)
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
    prepare = tuple(trainer) == TRAINER
  if prepare and todo:
    prepare_sources([points[i] for i in todo], runlocal=runlocal, data=data, extra=extra)
  free_envs: queue.Queue = queue.Queue()
  for env in envs:
    free_envs.put(env)

  def work(i: int) -> Outcome:
    env = free_envs.get()  # A device group nobody else is using.
    try:
      point = points[i]
      workdir = root / point.name
      command = build_command(
        point, workdir, runlocal=runlocal, data=data, extra=extra, trainer=trainer
      )
      logging.info("Starting %s%s", point.name, f" on {env}" if env else "")
      return run_point(point, workdir, command, env=env, grid_file=grid_file)
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


def summarize(outcomes: Sequence[Outcome]) -> str:
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
  *,
  runlocal: bool = False,
  data: str | None = None,
  extra: Mapping[str, str] | None = None,
  trainer: Sequence[str] = TRAINER,
  grid_file: str = "",
  out=None,
) -> list[Outcome]:
  """Prints one shell line per incomplete point (and writes its point.json); runs nothing."""
  out = out or sys.stdout
  root = pathlib.Path(root).expanduser().resolve()
  outcomes = []
  for point in points:
    workdir = root / point.name
    if is_complete(workdir):
      outcomes.append(Outcome(point, workdir, "skipped"))
      continue
    command = build_command(
      point, workdir, runlocal=runlocal, data=data, extra=extra, trainer=trainer
    )
    workdir.mkdir(parents=True, exist_ok=True)
    write_point_json(workdir, point, command, grid_file=grid_file)
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
    "Face folder for every point (default under --runlocal: $MASK2FACE_SHARED_DATA/lfw_gray).",
  )
  flags.DEFINE_integer("parallel", 1, "Runs at a time, each on its own share of the devices.")
  flags.DEFINE_string("devices", "", "gpu:0,1,... or tpu:0,1,...; '' = detect.")
  # The dashed spelling is the documented one; --print_commands works too.
  flags.DEFINE_bool("print-commands", False, "Print one command per point instead of running.")
  flags.DEFINE_alias("print_commands", "print-commands")
  flags.DEFINE_multi_string("override", [], "key=value for every point, e.g. num_train_steps=10.")
  flags.DEFINE_list("seeds", None, "Replace every configuration's seeds, e.g. --seeds=0.")
  flags.DEFINE_string("only", "", "Run only points whose name contains this text.")
  flags.mark_flags_as_required(["grid", "root"])


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
        "--runlocal needs faces: pass --data=DIR or set MASK2FACE_SHARED_DATA (lfw_gray inside)"
      )
    data = str(found)
  if data and not data.startswith("tfds:"):
    if not pathlib.Path(data).expanduser().is_dir():
      raise app.UsageError(f"--data={data}: no such folder")
    data = str(pathlib.Path(data).expanduser().resolve())  # The trainers run from REPO_ROOT.
  try:
    extra = parse_overrides(FLAGS.override)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  kwargs = dict(
    runlocal=FLAGS.runlocal,
    data=data,
    extra=extra,
    grid_file=str(pathlib.Path(FLAGS.grid).resolve()),
  )
  if FLAGS["print-commands"].value:
    outcomes = print_commands(points, FLAGS.root, **kwargs)
    logging.info(summarize(outcomes))
    return
  outcomes = run_points(
    points, FLAGS.root, parallel=FLAGS.parallel, devices=FLAGS.devices, **kwargs
  )
  cli.emit(summarize(outcomes))
  if any(o.status == "failed" for o in outcomes):
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
