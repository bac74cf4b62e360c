"""A training run's folder written directly: `config.json` + `checkpoints/<step>/state`.

For predict/export tests that need a checkpoint of a chosen model without training one. The
layout is train.py's (see mask2face/checkpointing.py); tests/test_end_to_end.py checks that a
really trained run loads the same way, so this copy cannot drift unnoticed.
"""

import pathlib

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from mask2face import config_files
from mask2face.train import TrainState

COMMON_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "common.py"


def write_run_folder(workdir, variables, *, model_name, model_kwargs, size, step=7):
  config = config_files.load(COMMON_CONFIG, lock_config=False)  # Model kwargs are new fields.
  config.model_name = model_name
  for key, value in model_kwargs.items():
    config.model[key] = value
  config.data.image_size = size
  (workdir / "config.json").write_text(config.to_json_best_effort())
  state = TrainState(
    step=jnp.array(step),
    params=variables["params"],
    batch_stats=variables.get("batch_stats", {}),
    opt_state={},
    rng=jax.random.key_data(jax.random.key(1)),
  )
  with ocp.CheckpointManager(workdir / "checkpoints", item_names=("state",)) as manager:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
