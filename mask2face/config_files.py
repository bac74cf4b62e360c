"""Config files (`configs/<name>.py`) loaded by path, from any working directory.

A config file defines `get_config(arg=None) -> ConfigDict` and is named as `path.py` or
`path.py:arg` (big_vision's convention, e.g. `configs/unet.py:runlocal,size=128`). `load` gives
exactly what `ml_collections.config_flags.DEFINE_config_file` gives for the same text (main.py's
`--config`), so tests, benchmarks and CLIs see the config the trainer sees.

Overrides written on a command line (`key=value`, `--config.key=value`) go through
`parse_overrides` and `apply_overrides`, which read each value as config flags would for the
field it replaces, so every CLI that takes them agrees with `mask2face.main`.

Config files build on each other by path, not by import, so none of them needs the checkout
root on `sys.path`:

  from mask2face import config_files

  common = config_files.sibling(__file__, "common")
"""

import ast
import importlib.machinery
import importlib.util
import itertools
import os
import pathlib
import types
from collections.abc import Mapping, Sequence
from typing import Any

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


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
  """`['batch_size=8', '--config.model.filters=(4,8)']` -> {key: value as written}.

  A leading `--` and `config.` are dropped, so grid `--override` values and trainer-style
  `--config.*` arguments read alike; the values stay text until `apply_overrides`.
  """
  out = {}
  for item in items:
    key, sep, value = item.partition("=")
    key = key.strip().removeprefix("--").removeprefix("config.")
    if not sep or not key:
      raise ValueError(f"{item!r}: expected key=value, e.g. num_train_steps=100")
    out[key] = value
  return out


def parse_value(text: str, like: Any) -> Any:
  """`text` as ml_collections' config flags parse it for a field holding `like`.

  A string field takes the text as it is (a path, a pattern, ''); any other field a Python
  literal ('0.2', '(4, 8)', 'True'), else the text.
  """
  if isinstance(like, str):
    return text
  try:
    return ast.literal_eval(text)
  except (SyntaxError, ValueError):
    return text


def apply_overrides(config, overrides: Mapping[str, Any]):
  """Sets dotted keys of `config` in place (text values parsed per field); returns it.

  A key that names no existing field raises KeyError (a locked ConfigDict's rule), so a typo
  fails instead of training with the default.
  """
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for name in parents:
      node = node[name]
    if leaf not in node:
      raise KeyError(f"{key}: no such config field")
    node[leaf] = parse_value(value, node[leaf]) if isinstance(value, str) else value
  return config
