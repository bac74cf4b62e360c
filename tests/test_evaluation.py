"""Evaluation passes: named rows, the baseline cache, and exact counts on 8 devices with workers.

The 8-device half runs in a subprocess (XLA_FLAGS must be set before jax is imported): a
13-example split (prime) in fixed-shape batches of 8 from 2 grain workers, evaluated twice,
must count every example once, compile the eval step once, and agree with one device fed one
example at a time without workers.
"""

import json
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import tiny_run

from mask2face import config_files, evaluation, losses, models, parallel, train
from mask2face.data import sources
from mask2face.data.landmark_cache import compute_cache
from mask2face.experiments import report


def _batch(size=4, seed=0):
  rng = np.random.default_rng(seed)
  clean = rng.uniform(size=(size, 16, 16, 3)).astype(np.float32)
  mask = np.zeros((size, 16, 16, 1), np.float32)
  mask[:, 8:, 4:12] = 1.0
  return {
    "masked": np.where(mask > 0, 0.5, clean).astype(np.float32),
    "clean": clean,
    "mask": mask,
    "family": np.arange(size, dtype=np.int32) % 2,
    "valid": np.array([1, 1, 1, 0][:size], np.float32),
  }


@pytest.fixture(scope="module")
def eval_setup():
  mesh = parallel.make_mesh(jax.devices()[:1])
  model = models.get_model("unet", filters=(4, 8), norm="batch", axis_name="data")
  loss_config = config_files.load(f"{tiny_run.REPO_ROOT}/configs/unet.py").loss
  loss_fn = lambda pred, aux, batch: losses.compute_loss(loss_config, pred, aux, batch)  # noqa: E731
  import optax

  state = train.create_train_state(
    model, optax.sgd(0.1), jax.random.PRNGKey(0), (1, 16, 16, 3), mesh
  )
  return train.make_eval_step(model, loss_fn, mesh), state, mesh


def test_row_functions_add_rows_and_metrics(eval_setup):
  eval_step, state, mesh = eval_setup
  calls = []

  def row_fn(batch, pred):
    calls.append(pred.shape)
    # A row of its own, and a metric added to the model's row; padding is left to `valid`.
    return {
      "mean_fill": {"masked_mean": pred.mean(axis=(1, 2, 3))},
      evaluation.MODEL_ROW: {"ones": np.ones(len(pred))},
    }

  batches = [_batch(seed=0), _batch(seed=1)]
  result = evaluation.evaluate(
    eval_step, state, batches, mesh, row_fns=[row_fn], family_names=["a", "b"]
  )
  assert calls == [(4, 16, 16, 3)] * 2
  assert set(result.rows) == {"model", "mean_fill"}
  assert result.model["count"] == result.rows["mean_fill"]["count"] == 6  # 3 valid per batch.
  assert result.model["ones"] == 1.0 and "loss" in result.model
  assert result.rows["mean_fill"]["family/a/count"] == 4  # Examples 0 and 2 of each batch.
  assert eval_step._cache_size() == 1


def test_baseline_is_computed_once_then_cached(eval_setup):
  eval_step, state, mesh = eval_setup
  batches = [_batch(seed=2)]
  cache = {}
  first = evaluation.evaluate(eval_step, state, batches, mesh, baseline=cache)
  assert set(cache) >= {"psnr", "masked_psnr"} and len(cache["psnr"]) == 4
  assert first.rows["baseline"]["count"] == 3
  # The cache is what a later pass reports: doctored, it shows through.
  cache["psnr"] = np.full(4, 7.0)
  second = evaluation.evaluate(eval_step, state, batches, mesh, baseline=cache)
  assert second.rows["baseline"]["psnr"] == 7.0
  assert second.model == first.model
  with pytest.raises(ValueError, match="other batches"):
    evaluation.evaluate(eval_step, state, batches * 2, mesh, baseline=cache)


# Runs under --xla_force_host_platform_device_count=8; prints one JSON line.
_SCRIPT = textwrap.dedent(
  """
  import json, sys

  def main():
    import jax, numpy as np, optax
    from mask2face import config_files, evaluation, losses, models, parallel, train
    from mask2face.data import pipeline

    repo, faces, cache = sys.argv[1:4]
    data_config = config_files.load(f"{repo}/configs/common.py").data
    data_config.update(dict(source=faces, landmarks_cache=cache, image_size=32, test_size=2.0,
                            val_fraction=0.25))
    prepared = pipeline.prepare_data(data_config)
    keys = sorted(prepared.landmarks)
    prepared.splits["validation"] = keys[:13]  # Prime: no batch size or device count divides it.

    model = models.get_model("unet", filters=(4, 8), norm="batch", axis_name="data")
    loss_config = config_files.load(f"{repo}/configs/unet.py").loss
    loss_fn = lambda p, a, b: losses.compute_loss(loss_config, p, a, b)
    row_fn = lambda batch, pred: {"seen": {"index": np.ones(len(pred))}}
    out = {"devices": jax.device_count()}
    for name, devices, batch_size, workers in (("eight", 8, 8, 2), ("one", 1, 1, 0)):
      mesh = parallel.make_mesh(jax.devices()[:devices])
      state = train.create_train_state(
        model, optax.sgd(0.1), jax.random.PRNGKey(0), (1, 32, 32, 3), mesh)
      step = train.make_eval_step(model, loss_fn, mesh)
      data_config.worker_count = workers
      batches = pipeline.eval_batches(prepared, data_config, "validation", batch_size=batch_size)
      out[f"shapes_{name}"] = sorted({b["clean"].shape for b in batches})
      cache = {}
      for _ in range(2):
        result = evaluation.evaluate(step, state, batches, mesh, row_fns=[row_fn], baseline=cache)
      out[f"cache_size_{name}"] = step._cache_size()
      out[f"rows_{name}"] = result.rows
    print(json.dumps(out))

  if __name__ == "__main__":
    main()
  """
)


