"""Exporting a trained model for phones and servers: TFLite, TF SavedModel, serialized StableHLO.

  python -m mask2face.export --checkpoint=WORKDIR --format=tflite|savedmodel|stablehlo --out=PATH

The exported function is the model's inference pass with its weights baked in as constants:
float32 images [batch, S, S, 3] in [0, 1] -> predictions of the same shape (S =
config.data.image_size). TFLite (through `jax.experimental.jax2tf` and
`tf.lite.TFLiteConverter`) takes a batch of 1, the usual on-device case; the SavedModel and the
StableHLO artifact (`jax.export`) take any batch size. Face finding and blending stay outside
the model (`mask2face.predict` shows the whole path).
"""

from __future__ import annotations

import functools
import os
import pathlib
import shutil
import tempfile

import numpy as np
from absl import app, flags, logging

from mask2face import atomic, cli

FORMATS = ("tflite", "savedmodel", "stablehlo")


def _infer(model, variables, x):
  pred, _ = model.apply(variables, x, train=False)
  return pred


def inference_fn(model, variables):
  """x [B, S, S, 3] float32 -> pred, with `variables` closed over (baked into the export)."""
  return functools.partial(_infer, model, variables)


def load_checkpoint(workdir, *, which: str = "best"):
  """(model, variables, image_size) of a training run (see `predict.load_run`)."""
  from mask2face.predict import load_run

  config, model, variables = load_run(workdir, which=which)
  return model, variables, int(config.data.image_size)


def _tf_module(fn, image_size: int, batch: int | None):
  """A tf.Module whose `serve` signature runs `fn` through jax2tf."""
  import tensorflow as tf
  from jax.experimental import jax2tf

  # Batch-polymorphic for SavedModel; TFLite wants static shapes.
  poly = None if batch else [f"(b, {image_size}, {image_size}, 3)"]
  converted = jax2tf.convert(fn, polymorphic_shapes=poly, with_gradient=False)
  module = tf.Module()
  module.serve = tf.function(
    lambda x: converted(x),
    input_signature=[tf.TensorSpec([batch, image_size, image_size, 3], tf.float32, name="x")],
    autograph=False,
  )
  return module


def export_stablehlo(fn, image_size: int, path) -> pathlib.Path:
  """Serialized `jax.export.Exported` (batch-polymorphic); load with `jax.export.deserialize`."""
  import jax

  (b,) = jax.export.symbolic_shape("b")
  spec = jax.ShapeDtypeStruct((b, image_size, image_size, 3), np.float32)
  exported = jax.export.export(jax.jit(fn))(spec)
  path = pathlib.Path(path)
  atomic.write_bytes(path, bytes(exported.serialize()))
  return path


def export_savedmodel(fn, image_size: int, path) -> pathlib.Path:
  """A TF SavedModel folder with a `serving_default` signature (any batch size)."""
  import tensorflow as tf

  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  module = _tf_module(fn, image_size, None)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp"))
  try:
    tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
    # A folder cannot be replaced atomically while it exists: move the old one aside first.
    old = None
    if path.exists():
      old = path.with_name(path.name + ".old")
      shutil.rmtree(old, ignore_errors=True)
      os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return path


def tflite_bytes(fn, image_size: int, *, select_tf_ops: bool = False) -> bytes:
  """The TFLite flatbuffer of `fn` for one image [1, S, S, 3].

  With `select_tf_ops`, TF ops without a TFLite builtin are kept (the app then needs the Flex
  delegate, several MB); the registered models convert to builtins only.
  """
  import tensorflow as tf

  module = _tf_module(fn, image_size, 1)
  concrete = module.serve.get_concrete_function()
  converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
  ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if select_tf_ops:
    ops.append(tf.lite.OpsSet.SELECT_TF_OPS)
  converter.target_spec.supported_ops = ops
  return converter.convert()


def export_tflite(fn, image_size: int, path) -> pathlib.Path:
  path = pathlib.Path(path)
  atomic.write_bytes(path, tflite_bytes(fn, image_size))
  return path


