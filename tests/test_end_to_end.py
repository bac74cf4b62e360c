"""A model really trained by mask2face.train, then used the three ways a user would use it.

tests/test_predict.py and tests/test_export.py write checkpoints by hand; this test checks that
what `train.train_and_evaluate` leaves in a workdir is what `predict` and `export` load.
One test function on purpose: pytest-xdist then trains the model once.
"""

import hashlib
import json
import logging as std_logging
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from mask2face import config_files, detect, export, predict, train
from mask2face.data import crop, images, splits

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DETECTOR = pathlib.Path("models") / "face_detection_short_range.tflite"
SIZE = 32
NUM_IMAGE_GRID = 8  # More rows than the validation split has examples.
# tf.lite.Interpreter announces its move to ai_edge_litert; it still works.
pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")


def tiny_config(faces: pathlib.Path, cache: pathlib.Path):
  """configs/unet.py:runlocal at 32 px with filters (4, 8): 10 steps, one evaluation."""
  config = config_files.load(f"{REPO_ROOT}/configs/unet.py:runlocal")
  config.data.source = str(faces)
  config.data.landmarks_cache = str(cache)
  config.data.image_size = SIZE
  config.model.filters = (4, 8)
  config.batch_size = 4
  # The 3-image validation and test splits span two batches, the last one padded.
  config.eval_batch_size = 2
  config.num_train_steps = 10
  config.eval_every_steps = 10
  config.checkpoint_every_steps = 10
  config.log_every_steps = 5
  config.num_image_grid = NUM_IMAGE_GRID
  config.compilation_cache_dir = ""  # Nothing written outside tmp_path.
  return config


def link_faces(lfw: pathlib.Path, out: pathlib.Path, people: int = 10, shots: int = 3):
  """Symlinks `shots` photos of each of the first `people` LFW people with that many."""
  chosen = [p for p in sorted(lfw.iterdir()) if p.is_dir() and len(list(p.glob("*.jpg"))) >= shots]
  for person in chosen[:people]:
    (out / person.name).mkdir(parents=True)
    for photo in sorted(person.glob("*.jpg"))[:shots]:
      (out / person.name / photo.name).symlink_to(photo)
  return out


def crop_footprint(matrix, shape, size):
  """bool (H, W): the photo pixels a crop square can reach (one pixel of slack)."""
  h, w = shape[:2]
  inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
  corners = crop.transform_points(
    [[-0.5, -0.5], [size - 0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5]], inverse
  )
  (x0, y0), (x1, y1) = np.floor(corners.min(0)) - 1, np.ceil(corners.max(0)) + 1
  ys, xs = np.mgrid[:h, :w]
  return (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)


