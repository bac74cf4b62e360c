"""Tests for the grid runner and the result tables (mask2face.experiments), with a fake trainer."""

import dataclasses
import json
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

from mask2face import config_files
from mask2face.experiments import commands, devices, run
from mask2face.experiments import grid as grid_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
GRIDS = sorted((REPO_ROOT / "experiments").glob("*.py"))
SAFE_NAME = re.compile(r"^[A-Za-z0-9._=,+@~-]+(/[A-Za-z0-9._=,+@~-]+)*$")


def write_grid(tmp_path, body: str, name: str = "grid.py") -> pathlib.Path:
  path = tmp_path / name
  path.write_text(textwrap.dedent(body))
  return path


def _config_keys(config, prefix=""):
  keys = set()
  for key, value in config.items():
    keys.add(prefix + key)
    if hasattr(value, "items"):
      keys |= _config_keys(value, prefix + key + ".")
  return keys


# --- Grids. ------------------------------------------------------------------------------------


def test_shipped_grids_exist():
  names = {p.stem for p in GRIDS}
  assert {"architectures", "tuned_recipes", "losses", "depth_width", "upsampling"} <= names


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.stem)
@pytest.mark.parametrize("runlocal", [False, True])
def test_shipped_grid_loads_with_unique_safe_names_and_valid_keys(path, runlocal):
  points = grid_lib.load_grid(path, runlocal=runlocal)
  names = [p.name for p in points]
  assert len(names) == len(set(names))
  assert all(SAFE_NAME.match(n) and len(n.split("/")) == 3 for n in names), names
  assert names == [p.name for p in grid_lib.load_grid(path, runlocal=runlocal)]  # Deterministic.
  # Every override names a real field of its (locked) config: a typo would fail every run.
  for point in points:
    config = grid_lib.resolve_config(point.config)
    keys = _config_keys(config_files.load(f"{config}:{point.arg}" if point.arg else config))
    missing = set(point.all_overrides()) - keys
    assert not missing, f"{path.name}: {point.name} overrides unknown fields {missing}"
  if runlocal:
    assert all(p.shared == () for p in points)  # runlocal's own budget replaces BUDGET.


# The fields that make a training recipe: what the architectures grid must hold equal.
RECIPE_FIELDS = (
  "optimizer",
  "learning_rate",
  "schedule",
  "warmup_steps",
  "final_lr_fraction",
  "weight_decay",
  "grad_clip_norm",
  "loss.name",
  "loss.ssim_weight",
  "loss.pixel_weight",
  "loss.masked_weight",
  "loss.unmasked_weight",
  "best_metric",
  "best_mode",
  "early_stopping_patience",
)


def _point_config(point, runlocal=False):
  arg = ",".join(a for a in ("runlocal" if runlocal else "", point.arg) if a)
  config = grid_lib.resolve_config(point.config)
  config = config_files.load(f"{config}:{arg}" if arg else config)
  config.unlock()
  config.update_from_flattened_dict(point.all_overrides())
  return config


def _field(config, dotted):
  for part in dotted.split("."):
    config = config[part]
  return config


