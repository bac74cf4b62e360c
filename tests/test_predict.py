"""Tests of mask2face.predict on real masked photos, with a tiny randomly initialised model.

A random model changes every pixel of its crop, so the blend covers the whole face ellipse:
enough to check the geometry (where pixels may change, sizes, formats), not the looks.
"""

import hashlib
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from bad_inputs import EXPECTED, make_bad_inputs
from PIL import Image
from run_folder import write_run_folder

from mask2face import cli, detect, models, predict
from mask2face.data import crop, images

SIZE = 32
TINY = {"filters": (4, 8), "kernels": 3}
MODEL = pathlib.Path("models") / "face_detection_short_range.tflite"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
  model = models.get_model("unet", **TINY)
  variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False)
  return model, variables


@pytest.fixture(scope="module")
def unmasker(shared_data, tiny):
  with detect.FaceFinder(shared_data / MODEL, fallbacks=()) as finder:
    yield predict.Unmasker(*tiny, SIZE, finder=finder)


def _crop_footprint(matrix, shape):
  """bool (H, W): photo pixels the crop square can reach (one pixel of slack)."""
  h, w = shape[:2]
  inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
  corners = crop.transform_points(
    [[-0.5, -0.5], [SIZE - 0.5, -0.5], [-0.5, SIZE - 0.5], [SIZE - 0.5, SIZE - 0.5]], inverse
  )
  (x0, y0), (x1, y1) = np.floor(corners.min(0)) - 1, np.ceil(corners.max(0)) + 1
  ys, xs = np.mgrid[:h, :w]
  return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)


def test_unmask_changes_only_the_faces(shared_data, unmasker):
  for name in ("02.jpg", "09.jpg", "21.jpg", "25.webp"):
    image = images.load_image(shared_data / "masked_real" / name)
    out, faces = unmasker.unmask(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert faces and all(f.unmasked for f in faces), name
    reach = np.zeros(image.shape[:2], bool)
    for f in faces:
      reach |= _crop_footprint(f.matrix, image.shape)
      assert f.crop.shape == f.prediction.shape == (SIZE, SIZE, 3)
      assert f.weight.shape == (SIZE, SIZE) and f.weight.max() > 0.99
      # The crop's edges stay untouched, so its borders blend in seamlessly.
      assert f.weight[0].max() == f.weight[-1].max() == f.weight[:, 0].max() == 0
    changed = np.any(out != image, axis=-1)
    np.testing.assert_array_equal(out[~reach], image[~reach])  # Bit-identical away from faces.
    # Something changed inside each face box (the eyes' row is inside the ellipse).
    for f in faces:
      x0, y0, x1, y1 = np.round(f.box).astype(int)
      assert changed[max(y0, 0) : y1, max(x0, 0) : x1].any(), name


def test_blend_weight_follows_the_change(tiny, unmasker):
  crop_img = np.full((SIZE, SIZE, 3), 128, np.uint8)
  pred = np.full((SIZE, SIZE, 3), 128 / 255, np.float32)
  assert unmasker.blend_weight(crop_img, pred).max() == 0  # Nothing changed: nothing blended.
  pred[20:26, 10:22] = 1.0  # A changed patch (the "mask") in the lower face.
  weight = unmasker.blend_weight(crop_img, pred)
  assert weight[22, 16] > 0.9 and weight[5, 16] == 0 and weight[22, 2] == 0


def test_unmask_files_folder(shared_data, unmasker, grace_hopper, tmp_path):
  inputs = tmp_path / "in"
  bad = make_bad_inputs(inputs / "bad", grace_hopper)
  for name in ("04.png", "25.webp"):
    (inputs / name).write_bytes((shared_data / "masked_real" / name).read_bytes())
  before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs.rglob("*") if p.is_file()}
  reports = predict.unmask_files(unmasker, inputs, tmp_path / "out", progress=False)
  by_name = {pathlib.Path(r["input"]).stem: r for r in reports}
  assert len(reports) == len(EXPECTED) + 2
  for case, expected in EXPECTED.items():
    report = by_name[case]
    if expected == "unreadable":
      assert report["skipped"].startswith("unreadable") and bad[case].name in report["skipped"]
      assert not report["output"]
  assert by_name["no_face"]["skipped"] == "no face found"
  for name in ("04", "25", "gray", "rgba", "png16", "exif_rotated", "huge"):
    report = by_name[name]
    assert report["faces_found"] >= 1 and report["faces_unmasked"] >= 1, report
    src, dst = pathlib.Path(report["input"]), pathlib.Path(report["output"])
    assert dst.name == src.name
    with Image.open(src) as a, Image.open(dst) as b:
      assert b.format == a.format
    assert images.load_image(dst).shape == images.load_image(src).shape
  with Image.open(by_name["rgba"]["output"]) as rgba:
    assert rgba.mode == "RGBA"  # The alpha channel survives.
  after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs.rglob("*") if p.is_file()}
  assert after == before  # Inputs untouched, nothing written beside them.
  assert "files:" in predict.format_reports(reports)