@pytest.fixture(scope="module")
def faces(tmp_path_factory, astronaut, grace_hopper):
  root = tiny_run.make_faces(tmp_path_factory.mktemp("faces"), astronaut, grace_hopper)
  cache = root.parent / "landmarks.json"
  compute_cache(sources.get_source(str(root)), cache, workers=1, progress=False)
  return root, cache


def test_eight_devices_two_workers_prime_split(faces, tmp_path):
  script = tmp_path / "evaluate_on_eight.py"  # A file: grain's workers re-import __main__.
  script.write_text(_SCRIPT)
  folder, cache = faces
  proc = subprocess.run(
    [sys.executable, str(script), str(tiny_run.REPO_ROOT), str(folder), str(cache)],
    env=tiny_run.environment(devices=8),
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["devices"] == 8
  assert out["shapes_eight"] == [[8, 32, 32, 3]]  # 2 batches of 8: 13 examples + 3 padding.
  assert out["shapes_one"] == [[1, 32, 32, 3]]
  assert out["cache_size_eight"] == 1 and out["cache_size_one"] == 1  # Two passes, one compile.
  eight, one = out["rows_eight"], out["rows_one"]
  assert set(eight) == {"model", "baseline", "seen"}
  for row in eight:
    assert eight[row]["count"] == 13
    assert eight[row].keys() == one[row].keys()
    for key, value in one[row].items():
      np.testing.assert_allclose(eight[row][key], value, rtol=1e-5, err_msg=f"{row}/{key}")


def test_evaluate_cli_scores_a_saved_run_on_another_source(tmp_path, astronaut, grace_hopper):
  """`mask2face.evaluate`: a run's weights on a source's test split, with every comparison row."""
  from run_folder import write_run_folder

  from mask2face import evaluate

  model = models.get_model("unet", filters=(4, 8), kernels=3)
  variables = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
  run = tmp_path / "run"
  run.mkdir()
  write_run_folder(run, variables, model_name="unet", model_kwargs={"filters": (4, 8)}, size=32)
  faces = tiny_run.make_faces(tmp_path / "faces", astronaut, grace_hopper)
  overrides = {
    "data.source": str(faces),
    "data.landmarks_cache": str(tmp_path / "landmarks.json"),
    "data.test_size": 2.0,
    "data.val_fraction": 0.25,
    "data.max_examples": 0,
    "data.worker_count": 0,
    "batch_size": 4,
  }
  record = evaluate.run(str(run), tmp_path / "eval", overrides, which="latest")
  rows = record["rows"]
  assert {"model", "baseline", "model_composited", "telea", "navier_stokes"} <= set(rows)
  assert rows["model"]["count"] == record["test_examples"] == 2  # data.test_size=2.0 images.
  assert json.loads((tmp_path / "eval" / "results.json").read_text())["rows"] == rows
  # A folder of evaluations reports like a grid: every row where the report's tables want it.
  runs = report.load_runs(tmp_path / "eval")
  assert runs.attrs["bad_files"] == [] and len(runs) == 1
  assert runs.loc[0, "architecture"] == "unet"
  for row, name in (("model", "model"), ("baseline", "masked_input"), ("telea", "telea")):
    assert runs.loc[0, f"{name}/masked_psnr"] == pytest.approx(rows[row]["masked_psnr"])
  with pytest.raises(Exception, match="image_size"):
    evaluate.run(str(run), tmp_path / "eval2", {**overrides, "data.image_size": 64})


def test_evaluate_cli_reads_config_overrides():
  from mask2face import cli, evaluate

  argv = ["evaluate", "--config.data.source=../faces", "--config.data.test_size=0.2"]
  assert evaluate._overrides(argv) == {"data.source": "../faces", "data.test_size": "0.2"}
  with pytest.raises(cli.UserError, match="--config.KEY=VALUE"):
    evaluate._overrides(["evaluate", "--source=x"])