@pytest.mark.parametrize("runlocal", [False, True])
def test_architectures_grid_trains_every_config_with_one_recipe_and_budget(runlocal):
  points = grid_lib.load_grid(REPO_ROOT / "experiments" / "architectures.py", runlocal=runlocal)
  configs = {pathlib.Path(p.config).stem for p in points}
  # Every shipped architecture config, so a new architecture joins the comparison (the
  # bundled model's recipe, pretrained_*, is a unet trained longer, not an architecture).
  shipped = {p.stem for p in (REPO_ROOT / "configs").glob("*.py")}
  assert configs == {c for c in shipped if c != "common" and not c.startswith("pretrained_")}
  assert {"encoder_decoder", "unet", "resnet_unet", "upstream_resnet_unet"} <= configs
  assert all(not p.overrides and p.arg == "recipe=shared" for p in points)
  budgets = {p.shared for p in points}
  assert len(budgets) == 1
  if not runlocal:
    assert {"num_train_steps", "batch_size", "data.image_size", "data.source"} <= set(
      dict(budgets.pop())
    )
  # Loaded as the trainer loads them: one recipe for all (runlocal too), though the configs'
  # own recipes differ (the upstream port: constant 1e-4 and its own loss).
  recipes = {tuple(_field(_point_config(p, runlocal), f) for f in RECIPE_FIELDS) for p in points}
  assert len(recipes) == 1, recipes
  recipe = dict(zip(RECIPE_FIELDS, recipes.pop()))
  assert recipe["learning_rate"] == 5e-4 and recipe["best_metric"] == "eval_masked_psnr"
  tuned = grid_lib.load_grid(REPO_ROOT / "experiments" / "tuned_recipes.py", runlocal=runlocal)
  assert {pathlib.Path(p.config).stem for p in tuned} == configs
  assert all(not p.overrides and not p.arg for p in tuned)
  own = {tuple(_field(_point_config(p, runlocal), f) for f in RECIPE_FIELDS) for p in tuned}
  assert len(own) > 1
  # The two grids' points never share a workdir name (a rerun would skip the other's runs).
  assert not {p.group for p in points} & {p.group for p in tuned}


def test_shipped_grids_have_at_least_three_seeds():
  for path in GRIDS:
    points = grid_lib.load_grid(path)
    seeds = {}
    for p in points:
      seeds.setdefault(p.group, set()).add(p.seed)
    assert min(len(s) for s in seeds.values()) >= 3, path.name


def test_losses_and_upsampling_grids_cover_their_choices():
  losses = grid_lib.load_grid(REPO_ROOT / "experiments" / "losses.py")
  assert {dict(p.overrides)["loss.name"] for p in losses} == {
    "mae",
    "mse",
    "ssim",
    "ssim_l1",
    "upstream_ssim_mse",
  }
  assert {p.config for p in losses} == {"configs/resnet_unet.py"}
  ups = grid_lib.load_grid(REPO_ROOT / "experiments" / "upsampling.py")
  assert {dict(p.overrides)["model.upsample"] for p in ups} == {"transpose", "resize_conv"}


def test_upsampling_grid_covers_every_architecture_with_the_option():
  points = grid_lib.load_grid(REPO_ROOT / "experiments" / "upsampling.py")
  with_option = set()
  for config in sorted((REPO_ROOT / "configs").glob("*.py")):
    if config.stem == "common" or config.stem.startswith("pretrained_"):
      continue
    if "upsample" in config_files.load(config).model:
      with_option.add(config.stem)
  assert {"unet", "encoder_decoder", "refine_unet", "vae_unet", "resnet_unet"} <= with_option
  by_config = {}
  for p in points:
    by_config.setdefault(pathlib.Path(p.config).stem, set()).add(
      dict(p.overrides)["model.upsample"]
    )
  assert by_config == {name: {"transpose", "resize_conv"} for name in with_option}
  # The grid's original points keep their workdir names (finished runs are not redone).
  names = {p.name for p in points}
  for upsample in ("transpose", "resize_conv"):
    for seed in (0, 1, 2):
      assert f"resnet_unet/model.upsample={upsample}/seed={seed}" in names


def test_shipped_grids_build_on_the_standard_budget():
  for path in GRIDS:
    budget = grid_lib.load_module(path).BUDGET
    assert dict(budget).items() >= grid_lib.STANDARD_BUDGET.items(), path.name
  losses = grid_lib.load_module(REPO_ROOT / "experiments" / "losses.py").BUDGET
  assert losses["best_metric"] == "eval_masked_psnr"
  with pytest.raises(TypeError):
    grid_lib.STANDARD_BUDGET["batch_size"] = 1  # Shared by every grid: read-only.