def _write_workdir(workdir, model, variables):
  write_run_folder(workdir, variables, model_name="unet", model_kwargs=TINY, size=SIZE)


def test_from_checkpoint_restores_the_weights(tiny, tmp_path):
  model, variables = tiny
  params = jax.tree.map(lambda x: x + 0.01, variables["params"])
  _write_workdir(tmp_path, model, {"params": params})
  restored = predict.Unmasker.from_checkpoint(tmp_path, finder=detect.FaceFinder(fallbacks=()))
  assert restored.image_size == SIZE
  x = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
  want, _ = model.apply({"params": params}, x.astype(np.float32) / 255, train=False)
  np.testing.assert_allclose(restored.predict_crops(x), want, atol=1e-6)


def test_cli(shared_data, tiny, tmp_path):
  _write_workdir(tmp_path, *tiny)
  photo = shared_data / "masked_real" / "08.jpg"
  command = [
    sys.executable,
    "-m",
    "mask2face.predict",
    f"--checkpoint={tmp_path}",
    f"--input={photo}",
    f"--output={tmp_path / 'out'}",
    f"--detector_model={shared_data / MODEL}",
    "--fallbacks=",
  ]
  done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "1 files: 1 written" in done.stdout
  report = json.loads((tmp_path / "out" / "report.json").read_text())
  assert report[0]["faces_unmasked"] == 1
  out = images.load_image(tmp_path / "out" / "08.jpg")
  assert out.shape == images.load_image(photo).shape


def test_from_checkpoint_without_checkpoint(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"data": {"image_size": SIZE}}))
  with pytest.raises(ValueError, match="no checkpoint"):
    predict.Unmasker.from_checkpoint(tmp_path)


def test_never_overwrites_inputs(shared_data, unmasker, tmp_path):
  photo = tmp_path / "08.jpg"
  photo.write_bytes((shared_data / "masked_real" / "08.jpg").read_bytes())
  before = photo.read_bytes()
  # Outputs keep their names: into the input's own folder, each would replace its photo.
  for source in (tmp_path, photo):
    with pytest.raises(cli.UserError, match="is the folder of the input photos"):
      predict.unmask_files(unmasker, source, tmp_path, progress=False)
  assert photo.read_bytes() == before and sorted(tmp_path.iterdir()) == [photo]


def test_a_missing_detector_model_is_one_error_before_any_photo(shared_data, tiny, tmp_path):
  """Offline without the detector file: one clear error, not one failure per photo."""
  (tmp_path / "run").mkdir()
  _write_workdir(tmp_path / "run", *tiny)
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in ("02.jpg", "08.jpg"):
    (photos / name).write_bytes((shared_data / "masked_real" / name).read_bytes())
  missing = tmp_path / "nowhere" / "face_detection_short_range.tflite"
  with pytest.raises(cli.UserError, match="face detector model not found") as raised:
    predict.run(
      tmp_path / "run", photos, tmp_path / "out", detector_model=str(missing), fallbacks=()
    )
  assert str(missing) in str(raised.value)
  out = tmp_path / "out"
  assert not out.exists() or not any(out.iterdir())  # No photo, no report.json.
