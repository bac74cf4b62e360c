"""Nothing a user made is lost, nothing wrong is silent: export, predict and the other CLIs.

One test per finding of the issue, each written to fail on the code before the fix: (1) export
replaced a training workdir with a SavedModel, (5) predict reported failures as success,
(8) SavedModel folders only their owner could read, (9) predict wrote an animated GIF as one
frame and a 16-bit PNG as 8-bit without a word and left dangling links out of its report; and
every CLI replaces existing outputs only with --overwrite.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from bad_inputs import make_bad_inputs
from PIL import Image
from run_folder import write_run_folder

from mask2face import cli, detect, export, models, predict
from mask2face.data import export_pairs, pairs
from mask2face.data.sources import get_source
from mask2face.experiments import report

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DETECTOR = pathlib.Path("models") / "face_detection_short_range.tflite"
SIZE = 32
TINY = {"filters": (4, 8), "kernels": 3}
pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")


def _variables(model_kwargs=TINY):
  model = models.get_model("unet", **model_kwargs)
  return model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False)


@pytest.fixture()
def run_dir(tmp_path):
  """A training workdir: config.json, checkpoints, and the files a real run leaves."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  write_run_folder(workdir, _variables(), model_name="unet", model_kwargs=TINY, size=SIZE)
  (workdir / "metrics.jsonl").write_text('{"step": 7}\n')
  (workdir / "results.json").write_text("{}\n")
  return workdir


def _tree(root: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _run(module, *args, timeout=300):
  env = dict(
    os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
  )
  return subprocess.run(
    [sys.executable, "-m", module, *args],
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=REPO_ROOT,
    env=env,
  )


# --- (1), (8) export: never over a workdir; --overwrite replaces only its own kind. -------------


def test_export_refuses_to_replace_the_workdir(run_dir):
  before = _tree(run_dir)
  for overwrite in (False, True):
    with pytest.raises(cli.UserError, match="not a savedmodel export|already exists"):
      export.run(run_dir, "savedmodel", run_dir, overwrite=overwrite)
  assert _tree(run_dir) == before


def test_export_overwrites_only_a_previous_export(run_dir, tmp_path):
  out = tmp_path / "model.stablehlo"
  export.run(run_dir, "stablehlo", out)
  first = out.stat().st_ino
  with pytest.raises(cli.UserError, match="already exists: pass --overwrite"):
    export.run(run_dir, "stablehlo", out)
  assert out.stat().st_ino == first
  export.run(run_dir, "stablehlo", out, overwrite=True)
  assert out.stat().st_ino != first and export.is_export(out, "stablehlo")  # A new file.
  notes = tmp_path / "notes.txt"
  notes.write_text("mine")
  with pytest.raises(cli.UserError, match="not a stablehlo export"):
    export.run(run_dir, "stablehlo", notes, overwrite=True)
  assert notes.read_text() == "mine"


def test_savedmodel_overwrite_keeps_neighbours_and_follows_the_umask(run_dir, tmp_path):
  out = tmp_path / "model"
  neighbour = tmp_path / "model.old"  # The old code's scratch name: it deleted this folder.
  neighbour.mkdir()
  (neighbour / "keep.txt").write_text("mine")
  old = os.umask(0o022)
  try:
    export.run(run_dir, "savedmodel", out)
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "saved_model.pb").stat().st_mode & 0o777 == 0o644
    export.run(run_dir, "savedmodel", out, overwrite=True)
  finally:
    os.umask(old)
  assert (neighbour / "keep.txt").read_text() == "mine"
  assert out.stat().st_mode & 0o777 == 0o755
  assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.old", "run"]


# --- (5) predict: refusals before any photo, non-zero exit when nothing was done. --------------