def export(fn, image_size: int, fmt: str, path) -> pathlib.Path:
  """Exports `fn` in `fmt` (one of FORMATS) to `path`."""
  exporters = {
    "tflite": export_tflite,
    "savedmodel": export_savedmodel,
    "stablehlo": export_stablehlo,
  }
  if fmt not in exporters:
    raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
  return exporters[fmt](fn, image_size, path)


# --- Running the exported artifacts (parity tests, benchmarks) --------------------------------


def run_stablehlo(path, x: np.ndarray) -> np.ndarray:
  import jax

  exported = jax.export.deserialize(bytearray(pathlib.Path(path).read_bytes()))
  return np.asarray(exported.call(x))


def run_savedmodel(path, x: np.ndarray) -> np.ndarray:
  import tensorflow as tf

  loaded = tf.saved_model.load(str(path))
  out = loaded.signatures["serving_default"](x=tf.constant(x, tf.float32))
  return np.asarray(next(iter(out.values())))


def tflite_interpreter(path_or_bytes):
  """A ready `tf.lite.Interpreter` (single image input) for a .tflite path or its bytes."""
  import tensorflow as tf

  if isinstance(path_or_bytes, bytes | bytearray):
    interpreter = tf.lite.Interpreter(model_content=bytes(path_or_bytes))
  else:
    interpreter = tf.lite.Interpreter(model_path=str(path_or_bytes))
  interpreter.allocate_tensors()
  return interpreter


def run_tflite(path_or_interpreter, x: np.ndarray) -> np.ndarray:
  """Runs a TFLite model one image at a time (it was exported for batch 1)."""
  interpreter = path_or_interpreter
  if not hasattr(interpreter, "invoke"):
    interpreter = tflite_interpreter(path_or_interpreter)
  inp = interpreter.get_input_details()[0]["index"]
  out = interpreter.get_output_details()[0]["index"]
  preds = []
  for image in np.asarray(x, np.float32):
    interpreter.set_tensor(inp, image[None])
    interpreter.invoke()
    preds.append(interpreter.get_tensor(out)[0])
  return np.stack(preds)


RUNNERS = {"tflite": run_tflite, "savedmodel": run_savedmodel, "stablehlo": run_stablehlo}


def run(checkpoint, fmt: str, out, *, which: str = "best") -> dict:
  """The CLI's job: export a run's model, check it against JAX on a random input.

  Returns:
    {'path', 'format', 'bytes', 'max_abs_error'}.
  """
  model, variables, image_size = load_checkpoint(checkpoint, which=which)
  fn = inference_fn(model, variables)
  path = export(fn, image_size, fmt, out)
  # A parity check on a random input catches a broken conversion before it ships.
  x = np.random.default_rng(0).random((1, image_size, image_size, 3), dtype=np.float32)
  err = float(np.abs(RUNNERS[fmt](path, x) - np.asarray(fn(x))).max())
  files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
  size = sum(p.stat().st_size for p in files)
  logging.info("Exported %s (%s); max |exported - jax| = %.2e", path, fmt, err)
  return {"path": str(path), "format": fmt, "bytes": size, "max_abs_error": err}


def define_flags() -> None:
  """The CLI's flags (defined only when run as a program, so importing this module is free)."""
  flags.DEFINE_string("checkpoint", None, "A training workdir (config.json inside).")
  flags.DEFINE_enum("format", "tflite", list(FORMATS), "Export format.")
  flags.DEFINE_string("out", None, "Output file (tflite, stablehlo) or folder (savedmodel).")
  flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint to export.")
  flags.mark_flags_as_required(["checkpoint", "out"])


def main(argv):
  del argv
  f = flags.FLAGS
  result = run(f.checkpoint, f.format, f.out, which=f.which)
  cli.emit(
    f"{result['format']}: {result['path']} ({result['bytes'] / 1e6:.2f} MB), "
    f"max |exported - jax| = {result['max_abs_error']:.2e}"
  )


if __name__ == "__main__":
  define_flags()
  app.run(main)
