"""Grid files: `sweep(add)` turned into points, each with a readable, unique workdir name.

A grid file (`experiments/*.py`) defines

  from mask2face.experiments.grid import STANDARD_BUDGET
  BUDGET = {**STANDARD_BUDGET, 'best_metric': ...}  # optional: overrides every point shares

  def sweep(add):
    add(config='configs/unet.py', overrides={'model.filters': (8, 16, 32)}, seeds=(0, 1, 2))

Every `add` call is one configuration; it becomes one point per seed. A point's workdir name
is `<config>/<overrides>/seed=<n>`, e.g. `unet/model.filters=8-16-32/seed=0` (`default` when a
call has no overrides). `BUDGET` is left out of the names (it is the same for every point) and
is dropped under `--runlocal`, whose own block (configs/common.py) already gives every config
the same small budget. Grids that must adapt to runlocal read `add.runlocal`, and scale
explicit filter tables with `add.filters(...)` the way runlocal scales the configs' own.
"""

import ast
import dataclasses
import hashlib
import importlib.util
import pathlib
import re
import types
from collections.abc import Mapping, Sequence
from typing import Any

# The checkout holding `configs/` and `experiments/`; relative config paths start here.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
# Anything else is replaced in names: these are safe on every common filesystem and in shells.
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+@-]")
MAX_COMPONENT_LEN = 120

# The budget the shipped grids share, so their results compare across grids: the same data,
# image size, batch and steps. The training recipe (optimizer, schedule, loss) is each
# config's own unless the grid asks for a shared one (`configs/x.py:recipe=shared`, as the
# architectures grid does). Read-only: grid files share it.
STANDARD_BUDGET = types.MappingProxyType(
  {
    "data.source": "tfds:lfw",
    "data.image_size": 256,
    "batch_size": 16,
    "num_train_steps": 20_000,
    "eval_every_steps": 1000,
    "checkpoint_every_steps": 1000,
    # Early stopping would give the points different numbers of steps.
    "early_stopping_patience": 0,
  }
)


class GridError(ValueError):
  """A grid file that cannot be loaded; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Point:
  """One training run of a grid.

  Attributes:
    config: the config file as the grid wrote it (relative to REPO_ROOT, or absolute).
    arg: the config argument ('' for none), e.g. 'size=128' for `configs/unet.py:size=128`.
    overrides: the point's own `(key, value)` overrides, sorted by key (they name the point).
    seed: the value of `config.seed`.
    shared: the grid's BUDGET overrides (not in the name; point overrides win over them).
    group: the configuration's name, the same for every seed: `<config>/<overrides>`.
    name: the workdir, relative to the grid root: `<group>/seed=<n>`.
  """

  config: str
  arg: str
  overrides: tuple[tuple[str, Any], ...]
  seed: int
  shared: tuple[tuple[str, Any], ...]
  group: str
  name: str

  def all_overrides(self) -> dict[str, Any]:
    """BUDGET, then the point's own overrides (which win)."""
    return {**dict(self.shared), **dict(self.overrides)}


