"""Hyperparameters that enter the jitted steps as values, so that a sweep compiles once.

A learning-rate or loss-weight sweep changes numbers, not the program. Closed over as Python
floats, those numbers would be constants in the step's HLO and every grid point would compile
from scratch (minutes on a GPU); as arrays in the train state, points that differ only in them
lower to the same HLO, and JAX's persistent compilation cache serves all but the first.
- The optimizer's (`OPTIMIZER_VALUES`: peak learning rate, warmup, decay length, final
  fraction, weight decay, clipping norm) live in its state, through `optax.inject_hyperparams`;
  the schedule is evaluated from them inside the step (`learning_rate_at`).
- The loss weights (`LOSS_WEIGHTS`) live in `TrainState.loss_weights` and reach
  `losses.compute_loss(..., loss_weights=)`.
Choices that change the program stay static: the optimizer, the schedule's shape, clipping on
or off, and whether a weight that can switch a loss term off (`kl_weight`, `coarse_weight`) is
zero.
"""

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "warmup_cosine")
OPTIMIZER_VALUES = (
  "learning_rate",
  "warmup_steps",
  "decay_steps",
  "final_lr_fraction",
  "weight_decay",
  "grad_clip_norm",
)
# Each with the value compute_loss assumes when the config lacks it.
LOSS_WEIGHTS = {
  "ssim_weight": 1.0,
  "pixel_weight": 1.0,
  "kl_weight": 0.0,
  "coarse_weight": 0.0,
  "masked_weight": 1.0,
  "unmasked_weight": 1.0,
}


def learning_rate_at(
  step,
  *,
  schedule: str,
  learning_rate,
  warmup_steps,
  decay_steps,
  final_lr_fraction,
  **unused,
) -> jax.Array:
  """The learning rate at `step`; every argument but `schedule` may be a traced array.

  'constant': a linear warmup from 0 over `warmup_steps` (none when 0), then `learning_rate`.
  'warmup_cosine': the same warmup, then a cosine decay to `learning_rate *
  final_lr_fraction` at `decay_steps` (optax.warmup_cosine_decay_schedule's values).
  """
  del unused  # The optimizer's other values (weight decay, clipping).
  step = jnp.asarray(step, jnp.float32)
  warmup = jnp.asarray(warmup_steps, jnp.float32)
  warm = jnp.where(warmup > 0, jnp.minimum(step / jnp.maximum(warmup, 1.0), 1.0), 1.0)
  if schedule == "constant":
    return learning_rate * warm
  progress = jnp.clip((step - warmup) / jnp.maximum(decay_steps - warmup, 1.0), 0.0, 1.0)
  cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  return learning_rate * warm * (final_lr_fraction + (1.0 - final_lr_fraction) * cosine)


def optimizer_values(config, num_train_steps: int) -> dict[str, float]:
  """The config's `OPTIMIZER_VALUES`, as Python floats."""
  warmup = max(int(config.warmup_steps), 0)
  return {
    "learning_rate": float(config.learning_rate),
    "warmup_steps": float(warmup),
    "decay_steps": float(max(num_train_steps, warmup + 1)),
    "final_lr_fraction": float(config.get("final_lr_fraction", 0.0)),
    "weight_decay": float(config.get("weight_decay", 0.0)),
    "grad_clip_norm": float(config.get("grad_clip_norm", 0.0)),
  }


def _optimizer(
  learning_rate,
  warmup_steps,
  decay_steps,
  final_lr_fraction,
  weight_decay,
  grad_clip_norm,
  *,
  name: str,
  schedule: str,
  clip: bool,
) -> optax.GradientTransformation:
  """The optimizer for one set of (possibly traced) values; inject_hyperparams calls it."""
  lr = functools.partial(
    learning_rate_at,
    schedule=schedule,
    learning_rate=learning_rate,
    warmup_steps=warmup_steps,
    decay_steps=decay_steps,
    final_lr_fraction=final_lr_fraction,
  )
  if name == "adam":
    tx = optax.adam(lr)
  elif name == "adamw":
    tx = optax.adamw(lr, weight_decay=weight_decay)
  else:
    tx = optax.sgd(lr)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip_norm), tx)
  return tx


def make_optimizer(config, num_train_steps: int) -> tuple[optax.GradientTransformation, Callable]:
  """(tx, lr_fn): the config's optimizer with its values in its state, and step -> rate."""
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
  if config.schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {config.schedule!r}; valid: {', '.join(SCHEDULES)}")
  values = optimizer_values(config, num_train_steps)
  static = dict(name=config.optimizer, schedule=config.schedule, clip=values["grad_clip_norm"] > 0)
  tx = optax.inject_hyperparams(
    _optimizer, static_args=tuple(static), hyperparam_dtype=jnp.float32
  )(**values, **static)
  return tx, functools.partial(learning_rate_at, schedule=config.schedule, **values)


def loss_weights(loss_config) -> dict[str, np.ndarray]:
  """The config's `LOSS_WEIGHTS` as float32 scalars (the train state's `loss_weights`)."""
  return {k: np.float32(loss_config.get(k, default)) for k, default in LOSS_WEIGHTS.items()}


def set_values(state, config, num_train_steps: int):
  """`state` with the config's hyperparameters (optimizer and loss weights) in it.

  A resumed run restores the values its checkpoint holds; this puts the config's back, so a
  rerun with a changed learning rate or loss weight uses the new one, as it would if the
  values were baked into the step. Each value keeps the placement of the one it replaces.
  """
  values = optimizer_values(config, num_train_steps)
  new = {}
  if state.loss_weights:
    new["loss_weights"] = _placed_like(state.loss_weights, loss_weights(config.loss))
  if isinstance(getattr(state.opt_state, "hyperparams", None), Mapping):
    old = state.opt_state.hyperparams
    hyper = _placed_like(old, {k: values[k] for k in old})
    new["opt_state"] = state.opt_state._replace(hyperparams=hyper)
  return state.replace(**new)


def _placed_like(old: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, jax.Array]:
  return {k: jax.device_put(jnp.asarray(values[k], old[k].dtype), old[k].sharding) for k in old}