def test_predict_refuses_a_checkpoint_that_does_not_fit_its_config(shared_data, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  # Weights of filters (4, 8); config.json says (8, 16).
  write_run_folder(
    workdir, _variables(), model_name="unet", model_kwargs={"filters": (8, 16)}, size=SIZE
  )
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in ("02.jpg", "08.jpg", "21.jpg"):
    (photos / name).symlink_to(shared_data / "masked_real" / name)
  out = tmp_path / "out"
  done = _run(
    "mask2face.predict",
    f"--checkpoint={workdir}",
    f"--input={photos}",
    f"--output={out}",
    f"--detector_model={shared_data / DETECTOR}",
    "--fallbacks=",
  )
  assert done.returncode == 1, done.stdout
  assert "Traceback" not in done.stderr
  (line,) = [x for x in done.stderr.splitlines() if "error:" in x]
  assert "the checkpoint does not fit the model its config.json describes" in line
  assert not out.exists()


def test_predict_exits_non_zero_when_nothing_is_written(shared_data, run_dir, tmp_path):
  photo = tmp_path / "wall.png"
  Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(photo)
  out = tmp_path / "out"
  args = [f"--checkpoint={run_dir}", f"--detector_model={shared_data / DETECTOR}", "--fallbacks="]
  done = _run("mask2face.predict", *args, f"--input={photo}", f"--output={out}")
  assert done.returncode == 1
  assert "nothing written: no face found in any of the 1 file(s)" in done.stderr
  assert "1 files: 0 written" in done.stdout  # The summary and the report are still there.
  assert json.loads((out / "report.json").read_text())[0]["skipped"] == "no face found"


def test_predict_refuses_before_reading_any_photo(shared_data, run_dir, tmp_path):
  kwargs = dict(detector_model=str(shared_data / DETECTOR), fallbacks=())
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(cli.UserError, match="no files to unmask"):
    predict.run(run_dir, empty, tmp_path / "out", **kwargs)

  photos = tmp_path / "photos"
  photos.mkdir()
  (photos / "08.jpg").write_bytes((shared_data / "masked_real" / "08.jpg").read_bytes())
  (photos / "report.json").write_text('"the user\'s own"')
  before = _tree(photos)
  with pytest.raises(cli.UserError, match="is the folder of the input photos"):
    predict.run(run_dir, photos, photos, **kwargs)
  assert _tree(photos) == before  # report.json included.

  out = tmp_path / "out"
  reports = predict.run(run_dir, photos / "08.jpg", out, **kwargs)
  assert reports[0]["output"]
  with pytest.raises(cli.UserError, match="08.jpg already exists: pass --overwrite"):
    predict.run(run_dir, photos / "08.jpg", out, **kwargs)
  assert predict.run(run_dir, photos / "08.jpg", out, overwrite=True, **kwargs)[0]["output"]

  video = tmp_path / "clip.mp4"
  video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
  reports = predict.run(run_dir, video, tmp_path / "out_video", **kwargs)
  assert "a video" in reports[0]["skipped"]
  assert predict.failure(reports).startswith("nothing written")


# --- (9) predict says what its outputs cannot keep, and lists every file. ---------------------


@pytest.fixture(scope="module")
def unmasker(shared_data):
  model = models.get_model("unet", **TINY)
  with detect.FaceFinder(shared_data / DETECTOR, fallbacks=()) as finder:
    yield predict.Unmasker(model, _variables(), SIZE, finder=finder)


def test_predict_notes_frames_and_bit_depth_and_lists_dangling_links(
  unmasker, grace_hopper, tmp_path
):
  inputs = tmp_path / "in"
  bad = make_bad_inputs(inputs, grace_hopper)
  frames = [Image.fromarray(grace_hopper), Image.fromarray(grace_hopper[:, ::-1].copy())]
  frames[0].save(inputs / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
  (inputs / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
  reports = predict.unmask_files(unmasker, inputs, tmp_path / "out", progress=False)
  by_name = {pathlib.Path(r["input"]).name: r for r in reports}
  assert by_name["animated.gif"]["output"], by_name["animated.gif"]
  assert any("only the first frame" in n for n in by_name["animated.gif"]["notes"])
  png16 = by_name[bad["png16"].name]
  assert png16["output"] and png16["notes"] == ["more than 8 bits per channel: written as 8-bit"]
  assert by_name["gray.png"]["notes"] == []
  assert (
    by_name["gone.jpg"]["skipped"].startswith("unreadable") and not by_name["gone.jpg"]["output"]
  )
  text = predict.format_reports(reports)
  assert "only the first frame" in text and "gone.jpg" in text


# --- Every CLI: what exists is replaced only with --overwrite. ----------------------------------


def test_other_clis_replace_outputs_only_when_asked(tmp_path, grace_hopper):
  folder = tmp_path / "faces" / "person_0"
  folder.mkdir(parents=True)
  Image.fromarray(grace_hopper).save(folder / "a.jpg")
  source = get_source(str(tmp_path / "faces"))
  options = pairs.PairOptions(image_size=SIZE)
  out = tmp_path / "pairs"
  assert export_pairs.write_pairs(source, options, out, num=1).counts["ok"] == 1
  with pytest.raises(cli.UserError, match="already exists: pass --overwrite"):
    export_pairs.write_pairs(source, options, out, num=1)
  assert export_pairs.write_pairs(source, options, out, num=1, overwrite=True).counts["ok"] == 1

  root = tmp_path / "grid" / "unet" / "seed=0"
  root.mkdir(parents=True)
  metrics = {"psnr": 20.0, "ssim": 0.6, "l1": 0.05, "masked_psnr": 15.0, "count": 4.0}
  record = {"config_name": "unet", "architecture": "unet", "num_params": 10, "steps": 4}
  record.update(img_per_sec=1.0, test=metrics, baseline={k: v / 2 for k, v in metrics.items()})
  (root / "results.json").write_text(json.dumps(record))
  report.write_report(tmp_path / "grid")
  with pytest.raises(cli.UserError, match=r"runs.csv \(and 4 more\) already exists"):
    report.write_report(tmp_path / "grid")
  report.write_report(tmp_path / "grid", overwrite=True)

  preview_out = tmp_path / "grid.png"
  preview_out.write_bytes(b"my picture")
  done = _run(
    "mask2face.data.preview", f"--source={tmp_path / 'faces'}", f"--out={preview_out}", "--num=1"
  )
  assert done.returncode == 1 and "already exists: pass --overwrite" in done.stderr
  assert "Traceback" not in done.stderr and preview_out.read_bytes() == b"my picture"
