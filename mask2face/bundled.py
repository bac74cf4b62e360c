"""Weights that ship inside the package (`mask2face/pretrained/<name>.npz` + `<name>.json`).

A bundled model is a trained run reduced to what inference needs: the run's config (as JSON)
and its params and BatchNorm statistics stored in float16 (half the bytes; the weights of a
trained conv net lose nothing visible in 16 bits) and loaded back as float32. `load` gives
the same `(config, model, variables)` triple as `predict.load_run` gives for a workdir, so the
Unmasker, `mask2face.predict` and `mask2face.export` use either without knowing which.

Pack a run's best weights (run from the repository root; `pip install .` then includes them):
  python -m mask2face.bundled --workdir=workdirs/pretrained_unet --name=unet_128
"""

import io
import json
import pathlib

import numpy as np

from mask2face import atomic

WEIGHTS_DIR = pathlib.Path(__file__).resolve().parent / "pretrained"
DEFAULT = "unet_128"
# A bundled model is the only model file that ships with a wheel: keep it small.
MAX_BYTES = 25 * 1024 * 1024
# Marks a bundled model where a checkpoint path is accepted (`init_checkpoint=bundled:NAME`).
PREFIX = "bundled:"


def available() -> list[str]:
  """Names of the bundled models (each an `.npz` with its `.json` config beside it)."""
  if not WEIGHTS_DIR.is_dir():
    return []
  return sorted(p.stem for p in WEIGHTS_DIR.glob("*.npz") if p.with_suffix(".json").is_file())


def _flatten(tree, prefix=()) -> dict[str, np.ndarray]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, (*prefix, key)))
    else:
      out["/".join((*prefix, key))] = np.asarray(value)
  return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def pack(config: dict, variables: dict, name: str, *, directory=None) -> pathlib.Path:
  """Writes `variables` in float16 and `config` as `<directory>/<name>.npz/.json`.

  Raises:
    ValueError: when a weight overflows float16 or the file would exceed `MAX_BYTES`.
  """
  directory = pathlib.Path(directory) if directory else WEIGHTS_DIR
  flat = _flatten({k: v for k, v in variables.items() if v})
  half = {}
  for key, value in flat.items():
    if np.issubdtype(value.dtype, np.floating):
      if np.abs(value).max(initial=0.0) > np.finfo(np.float16).max:
        raise ValueError(f"{name}: weight {key} does not fit in float16")
      value = value.astype(np.float16)
    half[key] = value
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **half)
  data = buffer.getvalue()
  if len(data) > MAX_BYTES:
    raise ValueError(
      f"{name}: {len(data) / 2**20:.1f} MiB is over the {MAX_BYTES // 2**20} MiB cap"
    )
  npz_path, json_path = directory / f"{name}.npz", directory / f"{name}.json"
  atomic.write_bytes(npz_path, data)
  atomic.write_json(json_path, config, indent=2, sort_keys=True)
  return npz_path


def load_variables(path) -> dict:
  """float32 variables from a packed `.npz`."""
  path = pathlib.Path(path)
  try:
    with np.load(path) as npz:
      flat = {
        k: (v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v)
        for k, v in npz.items()
      }
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: cannot read bundled weights ({e})") from e
  return _unflatten(flat)


def load(name: str = DEFAULT, *, directory=None):
  """(config, model, variables) of a bundled model, as `predict.load_run` gives for a workdir."""
  import ml_collections

  from mask2face import models

  directory = pathlib.Path(directory) if directory else WEIGHTS_DIR
  npz_path, json_path = directory / f"{name}.npz", directory / f"{name}.json"
  if not npz_path.is_file() or not json_path.is_file():
    names = available() if directory == WEIGHTS_DIR else []
    raise ValueError(
      f"no bundled model {name!r} in {directory} (available: {names or 'none'}); "
      "reinstall mask2face or pass --checkpoint=WORKDIR"
    )
  config = ml_collections.ConfigDict(atomic.read_json(json_path, what="bundled model config"))
  variables = load_variables(npz_path)
  return config, models.model_from_config(config, axis_name=None), variables


def pack_run(workdir, name: str, *, which: str = "best", directory=None) -> pathlib.Path:
  """Packs a training run's best (or latest) weights and its config under `name`."""
  from mask2face import predict

  config, _, variables = predict.load_run(workdir, which=which)
  return pack(json.loads(config.to_json_best_effort()), variables, name, directory=directory)


def main(argv):
  from absl import flags

  from mask2face import cli

  del argv
  flag = flags.FLAGS
  path = pack_run(flag.workdir, flag.name, which=flag.which)
  cli.emit(
    f"Packed {flag.workdir} ({flag.which}) into {path} ({path.stat().st_size / 2**20:.1f} MiB)"
  )


def define_flags() -> None:
  from absl import flags

  flags.DEFINE_string("workdir", None, "A training run's workdir.", required=True)
  flags.DEFINE_string("name", DEFAULT, "Name of the bundled model (mask2face/pretrained/NAME.npz).")
  flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint of the run to pack.")


if __name__ == "__main__":
  from absl import app

  define_flags()
  app.run(main)
