"""Tests of mask2face.export: every registered model exports and matches JAX within 1e-3."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from run_folder import write_run_folder

from mask2face import detect, export, models
from mask2face.data import crop, images

SIZE = 32
TINY = {"filters": (4, 8), "kernels": 3}
# tf.lite.Interpreter announces its move to ai_edge_litert; it still works in TF 2.21.
pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")
EXTRA = {
  "vae_unet": {"latent_channels": 4, "dropped_skips": 1},
  "vae_bottleneck_unet": {"latent_channels": 4, "dropped_skips": 1},
}


def tiny_model(name):
  model = models.get_model(name, **TINY, **EXTRA.get(name, {}))
  variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False)
  # Non-zero BatchNorm statistics, so a dropped or misread collection would show.
  variables = jax.tree.map(lambda x: x + 0.05, variables)
  return model, variables


@pytest.fixture(scope="module")
def masked_crops(shared_data):
  """float32 [3, S, S, 3] training-style crops of real masked faces."""
  model = shared_data / "models" / "face_detection_short_range.tflite"
  crops = []
  with detect.FaceFinder(model, fallbacks=()) as finder:
    for name in ("02.jpg", "08.jpg", "24.jpg"):
      image = images.load_image(shared_data / "masked_real" / name)
      face = finder.find(image)[0]
      matrix = detect.crop_transform_from_face(face, size=SIZE)
      crops.append(crop.warp(image, matrix, SIZE))
  return np.stack(crops).astype(np.float32) / 255.0


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_exports_match_jax(name, masked_crops, tmp_path):
  model, variables = tiny_model(name)
  fn = export.inference_fn(model, variables)
  want = np.asarray(jax.jit(fn)(masked_crops))
  for fmt in export.FORMATS:
    path = export.export(fn, SIZE, fmt, tmp_path / f"{name}.{fmt}")
    got = export.RUNNERS[fmt](path, masked_crops)
    assert got.shape == want.shape, fmt
    np.testing.assert_allclose(got, want, atol=1e-3, err_msg=f"{name} {fmt}")
  # No leftovers from the atomic writes.
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
    f"{name}.{fmt}" for fmt in export.FORMATS
  )


def test_tflite_uses_builtin_ops_only():
  model, variables = tiny_model("resnet_unet")
  content = export.tflite_bytes(export.inference_fn(model, variables), SIZE)
  interpreter = export.tflite_interpreter(content)
  assert list(interpreter.get_input_details()[0]["shape"]) == [1, SIZE, SIZE, 3]
  # Flex (select TF) ops would need the several-MB Flex delegate on a phone.
  assert b"Flex" not in content


def test_cli_run_exports_a_checkpoint(tmp_path):
  model, variables = tiny_model("unet")
  write_run_folder(tmp_path, variables, model_name="unet", model_kwargs=TINY, size=SIZE, step=3)
  result = export.run(tmp_path, "stablehlo", tmp_path / "out" / "model.stablehlo")
  assert pathlib.Path(result["path"]).is_file() and result["bytes"] > 0
  assert result["max_abs_error"] < 1e-5
  with pytest.raises(ValueError, match="unknown export format"):
    export.export(export.inference_fn(model, variables), SIZE, "onnx", tmp_path / "x")