def test_depth_width_has_upstream_settings_and_scales_under_runlocal():
  full = grid_lib.load_grid(REPO_ROOT / "experiments" / "depth_width.py")
  tables = {(dict(p.overrides)["model.filters"], dict(p.overrides)["model.kernels"]) for p in full}
  for filters, kernels in [
    ((64, 128, 128, 256, 256, 512), (7, 7, 7, 3, 3, 3)),
    ((64, 128, 128, 256, 256, 512), (7, 5, 5, 3, 3, 3)),
    ((16, 32, 64, 128, 256), (3,) * 5),
    ((256, 256, 128, 128, 64, 64, 32, 16), (3,) * 8),
  ]:
    assert (filters, kernels) in tables
  assert len(tables) > 4  # "and a few more"
  local = grid_lib.load_grid(REPO_ROOT / "experiments" / "depth_width.py", runlocal=True)
  for point in local:
    overrides = dict(point.overrides)
    levels = len(overrides["model.filters"])
    assert max(overrides["model.filters"]) <= 1024 // 8
    # Each level halves the image: the 8-level net needs 256 px even in a quick run.
    assert overrides.get("data.image_size", 64) >= 2**levels


def test_point_names_are_readable_order_free_and_distinct():
  a = grid_lib.point_group("configs/unet.py", "", {"model.filters": (8, 16, 32), "seed_x": 1})
  b = grid_lib.point_group("configs/unet.py", "", {"seed_x": 1, "model.filters": (8, 16, 32)})
  assert a == b == "unet/model.filters=8-16-32,seed_x=1"
  assert grid_lib.point_group("configs/unet.py", "size=128", {}) == "unet@size=128/default"
  # Unsafe characters are replaced, and the hash keeps texts that clean up alike apart.
  slash = grid_lib.point_group("configs/unet.py", "", {"data.source": "/a/b"})
  under = grid_lib.point_group("configs/unet.py", "", {"data.source": "_a_b"})
  assert slash != under and "/" not in slash.split("/", 1)[1]
  long = grid_lib.point_group("configs/unet.py", "", {"model.filters": tuple(range(100))})
  assert len(long.split("/")[1]) <= grid_lib.MAX_COMPONENT_LEN and "~" in long
  assert grid_lib.name_value(1e-4) == "0.0001" and grid_lib.name_value(True) == "True"


def test_flag_values_parse_back_to_the_same_values():
  import ast

  for value in [(8, 16), 0.0005, True, 3, "mae", "1", "tfds:lfw"]:
    text = grid_lib.flag_value(value)
    try:
      parsed = ast.literal_eval(text)
    except (SyntaxError, ValueError):
      parsed = text  # How ml_collections' config flags treat a non-literal.
    assert parsed == value and type(parsed) is type(value)


def test_load_grid_errors_name_the_file(tmp_path):
  with pytest.raises(grid_lib.GridError, match="no such grid file"):
    grid_lib.load_grid(tmp_path / "missing.py")
  no_sweep = write_grid(tmp_path, "X = 1\n", "no_sweep.py")
  with pytest.raises(grid_lib.GridError, match=r"no_sweep\.py.*sweep"):
    grid_lib.load_grid(no_sweep)
  twice = write_grid(
    tmp_path,
    """
    def sweep(add):
      add(config="configs/unet.py", overrides={"a": 1, "b": 2})
      add(config="configs/unet.py", overrides={"b": 2, "a": 1})
    """,
    "twice.py",
  )
  with pytest.raises(grid_lib.GridError, match=r"twice\.py.*added twice"):
    grid_lib.load_grid(twice)
  bad_config = write_grid(
    tmp_path, "def sweep(add):\n  add(config='configs/nope.py')\n", "bad_config.py"
  )
  with pytest.raises(grid_lib.GridError, match=r"bad_config\.py.*nope\.py"):
    grid_lib.load_grid(bad_config)
  broken = write_grid(tmp_path, "def sweep(add):\n  1 / 0\n", "broken.py")
  with pytest.raises(grid_lib.GridError, match=r"broken\.py: sweep.*ZeroDivisionError"):
    grid_lib.load_grid(broken)


def test_seeds_expand_and_can_be_replaced(tmp_path):
  path = write_grid(
    tmp_path, "def sweep(add):\n  add(config='configs/unet.py:size=32', seeds=(0, 1, 2))\n"
  )
  points = grid_lib.load_grid(path)
  assert [p.name for p in points] == [f"unet@size=32/default/seed={s}" for s in (0, 1, 2)]
  assert points[0].arg == "size=32" and points[0].config == "configs/unet.py"
  assert [p.seed for p in grid_lib.load_grid(path, seeds=[5])] == [5]


