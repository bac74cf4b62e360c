"""Model-only speed per architecture: training step and inference throughput, compile time,
peak memory, on whatever device JAX finds. No input pipeline (see train_bench.py for that).

  python benchmarks/model_bench.py --size=64 --batch=8 --width_divisor=8        # a CPU
  python benchmarks/model_bench.py --size=256 --batch=64 --dtype=bfloat16       # a GPU

Each model uses its registered defaults with every width divided by --width_divisor. The
training step is L1 + Adam (lr 1e-4) with BatchNorm statistics updated; inference is the eval
forward pass. Rows `*-transpose` / `*-resize_conv` compare the two upsampling choices on the
same network (the rest use their defaults). Peak memory is the device's own counter where it has one (GPU), else XLA's plan
for the compiled training step (arguments + outputs + scratch). Prints a Markdown table.
"""

import dataclasses
import functools
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from mask2face.models import MODELS, get_model  # noqa: E402

_MODELS = flags.DEFINE_list("models", list(MODELS), "Registered model names.")
_SIZE = flags.DEFINE_integer("size", 64, "Image side (pixels).")
_BATCH = flags.DEFINE_integer("batch", 8, "Batch size.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype: float32 or bfloat16.")
_DIVISOR = flags.DEFINE_integer("width_divisor", 8, "Divide every default width by this.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed iterations (after one warm-up).")
_UPSAMPLE = flags.DEFINE_list(
  "compare_upsample", ["unet", "resnet_unet"], "Models measured with both upsample choices."
)


def _default(name: str, field: str):
  """A model's default for `field` (dataclass default), or None where it has none."""
  fields = {f.name: f for f in dataclasses.fields(MODELS[name])}
  return fields[field].default if field in fields else None


def _variants() -> list[tuple[str, str, dict]]:
  rows = []
  for name in _MODELS.value:
    filters = tuple(max(1, f // _DIVISOR.value) for f in _default(name, "filters"))
    kwargs = dict(filters=filters, dtype=_DTYPE.value)
    if name not in _UPSAMPLE.value:
      rows.append((name, name, kwargs))
      continue
    # The same network twice, differing only in how the decoder upsamples.
    for up in ("transpose", "resize_conv"):
      rows.append((f"{name}-{up}", name, dict(kwargs, upsample=up)))
  return rows


def _timed(fn, *args, steps: int) -> tuple[float, object]:
  """Mean seconds per call over `steps` calls after one warm-up; returns the last output."""
  out = jax.block_until_ready(fn(*args))
  start = time.perf_counter()
  for _ in range(steps):
    out = jax.block_until_ready(fn(*args))
  return (time.perf_counter() - start) / steps, out


def _peak_bytes(compiled) -> tuple[float, str]:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return float(stats["peak_bytes_in_use"]), "device"
  m = compiled.memory_analysis()
  if m is None:
    return float("nan"), "n/a"
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
  return float(total), "xla plan"


def bench(name: str, kwargs: dict) -> dict:
  """Measures one model; returns the table row's numbers."""
  model = get_model(name, **kwargs)
  size, batch = _SIZE.value, _BATCH.value
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((batch, size, size, 3), np.float32))
  y = jnp.asarray(rng.random((batch, size, size, 3), np.float32))
  rngs = {"params": jax.random.key(0), "latent": jax.random.key(1), "dropout": jax.random.key(2)}
  variables = jax.jit(functools.partial(model.init, train=False))(rngs, x)
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  tx = optax.adam(1e-4)
  opt_state = tx.init(params)

  def train_step(params, state, opt_state, x, y, key):
    def loss_fn(p):
      (pred, _), new_state = model.apply(
        {"params": p, **state},
        x,
        train=True,
        rngs={"latent": key, "dropout": key},
        mutable=["batch_stats"],
      )
      return jnp.mean(jnp.abs(pred - y)), new_state

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), {**state, **new_state}, opt_state, loss

  key = jax.random.key(3)
  start = time.perf_counter()
  compiled = (
    jax.jit(train_step, donate_argnums=(0, 1, 2))
    .lower(params, state, opt_state, x, y, key)
    .compile()
  )
  compile_s = time.perf_counter() - start
  flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))

  carry = [params, state, opt_state]

  def one_step():
    carry[0], carry[1], carry[2], loss = compiled(*carry, x, y, key)
    return loss

  train_s, loss = _timed(one_step, steps=_STEPS.value)
  if not np.isfinite(float(loss)):
    raise FloatingPointError(f"{name}: non-finite loss {float(loss)}")
  infer = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
  variables = {"params": carry[0], **carry[1]}
  infer_s, _ = _timed(infer, variables, x, steps=_STEPS.value)
  peak, source = _peak_bytes(compiled)
  return {
    "params": sum(p.size for p in jax.tree.leaves(carry[0])),
    "train_img_s": batch / train_s,
    "train_ms": 1e3 * train_s,
    "infer_img_s": batch / infer_s,
    "compile_s": compile_s,
    "gflop_step": flops / 1e9,
    "peak_mib": peak / 2**20,
    "peak_source": source,
  }


def main(argv):
  del argv
  device = jax.devices()[0]
  rows = []
  for label, name, kwargs in _variants():
    logging.info("benchmarking %s %s", label, kwargs)
    rows.append((label, kwargs["filters"], bench(name, kwargs)))
  print(
    f"\n{device.platform} ({device.device_kind}), {_SIZE.value}x{_SIZE.value}, batch "
    f"{_BATCH.value}, {_DTYPE.value}, widths / {_DIVISOR.value}\n"
  )
  print(
    "| model | filters | params | train img/s | ms/step | infer img/s | compile s "
    "| GFLOP/step | peak MiB |"
  )
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
  for label, filters, r in rows:
    print(
      f"| {label} | {','.join(map(str, filters))} | {r['params']:,} | {r['train_img_s']:.1f} "
      f"| {r['train_ms']:.1f} | {r['infer_img_s']:.1f} | {r['compile_s']:.2f} "
      f"| {r['gflop_step']:.2f} | {r['peak_mib']:.0f} ({r['peak_source']}) |"
    )


if __name__ == "__main__":
  app.run(main)