def digests(folder: pathlib.Path) -> dict[str, str]:
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_trained_checkpoint_unmasks_photos_and_exports(shared_data, tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path / "home"))  # Any stray cache lands in tmp_path.
  workdir = tmp_path / "run"
  config = tiny_config(
    link_faces(shared_data / "lfw_gray", tmp_path / "faces"), tmp_path / "lm.json"
  )

  # 1) Train for real.
  state = train.train_and_evaluate(config, str(workdir))
  assert int(state.step) == 10
  results = json.loads((workdir / "results.json").read_text())
  assert results["steps"] == 10 and np.isfinite(results["test"]["masked_psnr"])
  # Image grids hold valid examples only: as many rows as the split has, up to the grid size.
  the_splits = splits.read_splits(workdir / "splits.json")
  for name, split in (("eval_0000010.png", "validation"), ("test.png", "test")):
    with Image.open(workdir / "images" / name) as grid:
      rows = min(NUM_IMAGE_GRID, len(the_splits[split]))
      assert grid.size == (3 * SIZE, rows * SIZE), name
      # Padding examples are all zeros: no row may be entirely black.
      pixels = np.asarray(grid).reshape(rows, SIZE, 3 * SIZE, 3)
      assert pixels.reshape(rows, -1).max(axis=1).min() > 0, name
  n_val = len(the_splits["validation"])
  assert n_val > config.eval_batch_size and n_val % config.eval_batch_size, "want padding"

  # 2) The checkpoint loads into the Unmasker with the trained weights (the one evaluation
  # made step 10 the best checkpoint, which is the final state).
  masked_dir = shared_data / "masked_real"
  with detect.FaceFinder(shared_data / DETECTOR, fallbacks=()) as finder:
    unmasker = predict.Unmasker.from_checkpoint(workdir, finder=finder)
    assert unmasker.image_size == SIZE
    trained = {"params": state.params, "batch_stats": state.batch_stats}
    for a, b in zip(
      jax.tree.leaves(jax.device_get(trained)), jax.tree.leaves(unmasker.variables), strict=True
    ):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    photos = sorted(masked_dir.iterdir())
    found = unmasked = 0
    crops = []
    for path in photos:
      image = images.load_image(path)
      out, faces = unmasker.unmask(image)
      assert out.shape == image.shape and out.dtype == np.uint8, path.name
      found += bool(faces)
      unmasked += sum(f.unmasked for f in faces)
      reach = np.zeros(image.shape[:2], bool)
      for face in faces:
        if face.matrix is not None:
          reach |= crop_footprint(face.matrix, image.shape, SIZE)
          crops.append(face.crop)
      # Bit-identical outside every face crop.
      np.testing.assert_array_equal(out[~reach], image[~reach], err_msg=path.name)
  # The floor of tests/test_detect.py (MediaPipe found 27 of 27).
  assert found >= 25, f"faces found in only {found} of {len(photos)} masked photos"
  assert unmasked >= 1

  # 3) The predict CLI on the whole folder.
  before = digests(masked_dir)
  out_dir = tmp_path / "unmasked"
  command = [
    sys.executable,
    "-m",
    "mask2face.predict",
    f"--checkpoint={workdir}",
    f"--input={masked_dir}",
    f"--output={out_dir}",
    f"--detector_model={shared_data / DETECTOR}",
    "--fallbacks=",
  ]
  done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads((out_dir / "report.json").read_text())
  assert len(report) == len(photos)
  assert sum(r["faces_found"] > 0 for r in report) == found
  assert digests(masked_dir) == before  # Inputs untouched.

  # 4) Export to StableHLO and TFLite; parity with the JAX model on a real masked crop.
  model, variables, image_size = export.load_checkpoint(workdir)
  assert image_size == SIZE
  x = np.stack(crops[:1]).astype(np.float32) / 255.0
  want = np.asarray(jax.jit(export.inference_fn(model, variables))(x))
  np.testing.assert_allclose(want, unmasker.predict_crops(crops[0][None]), atol=1e-6)
  for fmt in ("stablehlo", "tflite"):
    result = export.run(workdir, fmt, tmp_path / f"model.{fmt}")
    assert result["max_abs_error"] < 1e-3 and result["bytes"] > 0, result
    got = export.RUNNERS[fmt](result["path"], x)
    np.testing.assert_allclose(got, want, atol=1e-3, err_msg=fmt)

  # 5) notebooks/real_photos.ipynb runs on this checkpoint with no cell failing.
  import nbclient
  import nbformat

  monkeypatch.setenv("MASK2FACE_WORKDIR", str(workdir))
  monkeypatch.setenv("MASK2FACE_SHARED_DATA", str(shared_data))
  monkeypatch.setenv("MASK2FACE_OUTPUT", str(tmp_path / "notebook_out"))
  notebook = nbformat.read(REPO_ROOT / "notebooks" / "real_photos.ipynb", as_version=4)
  nbclient.NotebookClient(
    notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
  ).execute()  # Raises CellExecutionError, naming the cell, if any cell fails.
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  figures = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(figures) == min(8, len(photos))  # One figure per photo it shows.
  assert len(list((tmp_path / "notebook_out").iterdir())) >= found  # Every unmasked photo.


def test_main_drops_orbax_info_but_keeps_warnings_and_ours():
  from mask2face import main

  drop = main.DropOrbaxInfo()
  orbax_file = "/site-packages/orbax/checkpoint/_src/metadata/checkpoint.py"
  ours_file = str(REPO_ROOT / "mask2face" / "train.py")

  def record(pathname, level, name="absl"):
    return std_logging.LogRecord(name, level, pathname, 1, "Closing %s", ("store",), None)

  assert not drop.filter(record(orbax_file, std_logging.INFO))
  assert not drop.filter(record("/x.py", std_logging.INFO, name="orbax.checkpoint"))
  assert drop.filter(record(orbax_file, std_logging.WARNING))
  assert drop.filter(record(ours_file, std_logging.INFO))

  # Installed, it sits on absl's logger, through which orbax and mask2face both log.
  absl_logger = main.logging.get_absl_logger()
  saved = list(absl_logger.filters), list(main.logging.get_absl_handler().filters)
  try:
    main.quiet_orbax()
    main.quiet_orbax()  # Idempotent.
    assert sum(isinstance(f, main.DropOrbaxInfo) for f in absl_logger.filters) == 1
    assert not absl_logger.filter(record(orbax_file, std_logging.INFO))
    assert absl_logger.filter(record(ours_file, std_logging.INFO))
  finally:
    absl_logger.filters[:] = saved[0]
    main.logging.get_absl_handler().filters[:] = saved[1]
