"""Prints a table of parameters, FLOPs and activation memory per model.

  python -m mask2face.models.summary --config=configs/resnet_unet.py
  python -m mask2face.models.summary --models=unet,resnet_unet --size=256

Parameters come from `jax.eval_shape` (nothing is initialised); FLOPs per image are XLA's own
count for the compiled forward pass (eval mode, batch 1); the activation estimate sums the
outputs of every conv and norm layer for one image, roughly what training keeps for the
backward pass, and `XLA temp` is the scratch memory XLA plans for the forward pass.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from mask2face import cli
from mask2face.models import MODELS, get_model, layers, model_from_config

_RNGS = ("params", "latent", "dropout")
_LAYERS = (nn.Conv, nn.ConvTranspose, layers.ResizeConv, nn.BatchNorm, nn.GroupNorm)


def _rngs() -> dict[str, jax.Array]:
  return {name: jax.random.key(i) for i, name in enumerate(_RNGS)}


def variable_shapes(model: nn.Module, input_shape: Sequence[int]) -> Any:
  """The variables' shapes (`ShapeDtypeStruct`s) without computing anything."""
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  return jax.eval_shape(lambda x: model.init(_rngs(), x, train=False), x)


def param_count(model: nn.Module, input_shape: Sequence[int]) -> int:
  """Number of trainable parameters (the `params` collection)."""
  shapes = variable_shapes(model, input_shape)
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"]))


def activation_bytes(model: nn.Module, input_shape: Sequence[int]) -> int:
  """Sum of the outputs of every conv / norm layer in a training forward pass (bytes)."""
  shapes = variable_shapes(model, input_shape)
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)

  def forward(variables, x):
    _, state = model.apply(
      variables,
      x,
      train=True,
      rngs=_rngs(),
      mutable=["intermediates", "batch_stats"],
      capture_intermediates=lambda mdl, method: isinstance(mdl, _LAYERS),
    )
    return state["intermediates"]

  out = jax.eval_shape(forward, shapes, x)
  return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(out))


def forward_cost(model: nn.Module, input_shape: Sequence[int]) -> dict[str, float]:
  """XLA's FLOP count and planned scratch memory for one compiled eval forward pass."""
  shapes = variable_shapes(model, input_shape)
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False, rngs=_rngs())[0])
  compiled = fn.lower(shapes, x).compile()
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):  # Older jax returned one dict per computation.
    cost = cost[0] if cost else {}
  memory = compiled.memory_analysis()
  temp = getattr(memory, "temp_size_in_bytes", float("nan")) if memory is not None else np.nan
  return {"flops": float((cost or {}).get("flops", np.nan)), "temp_bytes": float(temp)}


def model_costs(model: nn.Module, size: int, channels: int = 3) -> dict[str, float]:
  """Parameters, forward GFLOPs per image, activation and XLA scratch memory (MiB)."""
  shape = (1, size, size, channels)
  cost = forward_cost(model, shape)
  return {
    "params": param_count(model, shape),
    "gflops": cost["flops"] / 1e9,
    "activation_mib": activation_bytes(model, shape) / 2**20,
    "xla_temp_mib": cost["temp_bytes"] / 2**20,
  }


def markdown_table(rows: Sequence[tuple[str, dict[str, float]]], size: int) -> str:
  lines = [
    f"| model ({size}x{size}) | parameters | GFLOPs / image (fwd) | activations (MiB) "
    "| XLA temp (MiB) |",
    "|---|---:|---:|---:|---:|",
  ]
  for name, s in rows:
    lines.append(
      f"| {name} | {s['params']:,} | {s['gflops']:.2f} | {s['activation_mib']:.1f} "
      f"| {s['xla_temp_mib']:.1f} |"
    )
  return "\n".join(lines)


def define_flags() -> None:
  """The CLI's flags, defined only when run as a script: importing this module (a test, a
  notebook) must not claim `--config` or `--size` from a program that defines its own."""
  config_flags.DEFINE_config_file("config", None, "A configs/<name>.py file.")
  flags.DEFINE_list("models", [], f"Registered names with default settings: {list(MODELS)}")
  flags.DEFINE_integer("size", 0, "Image side; 0 = the config's data.image_size (or 256).")
  flags.DEFINE_string("dtype", "", "Compute dtype for --models ('' = float32).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  config = f.config
  if config is None and not f.models:
    raise app.UsageError("give --config=configs/<name>.py and/or --models=unet,resnet_unet")
  size = f.size or (int(config.data.image_size) if config is not None else 256)
  models = []
  if config is not None:
    label = f"{config.model_name} ({config.get('name', 'config')})"
    models.append((label, model_from_config(config, axis_name=None)))
  for name in f.models:
    kwargs = {"dtype": f.dtype} if f.dtype else {}
    models.append((name, get_model(name, **kwargs)))
  rows = [(name, model_costs(model, size)) for name, model in models]
  cli.emit(markdown_table(rows, size))


if __name__ == "__main__":
  define_flags()
  app.run(main)