# --- Runner. -----------------------------------------------------------------------------------

FAKE_TRAINER = '''
"""A stand-in for mask2face.main: records its calls, can be interrupted once, or fail."""
import json, os, pathlib, sys

args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
workdir = pathlib.Path(args["workdir"])
with open(os.environ["FAKE_CALLS"], "a") as f:
  f.write(json.dumps({"workdir": str(workdir), "argv": sys.argv[1:]}) + "\\n")
if args.get("config.loss.name") == "broken":
  print("Traceback: the model exploded", flush=True)
  sys.exit(3)
checkpoints = workdir / "checkpoints"
if os.environ.get("FAKE_INTERRUPT") and not checkpoints.exists():
  checkpoints.mkdir()  # Killed after its first checkpoint.
  sys.exit(137)
result = {"resumed": checkpoints.exists(), "seed": int(args["config.seed"])}
(workdir / "results.json").write_text(json.dumps(result))
'''


@pytest.fixture
def fake_setup(tmp_path, monkeypatch):
  trainer = tmp_path / "fake_main.py"
  trainer.write_text(FAKE_TRAINER)
  calls = tmp_path / "calls.jsonl"
  monkeypatch.setenv("FAKE_CALLS", str(calls))
  path = write_grid(
    tmp_path,
    """
    def sweep(add):
      add(config="configs/resnet_unet.py", overrides={"loss.name": "mae"}, seeds=(0, 1))
      add(config="configs/resnet_unet.py", overrides={"loss.name": "broken"})
    """,
  )
  points = grid_lib.load_grid(path)

  def read_calls():
    if not calls.exists():
      return []
    return [json.loads(line) for line in calls.read_text().splitlines()]

  return points, (sys.executable, str(trainer)), tmp_path / "root", read_calls


def test_runner_skips_complete_resumes_interrupted_and_reports_failures(fake_setup, monkeypatch):
  points, trainer, root, read_calls = fake_setup
  # 1) Every run is interrupted (or fails): reported, and the runner goes on to the next.
  monkeypatch.setenv("FAKE_INTERRUPT", "1")
  settings = commands.RunSettings(trainer=trainer, data="/faces", extra={"x.y": "1"})
  outcomes = run.run_points(points, root, settings)
  assert [o.status for o in outcomes] == ["failed"] * 3
  assert "exit code 137" in outcomes[0].detail
  assert "exit code 3" in outcomes[2].detail and "model exploded" in outcomes[2].detail
  assert len(read_calls()) == 3
  summary = run.format_outcomes(outcomes)
  assert "3 failed" in summary and "FAILED resnet_unet/loss.name=broken/seed=0" in summary

  # 2) The same command again resumes the interrupted points in the same workdirs.
  monkeypatch.delenv("FAKE_INTERRUPT")
  outcomes = run.run_points(points, root, settings)
  assert [o.status for o in outcomes] == ["done", "done", "failed"]
  for point in points[:2]:
    result = json.loads((root / point.name / "results.json").read_text())
    assert result == {"resumed": True, "seed": point.seed}
    record = json.loads((root / point.name / "point.json").read_text())
    assert record["attempts"] == 2
    assert record["config"] == "configs/resnet_unet.py" and record["seed"] == point.seed
    assert record["overrides"] == {"loss.name": "mae"} and record["git_commit"]
    assert f"--workdir={root / point.name}" in record["command"]
    assert (root / point.name / "run.log").read_text().count("===") == 2
  last = read_calls()[-3]["argv"]
  assert "--config=configs/resnet_unet.py" in last
  assert "--config.data.source=/faces" in last and "--config.x.y=1" in last
  assert last[-1] == "--config.seed=0"

  # 3) Complete points are skipped: only the failing one is tried again.
  n_calls = len(read_calls())
  outcomes = run.run_points(points, root, commands.RunSettings(trainer=trainer))
  assert [o.status for o in outcomes] == ["skipped", "skipped", "failed"]
  assert [c["workdir"] for c in read_calls()[n_calls:]] == [str(root / points[2].name)]


