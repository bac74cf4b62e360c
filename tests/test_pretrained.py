"""The model that ships with the package: small, 16-bit, and it unmasks a real photo untrained.

See docs/model_card.md. These tests load `mask2face/pretrained/unet_128` as a user would
(`Unmasker.pretrained()`, `python -m mask2face.predict` without --checkpoint, export's
default) and run it on real masked photos from ../shared/data/masked_real.
"""

import json
import pathlib
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from mask2face import bundled, detect, export, predict
from mask2face.data import images

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DETECTOR = pathlib.Path("models") / "face_detection_short_range.tflite"


def test_the_bundled_model_is_small_16_bit_and_loads_as_float32():
  assert bundled.DEFAULT in bundled.available()
  npz = bundled.WEIGHTS_DIR / f"{bundled.DEFAULT}.npz"
  assert npz.stat().st_size <= bundled.MAX_BYTES
  with np.load(npz) as stored:
    assert {v.dtype for v in stored.values()} == {np.dtype(np.float16)}
  config, model, variables = bundled.load()
  assert config.data.image_size == 128 and config.model_name == "unet"
  assert all(np.asarray(v).dtype == np.float32 for v in jax.tree.leaves(variables))
  model_card = (REPO_ROOT / "docs" / "model_card.md").read_text()
  assert bundled.DEFAULT in model_card and "non-commercial" in model_card


def test_a_wheel_carries_the_weights(tmp_path):
  """`pip install .` includes them: they are package data of the built wheel."""
  done = subprocess.run(
    [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp_path]
    + [str(REPO_ROOT)],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  (wheel,) = tmp_path.glob("mask2face-*.whl")
  names = set(zipfile.ZipFile(wheel).namelist())
  for suffix in (".npz", ".json"):
    assert f"mask2face/pretrained/{bundled.DEFAULT}{suffix}" in names


def test_pretrained_unmasks_a_real_photo(shared_data):
  photo = images.load_image(shared_data / "masked_real" / "08.jpg")
  with detect.FaceFinder(shared_data / DETECTOR, fallbacks=()) as finder:
    unmasker = predict.Unmasker.pretrained(finder=finder)
    out, faces = unmasker.unmask(photo)
  assert unmasker.image_size == 128
  assert len(faces) == 1 and faces[0].unmasked, faces
  x0, y0, x1, y1 = (int(v) for v in faces[0].box)
  changed = np.abs(out.astype(np.int16) - photo).max(axis=-1) > 8
  # The lower face changed; the photo's top rows (far above the face) did not.
  assert changed[(y0 + y1) // 2 : y1, x0:x1].mean() > 0.2
  assert not changed[: max(1, y0 // 2)].any()


def test_predict_without_a_checkpoint_uses_the_bundled_model(shared_data, tmp_path):
  command = [
    sys.executable,
    "-m",
    "mask2face.predict",
    f"--input={shared_data / 'masked_real' / '02.jpg'}",
    f"--output={tmp_path / 'out'}",
    f"--detector_model={shared_data / DETECTOR}",
    "--fallbacks=",
  ]
  done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "1 files: 1 written" in done.stdout
  assert json.loads((tmp_path / "out" / "report.json").read_text())[0]["faces_unmasked"] >= 1


def test_export_starts_from_the_bundled_model():
  model, variables, image_size = export.load_checkpoint(bundled.PREFIX + bundled.DEFAULT)
  assert image_size == 128
  x = np.zeros((1, image_size, image_size, 3), np.float32)
  pred = np.asarray(export.inference_fn(model, variables)(x))
  assert pred.shape == x.shape and np.isfinite(pred).all()


def test_an_unknown_bundled_name_is_a_clear_error():
  with pytest.raises(Exception, match="no bundled model 'nope'"):
    predict.load_run("bundled:nope")