def runlocal_filters(filters: Sequence[int]) -> tuple[int, ...]:
  """An eighth of the channels, at least 4: what configs/common.apply_runlocal does."""
  return tuple(max(4, int(f) // 8) for f in filters)


def name_value(value: Any) -> str:
  """A value as it appears in a workdir name: tuples joined by '-', floats by repr."""
  if isinstance(value, list | tuple):
    return "-".join(name_value(v) for v in value)
  return repr(value) if isinstance(value, float) else str(value)


def flag_value(value: Any) -> str:
  """A value as `--config.key=<value>` must spell it (ml_collections parses literals)."""
  if isinstance(value, str):
    try:
      ast.literal_eval(value)
    except (SyntaxError, ValueError):
      return value  # Not a literal: config_flags keeps it as the string it is.
    return repr(value)  # '1' would otherwise become the int 1.
  return repr(value)


def safe_component(text: str) -> str:
  """`text` as one path component; hashed when it had to change or is too long.

  The hash of the original text keeps two different texts that clean up alike apart.
  """
  cleaned = _UNSAFE.sub("_", text).strip(".") or "_"
  if cleaned == text and len(text) <= MAX_COMPONENT_LEN:
    return text
  digest = hashlib.sha1(text.encode()).hexdigest()[:10]
  return f"{cleaned[: MAX_COMPONENT_LEN - 11]}~{digest}"


def split_config(spec: str) -> tuple[str, str]:
  """`'configs/unet.py:size=128'` -> `('configs/unet.py', 'size=128')`."""
  path, sep, arg = spec.partition(".py:")
  return (path + ".py", arg) if sep else (spec, "")


def resolve_config(path: str) -> pathlib.Path:
  """The config file on disk: absolute, or relative to REPO_ROOT (then the current dir)."""
  candidate = pathlib.Path(path).expanduser()
  if candidate.is_absolute():
    return candidate
  in_repo = REPO_ROOT / candidate
  return in_repo if in_repo.exists() else candidate.resolve()


def point_group(config: str, arg: str, overrides: Mapping[str, Any]) -> str:
  """`<config stem>[@arg]/<k=v,...>` with keys sorted; 'default' when there are none."""
  label = pathlib.Path(config).stem + (f"@{arg}" if arg else "")
  parts = ",".join(f"{k}={name_value(v)}" for k, v in sorted(overrides.items()))
  return f"{safe_component(label)}/{safe_component(parts or 'default')}"


class Adder:
  """The `add` a grid's `sweep(add)` receives; collects one configuration per call."""

  def __init__(self, *, runlocal: bool = False):
    self.runlocal = runlocal
    self.calls: list[tuple[str, str, dict[str, Any], tuple[int, ...]]] = []

  def __call__(
    self,
    config: str,
    overrides: Mapping[str, Any] | None = None,
    seeds: Sequence[int] = (0,),
  ) -> None:
    """Adds `config` (path[:arg]) with `overrides` ({'model.filters': (8, 16)}), per seed."""
    if not isinstance(config, str) or not config:
      raise GridError(f"add(config=...) needs a config file path, got {config!r}")
    path, arg = split_config(config)
    resolved = resolve_config(path)
    if not resolved.is_file():
      raise GridError(f"add(config={config!r}): no such config file {resolved}")
    if not (REPO_ROOT / path).is_file():
      path = str(resolved)  # Trainers run from REPO_ROOT: a path relative to elsewhere breaks.
    overrides = dict(overrides or {})
    bad = [k for k in overrides if not isinstance(k, str) or not k or k.startswith("-")]
    if bad or "seed" in overrides:
      raise GridError(
        f"add(config={config!r}): bad override keys {bad or ['seed']} "
        "(dotted config fields like 'model.filters'; seeds go in seeds=...)"
      )
    seeds = tuple(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) for s in seeds):
      raise GridError(f"add(config={config!r}): seeds must be distinct ints, got {seeds!r}")
    self.calls.append((path, arg, overrides, seeds))

  def filters(self, values: Sequence[int]) -> tuple[int, ...]:
    """`values` for a full run; an eighth of them (as runlocal scales the configs) under runlocal."""
    return runlocal_filters(values) if self.runlocal else tuple(int(v) for v in values)


def load_module(path: pathlib.Path):
  """Executes a grid file as a fresh module; GridError on failure (configs: `config_files`)."""
  spec = importlib.util.spec_from_file_location(f"mask2face_grid_{path.stem}", path)
  if spec is None or spec.loader is None:
    raise GridError(f"{path}: not a Python file")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:
    raise GridError(f"{path}: failed to load: {type(e).__name__}: {e}") from e
  return module


def load_grid(
  path: str | pathlib.Path, *, runlocal: bool = False, seeds: Sequence[int] | None = None
) -> list[Point]:
  """Runs the grid file's `sweep(add)` and returns its points, in the order they were added.

  Args:
    path: the grid file.
    runlocal: tell the grid (`add.runlocal`) and drop its BUDGET (see the module docstring).
    seeds: replaces every configuration's seeds (e.g. one seed for a quick look).

  Raises:
    GridError: the file is missing, has no `sweep`, adds nothing, or names a point twice.
  """
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise GridError(f"{path}: no such grid file")
  module = load_module(path)
  sweep = getattr(module, "sweep", None)
  if not callable(sweep):
    raise GridError(f"{path}: defines no sweep(add) function")
  budget = getattr(module, "BUDGET", {})
  if not isinstance(budget, Mapping):
    raise GridError(f"{path}: BUDGET must be a dict of overrides, got {type(budget).__name__}")
  shared = () if runlocal else tuple(sorted(budget.items()))

  adder = Adder(runlocal=runlocal)
  try:
    sweep(adder)
  except GridError as e:
    raise GridError(f"{path}: {e}") from e
  except Exception as e:
    raise GridError(f"{path}: sweep(add) failed: {type(e).__name__}: {e}") from e
  if not adder.calls:
    raise GridError(f"{path}: sweep(add) added no configuration")

  points: list[Point] = []
  seen: dict[str, tuple] = {}
  for config, arg, overrides, call_seeds in adder.calls:
    group = point_group(config, arg, overrides)
    key = (config, arg, sorted(overrides.items(), key=lambda kv: kv[0]))
    if group in seen and seen[group] != key:
      raise GridError(f"{path}: two different configurations share the name {group!r}")
    if group in seen:
      raise GridError(f"{path}: configuration {group!r} is added twice")
    seen[group] = key
    for seed in seeds if seeds is not None else call_seeds:
      points.append(
        Point(
          config=config,
          arg=arg,
          overrides=tuple(sorted(overrides.items())),
          seed=int(seed),
          shared=shared,
          group=group,
          name=f"{group}/seed={int(seed)}",
        )
      )
  return points