def test_runner_parallel_gives_each_worker_its_own_gpus(fake_setup):
  points, trainer, root, read_calls = fake_setup
  settings = commands.RunSettings(trainer=trainer, runlocal=True)
  outcomes = run.run_points(points[:2], root, settings, parallel=2, devices="gpu:0,1,2,3")
  assert [o.status for o in outcomes] == ["done", "done"]
  envs = sorted(
    json.loads((root / p.name / "point.json").read_text())["env"]["CUDA_VISIBLE_DEVICES"]
    for p in points[:2]
  )
  assert envs == ["0,1", "2,3"]
  assert all("--config=configs/resnet_unet.py:runlocal" in c["argv"] for c in read_calls())


def test_run_settings_are_read_only_copies(tmp_path):
  extra, trainer = {"a": "1"}, ["python", "trainer.py"]
  settings = commands.RunSettings(extra=extra, trainer=trainer, runlocal=True)
  extra["a"], trainer[0] = "2", "other"
  assert settings.extra == {"a": "1"} and settings.trainer == ("python", "trainer.py")
  with pytest.raises(TypeError):
    settings.extra["b"] = "3"  # Shared by the worker threads.
  with pytest.raises(dataclasses.FrozenInstanceError):
    settings.runlocal = False
  grid_file = write_grid(tmp_path, "def sweep(add):\n  add(config='configs/unet.py:size=32')\n")
  point = grid_lib.load_grid(grid_file)[0]
  assert settings.config_arg(point) == "runlocal,size=32"


def test_device_groups(monkeypatch):
  assert devices.device_groups(2, "0,1,2,3") == [
    {"CUDA_VISIBLE_DEVICES": "0,1"},
    {"CUDA_VISIBLE_DEVICES": "2,3"},
  ]
  tpu = devices.device_groups(4, "tpu:0,1,2,3")
  assert [g["TPU_VISIBLE_CHIPS"] for g in tpu] == ["0", "1", "2", "3"]
  assert len({g["TPU_PROCESS_PORT"] for g in tpu}) == 4
  assert devices.device_groups(1, "tpu:0,1,2,3")[0]["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "2,2,1"
  with pytest.raises(ValueError, match="does not divide"):
    devices.device_groups(3, "0,1,2,3")
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
  assert devices.device_groups(2) == [{"CUDA_VISIBLE_DEVICES": "4"}, {"CUDA_VISIBLE_DEVICES": "5"}]
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
  monkeypatch.setattr(devices, "_count_gpus", lambda: 0)
  monkeypatch.setattr(devices, "_count_tpu_chips", lambda: 0)
  assert devices.device_groups(3) == [{}, {}, {}]  # A CPU: the workers share it.


def test_print_commands_cli(tmp_path):
  path = write_grid(
    tmp_path,
    """
    def sweep(add):
      add(config="configs/unet.py", overrides={"model.filters": (8, 16)}, seeds=(0, 1))
      add(config="configs/encoder_decoder.py")
    """,
  )
  root = tmp_path / "root"
  done = root / "unet/model.filters=8-16/seed=1"
  done.mkdir(parents=True)
  (done / "results.json").write_text("{}")
  faces = tmp_path / "faces"
  faces.mkdir()
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "mask2face.experiments.run",
      f"--grid={path}",
      f"--root={root}",
      "--print-commands",
      "--runlocal",
      f"--data={faces}",
      "--override=num_train_steps=5",
      "--multihost",  # One run over several hosts: the same line on each of them.
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    check=True,
    timeout=120,
  )
  lines = out.stdout.strip().splitlines()
  assert len(lines) == 2  # The complete point is left out.
  assert lines[0].startswith(f"cd {REPO_ROOT} && ")
  assert "--config=configs/unet.py:runlocal" in lines[0]
  assert f"--workdir={root}/unet/model.filters=8-16/seed=0" in lines[0]
  assert "'--config.model.filters=(8, 16)'" in lines[0]
  assert f"--config.data.source={faces}" in lines[0] and "--config.num_train_steps=5" in lines[0]
  assert lines[1].endswith("--config.seed=0") and "encoder_decoder/default/seed=0" in lines[1]
  assert all("--config.multihost=True" in line for line in lines)
  record = json.loads((root / "unet/model.filters=8-16/seed=0/point.json").read_text())
  assert record["command_line"] == lines[0]
  assert not (root / "unet/model.filters=8-16/seed=0/results.json").exists()  # Nothing ran.


