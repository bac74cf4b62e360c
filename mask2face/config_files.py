"""Config files (`configs/<name>.py`) loaded by path, from any working directory.

A config file defines `get_config(arg=None) -> ConfigDict` and is named as `path.py` or
`path.py:arg` (big_vision's convention, e.g. `configs/unet.py:runlocal,size=128`). `load` gives
exactly what `ml_collections.config_flags.DEFINE_config_file` gives for the same text (main.py's
`--config`), so tests, benchmarks and CLIs see the config the trainer sees.

Config files build on each other by path, not by import, so none of them needs the checkout
root on `sys.path`:

  from mask2face import config_files

  common = config_files.sibling(__file__, "common")
"""

import importlib.machinery
import importlib.util
import itertools
import os
import pathlib
import types

_MODULE_IDS = itertools.count()


def split(spec: str | os.PathLike) -> tuple[str, str | None]:
  """`'configs/unet.py:runlocal'` -> `('configs/unet.py', 'runlocal')`; no colon: `(spec, None)`.

  Splits at the first colon, as config_flags does (`'a.py:'` passes the argument '').
  """
  path, sep, arg = str(spec).partition(":")
  return path, (arg if sep else None)


def load_module(path: str | os.PathLike) -> types.ModuleType:
  """Executes the Python file at `path` (relative to the current directory) as a new module.

  Every call executes the file again, as config_flags does, and nothing is added to
  `sys.modules`: two configs that load the same sibling never share (or mutate) its state.
  """
  path = str(path)
  name = f"mask2face_config_{pathlib.Path(path).stem}_{next(_MODULE_IDS)}"
  # A SourceFileLoader, like config_flags: any file name works, not only `*.py`.
  loader = importlib.machinery.SourceFileLoader(name, path)
  module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
  loader.exec_module(module)
  return module


def load(spec: str | os.PathLike, *, lock_config: bool = True):
  """The config `spec` names (`path.py` or `path.py:arg`), as `--config=spec` gives it.

  Args:
    spec: a config file, absolute or relative to the current directory, optionally followed
      by `:arg`, which is passed to its `get_config(arg)`.
    lock_config: lock the result (config_flags' default, and main.py's): existing fields can
      change, new ones cannot be added, so a typo in an override fails.

  Returns:
    What `get_config` returned (a `ml_collections.ConfigDict` for mask2face's configs).
  """
  path, arg = split(spec)
  module = load_module(path)
  config = module.get_config() if arg is None else module.get_config(arg)
  if lock_config and callable(getattr(config, "lock", None)):
    config.lock()
  return config


def sibling(config_file: str | os.PathLike, name: str) -> types.ModuleType:
  """The config file `<name>.py` beside `config_file` (a config's `__file__`), as a module."""
  return load_module(pathlib.Path(config_file).resolve().parent / f"{name}.py")
