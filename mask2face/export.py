"""Exporting a trained model for phones and servers: TFLite, TF SavedModel, serialized StableHLO.

  python -m mask2face.export --checkpoint=WORKDIR --format=tflite|savedmodel|stablehlo --out=PATH
  (without --checkpoint: the bundled model, mask2face/pretrained/)

The exported function is the model's inference pass with its weights baked in as constants:
float32 images [batch, S, S, 3] in [0, 1] -> predictions of the same shape (S =
config.data.image_size). TFLite (through `jax.experimental.jax2tf` and
`tf.lite.TFLiteConverter`) takes a batch of 1, the usual on-device case; the SavedModel and the
StableHLO artifact (`jax.export`) take any batch size. Face finding and blending stay outside
the model (`mask2face.predict` shows the whole path).

An existing --out is never replaced unless --overwrite is given, and then only when it is a
previous export of the same format: a folder holding anything else (a training workdir) is
refused whatever the flags.
"""

from __future__ import annotations

import functools
import os
import pathlib
import shutil
import tempfile

import numpy as np
from absl import app, flags, logging

from mask2face import atomic, bundled, cli

FORMATS = ("tflite", "savedmodel", "stablehlo")
# Everything `tf.saved_model.save` puts in a SavedModel folder (older TF versions included).
SAVEDMODEL_ENTRIES = frozenset(
  {"saved_model.pb", "saved_model.pbtxt", "variables", "assets", "fingerprint.pb"}
  | {"keras_metadata.pb"}
)


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


def is_export(path, fmt: str) -> bool:
  """Whether `path` holds an export in `fmt` (what --overwrite may replace)."""
  path = pathlib.Path(path)
  if path.is_symlink():
    return False
  if fmt == "savedmodel":
    return (
      path.is_dir()
      and (path / "saved_model.pb").is_file()
      and set(os.listdir(path)) <= SAVEDMODEL_ENTRIES
    )
  if not path.is_file():
    return False
  if fmt == "tflite":
    with open(path, "rb") as f:
      return f.read(8)[4:8] == b"TFL3"  # The flatbuffer's file identifier.
  if fmt == "stablehlo":
    import jax

    try:
      jax.export.deserialize(bytearray(path.read_bytes()))
    except Exception:  # Whatever the bytes are, they are not an export.
      return False
    return True
  return False


def check_out(path, fmt: str, *, overwrite: bool = False) -> None:
  """Refuses (`cli.UserError`) an `out` that exists, unless it is an export to overwrite."""
  path = pathlib.Path(path)
  if not os.path.lexists(path):
    return
  if not overwrite:
    raise cli.UserError(f"{path} already exists: pass --overwrite to replace a previous export")
  if not is_export(path, fmt):
    kind = "folder" if path.is_dir() else "file"
    raise cli.UserError(
      f"{path} is a {kind} that is not a {fmt} export: it is not replaced, even with "
      "--overwrite; choose another --out"
    )


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
  # Every temporary name is made here (mkdtemp), so the clean-up removes nothing of anyone's.
  tmp = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
  aside = None
  try:
    tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve})
    os.chmod(tmp, atomic.dir_mode())  # mkdtemp made it 0700.
    # A folder cannot be replaced atomically while it exists: move the old export aside first
    # (`check_out` made sure it is one).
    if path.exists():
      aside = pathlib.Path(
        tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old")
      )
      os.replace(path, aside)
    os.replace(tmp, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    if aside is not None:
      shutil.rmtree(aside, ignore_errors=True)
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


def export(fn, image_size: int, fmt: str, path, *, overwrite: bool = False) -> pathlib.Path:
  """Exports `fn` in `fmt` (one of FORMATS) to `path` (see `check_out` for an existing one)."""
  exporters = {
    "tflite": export_tflite,
    "savedmodel": export_savedmodel,
    "stablehlo": export_stablehlo,
  }
  if fmt not in exporters:
    raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
  check_out(path, fmt, overwrite=overwrite)
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


def run(checkpoint, fmt: str, out, *, which: str = "best", overwrite: bool = False) -> dict:
  """The CLI's job: export a run's model, check it against JAX on a random input.

  Returns:
    {'path', 'format', 'bytes', 'max_abs_error'}.

  Raises:
    cli.UserError: `out` is in the way (see `check_out`), or the run cannot be loaded.
  """
  if fmt not in FORMATS:
    raise cli.UserError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
  check_out(out, fmt, overwrite=overwrite)  # Before minutes of loading and converting.
  model, variables, image_size = load_checkpoint(checkpoint, which=which)
  fn = inference_fn(model, variables)
  path = export(fn, image_size, fmt, out, overwrite=overwrite)
  # A parity check on a random input catches a broken conversion before it ships.
  x = np.random.default_rng(0).random((1, image_size, image_size, 3), dtype=np.float32)
  err = float(np.abs(RUNNERS[fmt](path, x) - np.asarray(fn(x))).max())
  files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
  size = sum(p.stat().st_size for p in files)
  logging.info("Exported %s (%s); max |exported - jax| = %.2e", path, fmt, err)
  return {"path": str(path), "format": fmt, "bytes": size, "max_abs_error": err}


def define_flags() -> None:
  """The CLI's flags (defined only when run as a program, so importing this module is free)."""
  flags.DEFINE_string(
    "checkpoint",
    bundled.PREFIX + bundled.DEFAULT,
    "A training workdir (config.json inside), or bundled:NAME for a model in the package.",
  )
  flags.DEFINE_enum("format", "tflite", list(FORMATS), "Export format.")
  flags.DEFINE_string("out", None, "Output file (tflite, stablehlo) or folder (savedmodel).")
  flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint to export.")
  flags.DEFINE_bool("overwrite", False, "Replace --out when it is a previous export (only then).")
  flags.mark_flags_as_required(["out"])


@cli.one_line_errors
def main(argv):
  del argv
  f = flags.FLAGS
  result = run(f.checkpoint, f.format, f.out, which=f.which, overwrite=f.overwrite)
  cli.emit(
    f"{result['format']}: {result['path']} ({result['bytes'] / 1e6:.2f} MB), "
    f"max |exported - jax| = {result['max_abs_error']:.2e}"
  )


if __name__ == "__main__":
  define_flags()
  app.run(main)
