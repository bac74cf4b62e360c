"""Bundled weights: a run packed into 16-bit files loads back as the same model in float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mask2face import bundled, predict
from tests.model_init import numpy_init
from tests.run_folder import write_run_folder

KWARGS = {"filters": (4, 8), "kernels": 3, "norm": "batch"}


def test_pack_then_load_gives_the_model_back_in_float32(tmp_path):
  from mask2face import models

  model = models.get_model("unet", **KWARGS)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 32, 3)), jnp.float32)
  variables = numpy_init(model, x)
  run = tmp_path / "run"
  run.mkdir()
  write_run_folder(run, variables, model_name="unet", model_kwargs=KWARGS, size=32)

  path = bundled.pack_run(run, "tiny", which="latest", directory=tmp_path / "pretrained")
  with np.load(path) as npz:
    assert {v.dtype for v in npz.values()} == {np.dtype(np.float16)}
  config, loaded_model, loaded = bundled.load("tiny", directory=tmp_path / "pretrained")
  assert config.data.image_size == 32 and config.model_name == "unet"
  leaves = [np.asarray(v) for v in jax.tree.leaves(loaded)]
  assert all(v.dtype == np.float32 for v in leaves)

  # Same function as the run's own weights, up to float16 rounding of the weights.
  _, run_model, run_variables = predict.load_run(run, which="latest")
  want, _ = run_model.apply(run_variables, x, train=False)
  got, _ = loaded_model.apply(loaded, x, train=False)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=5e-3)


def test_a_missing_bundled_model_names_the_folder_and_what_exists(tmp_path):
  with pytest.raises(ValueError, match=r"no bundled model 'nope' in .*available"):
    bundled.load("nope", directory=tmp_path)


def test_a_weight_too_large_for_float16_is_refused(tmp_path):
  variables = {"params": {"w": np.array([1e6], np.float32)}}
  with pytest.raises(ValueError, match="does not fit in float16"):
    bundled.pack({}, variables, "big", directory=tmp_path)


def test_init_checkpoint_reads_only_weights_from_a_run_or_a_bundled_model(tmp_path, monkeypatch):
  from mask2face import checkpointing, models
  from mask2face.train import TrainState

  model = models.get_model("unet", **KWARGS)
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  trained, fresh = numpy_init(model, x, seed=1), numpy_init(model, x, seed=2)
  run = tmp_path / "run"
  run.mkdir()
  write_run_folder(run, trained, model_name="unet", model_kwargs=KWARGS, size=32)
  # A new run's state: another optimizer layout (a non-empty opt_state) than the old run's.
  state = TrainState(
    step=jnp.array(0),
    params=fresh["params"],
    batch_stats=fresh["batch_stats"],
    opt_state={"mu": jnp.zeros(3)},
    rng=jax.random.key_data(jax.random.key(0)),
  )
  want = np.concatenate([np.ravel(v) for v in jax.tree.leaves(trained["params"])])

  from_run = checkpointing.Checkpointer.load_weights(run / "checkpoints" / "7", state)
  got = np.concatenate([np.ravel(v) for v in jax.tree.leaves(from_run.params)])
  np.testing.assert_array_equal(got, want)
  assert from_run.opt_state["mu"].shape == (3,) and int(from_run.step) == 0

  monkeypatch.setattr(bundled, "WEIGHTS_DIR", tmp_path / "pretrained")
  bundled.pack_run(run, "tiny", which="latest")
  from_bundle = checkpointing.Checkpointer.load_weights("bundled:tiny", state)
  got = np.concatenate([np.ravel(v) for v in jax.tree.leaves(from_bundle.params)])
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)  # float16 storage.

  other = models.get_model("unet", filters=(4, 8, 16), kernels=3, norm="batch")
  with pytest.raises(ValueError, match="do not fit this config's model"):
    checkpointing.Checkpointer.load_weights(
      run / "checkpoints" / "7", state.replace(params=numpy_init(other, x)["params"])
    )
