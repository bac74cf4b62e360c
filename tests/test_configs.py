"""Every config loads, `runlocal` shrinks it, and its model builds from `config.model`."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

from mask2face import train

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
ARCH_CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("common",))


def load(name, arg=None):
  """Loads configs/<name>.py by path, as config_flags does."""
  spec = importlib.util.spec_from_file_location(f"_cfg_{name}", CONFIG_DIR / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


def test_every_architecture_has_a_config():
  expected = {
    "encoder_decoder",
    "unet",
    "resnet_unet",
    "refine_unet",
    "vae_unet",
    "upstream_resnet_unet",
  }
  assert expected <= set(ARCH_CONFIGS)


@pytest.mark.parametrize("name", ARCH_CONFIGS)
def test_config_loads_and_documents_its_command(name):
  config = load(name)
  assert config.name == name
  text = (CONFIG_DIR / f"{name}.py").read_text()
  assert f"python -m mask2face.main --config=configs/{name}.py" in text
  assert config.batch_size > 0 and config.learning_rate > 0
  assert config.optimizer in ("adam", "adamw", "sgd")


@pytest.mark.parametrize("name", ARCH_CONFIGS)
def test_runlocal_shrinks(name):
  full, local = load(name), load(name, "runlocal")
  assert local.data.image_size < full.data.image_size
  assert 0 < local.num_train_steps <= 200
  assert local.batch_size <= full.batch_size
  assert sum(local.model.filters) < sum(full.model.filters)
  assert local.identity_metric is False
  assert local.warmup_steps < local.num_train_steps


@pytest.mark.parametrize("name", ARCH_CONFIGS)
def test_model_builds_from_runlocal_config(name):
  config = load(name, "runlocal")
  # No device axis outside the trainer's shard_map: BatchNorm statistics stay local here.
  model = train.build_model(config, axis_name=None)
  size = config.data.image_size
  x = jnp.zeros((2, size, size, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  assert train.count_params(variables["params"]) > 1000
  (pred, aux), _ = jax.eval_shape(
    lambda v: model.apply(
      v, x, train=True, rngs={"latent": jax.random.PRNGKey(1)}, mutable=["batch_stats"]
    ),
    variables,
  )
  assert pred.shape == x.shape
  assert isinstance(aux, dict)
  if config.model.get("norm") == "batch":
    assert "batch_stats" in variables


def test_upstream_config_reproduces_the_article():
  config = load("upstream_resnet_unet")
  assert (config.batch_size, config.learning_rate, config.schedule) == (12, 1e-4, "constant")
  assert (config.num_epochs, config.early_stopping_patience) == (20, 5)
  assert config.loss.name == "upstream_ssim_mse"
  model = train.build_model(config)
  x = jnp.zeros((1, 256, 256, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  # Upstream's logged parameter count for this width and kernel table.
  assert train.count_params(variables["params"]) == 53_586_243


def test_unknown_config_argument_is_an_error():
  with pytest.raises(ValueError, match="unknown config argument"):
    load("unet", "runlcoal")


def test_size_argument_and_command_line_overrides():
  argv = [
    "prog",
    f"--config={CONFIG_DIR / 'unet.py'}:runlocal,size=32",
    "--config.batch_size=4",
    "--config.model.norm=group",
  ]
  fv = flags.FlagValues()
  # Override flags are found in the argv given at definition (sys.argv in main.py).
  config_flags.DEFINE_config_file("config", lock_config=True, flag_values=fv, sys_argv=argv)
  fv(argv)
  assert fv.config.data.image_size == 32
  assert fv.config.batch_size == 4
  assert fv.config.model.norm == "group"
  with pytest.raises(AttributeError):
    fv.config.new_field = 1  # lock_config: a typo cannot add a field.