CACHE_CHECKING_TRAINER = """
import json, pathlib, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
workdir = pathlib.Path(args["workdir"])
workdir.mkdir(parents=True, exist_ok=True)
cache = pathlib.Path(args["config.data.landmarks_cache"])
(workdir / "results.json").write_text(json.dumps({"cache_at_start": cache.exists()}))
"""


def test_runner_prepares_each_data_source_once_before_the_points(
  shared_data, tmp_path, monkeypatch
):
  from mask2face.data import pipeline

  faces = tmp_path / "faces"
  people = [p for p in sorted((shared_data / "lfw_gray").iterdir()) if p.is_dir()][:6]
  for person in people:
    (faces / person.name).mkdir(parents=True)
    for photo in sorted(person.glob("*.jpg"))[:2]:
      (faces / person.name / photo.name).symlink_to(photo)
  trainer = tmp_path / "cache_checking_main.py"
  trainer.write_text(CACHE_CHECKING_TRAINER)
  grid_file = write_grid(
    tmp_path,
    """
    def sweep(add):
      add(config="configs/unet.py", seeds=(0, 1))
      add(config="configs/unet.py", overrides={"data.max_examples": 4})
    """,
  )
  calls = []
  real_prepare = pipeline.prepare_data
  monkeypatch.setattr(
    pipeline, "prepare_data", lambda *a, **k: calls.append(a[0].source) or real_prepare(*a, **k)
  )
  cache = tmp_path / "landmarks.json"
  outcomes = run.run_points(
    grid_lib.load_grid(grid_file, runlocal=True),
    tmp_path / "root",
    commands.RunSettings(
      runlocal=True,
      data=str(faces),
      extra={"data.landmarks_cache": str(cache)},
      trainer=(sys.executable, str(trainer)),
    ),
    parallel=2,
    devices="gpu:0,1",
    prepare=True,
  )
  assert [o.status for o in outcomes] == ["done"] * 3, run.format_outcomes(outcomes)
  assert calls == [str(faces)]  # Three points, one source: prepared once.
  assert cache.exists()
  for outcome in outcomes:  # Every point found the cache ready when it started.
    assert json.loads((outcome.workdir / "results.json").read_text()) == {"cache_at_start": True}
  # By default only mask2face's own trainer gets prepared data (a custom one may not read it).
  run.run_points(
    grid_lib.load_grid(grid_file, runlocal=True)[:1],
    tmp_path / "root2",
    commands.RunSettings(
      runlocal=True,
      data=str(faces),
      extra={"data.landmarks_cache": str(tmp_path / "other.json")},
      trainer=(sys.executable, str(trainer)),
    ),
  )
  assert calls == [str(faces)]


def test_runlocal_grids_default_to_the_faces_runlocal_configs_train_on(tmp_path, monkeypatch):
  # A grid under --runlocal and a single `:runlocal` run must see the same faces: colour
  # UTKFace when present, else the grayscale LFW subset, else none (the CLI then says so).
  monkeypatch.setenv("MASK2FACE_SHARED_DATA", str(tmp_path))
  assert run.default_data_dir() is None
  (tmp_path / "lfw_gray").mkdir()
  assert run.default_data_dir() == tmp_path / "lfw_gray"
  (tmp_path / "utkface").mkdir()
  assert run.default_data_dir() == tmp_path / "utkface"
  common = config_files.load_module(grid_lib.REPO_ROOT / "configs" / "common.py")
  config = common.apply_runlocal(common.get_config())
  assert config.data.source == str(tmp_path / "utkface")
