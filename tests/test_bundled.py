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

  path = bundled.pack_run(run, "tiny", which="latest", directory=tmp_path / "weights")
  with np.load(path) as npz:
    assert {v.dtype for v in npz.values()} == {np.dtype(np.float16)}
  config, loaded_model, loaded = bundled.load("tiny", directory=tmp_path / "weights")
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
