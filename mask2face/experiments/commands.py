"""From a grid point to its trainer's command line, and the config that command gives.

`RunSettings` holds what every point of one `experiments.run` invocation shares (runlocal,
--data, --override, the trainer, the grid file); `build_command` adds a point's own config,
overrides and seed. `point_data_config` reads back the `config.data` the trainer will see.
"""

import dataclasses
import os
import shlex
import sys
import types
from collections.abc import Mapping, Sequence

from mask2face.experiments import grid as grid_lib

TRAINER = (sys.executable, "-m", "mask2face.main")


@dataclasses.dataclass(frozen=True)
class RunSettings:
  """What every point of one runner invocation shares besides its own config and seed.

  Attributes:
    runlocal: append `runlocal` to every config's argument.
    data: a face source for every point (`--config.data.source`); None = each config's own.
    extra: `--config.key=value` overrides for every point, as strings (after the point's own).
    trainer: the trainer's argv before the flags (mask2face.main in this Python).
    grid_file: the grid file, recorded in each point.json.
  """

  runlocal: bool = False
  data: str | None = None
  extra: Mapping[str, str] = dataclasses.field(default_factory=dict)
  trainer: Sequence[str] = TRAINER
  grid_file: str = ""

  def __post_init__(self):
    # Read-only copies: the settings are shared by the worker threads.
    object.__setattr__(self, "extra", types.MappingProxyType(dict(self.extra)))
    object.__setattr__(self, "trainer", tuple(self.trainer))

  def config_arg(self, point: grid_lib.Point) -> str:
    """The argument after `point`'s config path: `runlocal` first, then the point's own."""
    return ",".join(a for a in ("runlocal" if self.runlocal else "", point.arg) if a)


def point_overrides(point: grid_lib.Point, settings: RunSettings) -> dict[str, str]:
  """Every `--config.key=value` of a point, as strings: BUDGET, point, --data, --override."""
  values = {k: grid_lib.flag_value(v) for k, v in point.all_overrides().items()}
  if settings.data:
    values["data.source"] = str(settings.data)
  values.update(settings.extra)
  values["seed"] = str(point.seed)
  return values


def build_command(
  point: grid_lib.Point, workdir: str | os.PathLike, settings: RunSettings
) -> list[str]:
  """The trainer's argv for `point` (run from REPO_ROOT, where relative config paths start)."""
  arg = settings.config_arg(point)
  config = point.config + (f":{arg}" if arg else "")
  command = [*settings.trainer, f"--config={config}", f"--workdir={workdir}"]
  overrides = point_overrides(point, settings)
  command += [f"--config.{k}={v}" for k, v in overrides.items()]
  return command


def command_line(command: Sequence[str]) -> str:
  """One shell line that runs `command` from any directory."""
  return f"cd {shlex.quote(str(grid_lib.REPO_ROOT))} && {shlex.join(command)}"
