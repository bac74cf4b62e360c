"""The committed notebooks: stored without outputs, and they run end to end on a real tiny grid."""

import json
import pathlib

import nbformat
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))

TINY_GRID = '''
"""Two architectures, tiny widths: a real grid small enough for a test."""


def sweep(add):
  add(config="configs/unet.py", overrides={"model.filters": (4, 8)})
  add(config="configs/resnet_unet.py", overrides={"model.filters": (4, 8), "model.kernels": (3, 3)})
'''
# On top of runlocal: 32 px, batch 4, 6 steps, two evaluations; nothing written outside tmp.
TINY_OVERRIDES = {
  "data.image_size": "32",
  "data.test_size": "0.2",
  "batch_size": "4",
  "num_train_steps": "6",
  "eval_every_steps": "3",
  "log_every_steps": "3",
  "checkpoint_every_steps": "3",
  "compilation_cache_dir": "",
}


def test_notebooks_are_committed_without_outputs():
  assert NOTEBOOKS, "notebooks/*.ipynb not found"
  for path in NOTEBOOKS:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
      if cell.cell_type == "code":
        assert cell.outputs == [], f"{path.name}: a cell has outputs; strip them before committing"
        assert cell.execution_count is None, f"{path.name}: a cell has an execution count"


def train_tiny_grid(shared_data, tmp: pathlib.Path) -> pathlib.Path:
  """Trains the tiny grid for real (mask2face.main, two at a time) on 10 LFW people."""
  from mask2face.data import landmark_cache, sources
  from mask2face.experiments import commands, grid, run

  faces = tmp / "faces"
  lfw = shared_data / "lfw_gray"
  people = sorted(p for p in lfw.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= 3)
  for person in people[:10]:
    (faces / person.name).mkdir(parents=True)
    for photo in sorted(person.glob("*.jpg"))[:3]:
      (faces / person.name / photo.name).symlink_to(photo)
  # Computed once here: two runs starting together would both compute it.
  cache = tmp / "landmarks.json"
  landmark_cache.compute_cache(sources.get_source(str(faces)), cache, workers=1, progress=False)

  grid_file = tmp / "tiny.py"
  grid_file.write_text(TINY_GRID)
  root = tmp / "root"
  with pytest.MonkeyPatch.context() as patch:
    # Compilation is most of a 6-step run; XLA's cheaper CPU pipeline halves it (same numbers).
    patch.setenv(
      "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    )
    outcomes = run.run_points(
      grid.load_grid(grid_file, runlocal=True),
      root,
      commands.RunSettings(
        runlocal=True,
        data=str(faces),
        extra={**TINY_OVERRIDES, "data.landmarks_cache": str(cache)},
      ),
      parallel=2,
    )
  assert [o.status for o in outcomes] == ["done", "done"], run.format_outcomes(outcomes)
  return root


def test_results_notebook_runs_on_a_real_tiny_grid(shared_data, tmp_path, monkeypatch):
  """One test, so pytest-xdist never trains the grid twice (a fixture runs once per worker)."""
  import nbclient

  from mask2face.experiments import report

  tiny_grid_root = train_tiny_grid(shared_data, tmp_path)

  runs = report.load_runs(tiny_grid_root)
  assert sorted(runs["architecture"]) == ["resnet_unet", "unet"]
  summary = report.summary_table(runs)
  assert report.BASELINE in set(summary["configuration"])
  models = summary[summary["output"].isin(["composited", "raw"])]
  assert set(models["configuration"]) == set(runs["group"])
  assert models[["masked_psnr_mean", "psnr_mean", "ssim_mean"]].notna().all().all()
  assert (models["num_params"] > 0).all()
  assert not report.family_table(runs).empty
  config = json.loads((tiny_grid_root / runs["run"].iloc[0] / "config.json").read_text())
  assert config["data"]["image_size"] == 32 and config["num_train_steps"] == 6

  # The notebook reads the same root; it must run with no cell failing.
  monkeypatch.setenv("MASK2FACE_RESULTS_ROOT", str(tiny_grid_root))
  notebook = nbformat.read(REPO_ROOT / "notebooks" / "results.ipynb", as_version=4)
  # Raises CellExecutionError, naming the cell, if any cell fails.
  nbclient.NotebookClient(
    notebook,
    kernel_name="python3",
    timeout=300,
    resources={"metadata": {"path": str(tmp_path)}},
  ).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  text = "".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "") for o in outputs)
  assert "unet/model.filters=4-8" in text and "resnet_unet/model.filters=4-8" in text
  figures = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(figures) >= 4  # Bars, curves, image grids, families.


def _run_results_notebook(root: pathlib.Path, tmp: pathlib.Path, monkeypatch) -> list[dict]:
  """Executes results.ipynb on `root`; returns every output of its code cells."""
  import nbclient

  monkeypatch.setenv("MASK2FACE_RESULTS_ROOT", str(root))
  notebook = nbformat.read(REPO_ROOT / "notebooks" / "results.ipynb", as_version=4)
  nbclient.NotebookClient(
    notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp)}}
  ).execute()
  return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


def test_results_notebook_shows_every_row_with_intervals_and_marks(tmp_path, monkeypatch):
  """On synthetic results with every row: composited and raw outputs, baselines, identity."""
  import synthetic_results

  root, *_ = synthetic_results.write_results(tmp_path / "grid")
  monkeypatch.setenv("MASK2FACE_IDENTITY_ROOT", str(root))  # Its results carry identity rows.
  outputs = _run_results_notebook(root, tmp_path, monkeypatch)
  text = "".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "") for o in outputs)
  for label in ("composited", "raw", "OpenCV Telea", "clean photo (ceiling)", "Welch", " ± "):
    assert label in text, label
  assert "identity_other_photo_rate" in text and "**" in text
  assert "evaluations under" in text  # The identity table, from MASK2FACE_IDENTITY_ROOT.
  assert len([o for o in outputs if "image/png" in o.get("data", {})]) >= 3
