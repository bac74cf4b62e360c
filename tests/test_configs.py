"""Every config loads, `runlocal` shrinks it, and its model builds from `config.model`."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from ml_collections import config_flags

from mask2face import config_files, models, train
from mask2face.data import pairs
from mask2face.models import MODELS

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"
ALL_CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py"))
ARCH_CONFIGS = [name for name in ALL_CONFIGS if name != "common"]


def load(name, arg=None):
  """`configs/<name>.py[:arg]`, as main.py's --config gives it."""
  return config_files.load(f"{CONFIG_DIR / name}.py" + (f":{arg}" if arg is not None else ""))


def test_every_architecture_has_a_config():
  # One config per registered model, under the model's name, plus the upstream reproduction.
  assert {*MODELS, "upstream_resnet_unet"} <= set(ARCH_CONFIGS)
  for name in MODELS:
    assert load(name).model_name == name


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
  model = models.model_from_config(config, axis_name=None)
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
  model = models.model_from_config(config)
  x = jnp.zeros((1, 256, 256, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  # Upstream's logged parameter count for this width and kernel table.
  assert train.count_params(variables["params"]) == 53_586_243


def test_unknown_config_argument_is_an_error():
  with pytest.raises(ValueError, match="unknown config argument"):
    load("unet", "runlcoal")


def test_recipe_argument_replaces_the_configs_own_recipe():
  own = load("upstream_resnet_unet")
  shared = load("upstream_resnet_unet", "recipe=shared")
  assert (own.learning_rate, own.schedule, own.loss.name) == (1e-4, "constant", "upstream_ssim_mse")
  assert (shared.learning_rate, shared.schedule, shared.loss.name) == (
    5e-4,
    "warmup_cosine",
    "ssim_l1",
  )
  assert shared.warmup_steps == 500 and shared.best_metric == "eval_masked_psnr"
  assert shared.model.to_dict() == own.model.to_dict()  # The architecture stays.
  # The architecture's own loss terms stay too; runlocal still shortens the warm-up.
  vae = load("vae_unet", "recipe=shared,runlocal")
  assert vae.loss.kl_weight == load("vae_unet").loss.kl_weight > 0 and vae.warmup_steps == 10
  with pytest.raises(ValueError, match="unknown recipe"):
    load("unet", "recipe=fancy")


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


def test_overrides_parse_as_the_trainers_config_flags_do():
  # evaluate's --config.* and the grid runner's --override must give the values main.py's
  # --config.* flags give for the same text.
  argv = [
    "--config.batch_size=4",
    "--config.model.filters=(4, 8)",
    "--config.data.source=../faces",
    "--config.data.identity_pattern=",
    "--config.learning_rate=2e-3",
    "--config.identity_metric=False",
  ]
  spec = f"{CONFIG_DIR / 'unet.py'}:runlocal"
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config", lock_config=True, flag_values=fv, sys_argv=["prog", f"--config={spec}", *argv]
  )
  fv(["prog", f"--config={spec}", *argv])
  texts = config_files.parse_overrides(argv)
  assert texts["data.identity_pattern"] == "" and texts["model.filters"] == "(4, 8)"
  ours = config_files.apply_overrides(config_files.load(spec), texts)
  assert ours.to_dict() == fv.config.to_dict()
  assert ours.model.filters == (4, 8) and ours.learning_rate == 2e-3
  with pytest.raises(KeyError, match="batch_sise"):
    config_files.apply_overrides(ours, {"batch_sise": "4"})
  with pytest.raises(ValueError, match="key=value"):
    config_files.parse_overrides(["num_train_steps"])


@pytest.mark.parametrize("name", ["unet", "encoder_decoder", "refine_unet", "vae_unet"])
def test_locked_config_takes_an_upsample_override(name):
  # Every config of a model with the option has the field, so a locked config accepts it.
  argv = ["prog", f"--config={CONFIG_DIR / name}.py:runlocal", "--config.model.upsample=transpose"]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", lock_config=True, flag_values=fv, sys_argv=argv)
  fv(argv)
  assert load(name).model.upsample == MODELS[name].upsample  # The model's own default.
  config = fv.config
  assert config.model.upsample == "transpose"
  model = models.model_from_config(config, axis_name=None)
  x = jnp.zeros((1, config.data.image_size, config.data.image_size, 3))
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))["params"]
  names = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert any("ConvTranspose" in n for n in names)


def test_small_unet_family_shares_the_unet_recipe():
  # The architectures grid compares models on one recipe: the variants change only the model.
  base = load("unet")
  for name in ("encoder_decoder", "refine_unet", "vae_unet"):
    config = load(name)
    for key in ("batch_size", "learning_rate", "schedule", "warmup_steps", "grad_clip_norm"):
      assert config[key] == base[key], (name, key)
    for key in ("filters", "kernels", "norm", "upsample"):
      assert config.model[key] == base.model[key], (name, key)


@pytest.mark.parametrize("arg", [None, "runlocal", "", "runlocal,size=32"])
@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_loader_gives_what_the_config_flag_gives(name, arg):
  spec = f"{CONFIG_DIR / name}.py" + (f":{arg}" if arg is not None else "")
  fv = flags.FlagValues()
  argv = ["prog", f"--config={spec}"]
  config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
  fv(argv)
  loaded = config_files.load(spec)
  assert loaded.to_dict() == fv.config.to_dict()
  assert loaded.is_locked and fv.config.is_locked
  assert not config_files.load(spec, lock_config=False).is_locked


def test_sibling_loads_a_fresh_copy_beside_the_config(tmp_path, monkeypatch):
  (tmp_path / "base.py").write_text("VALUES = []\n\ndef get_config(arg=None):\n  return VALUES\n")
  (tmp_path / "child.py").write_text(
    "from mask2face import config_files\n\n"
    "base = config_files.sibling(__file__, 'base')\n\n"
    "def get_config(arg=None):\n  base.VALUES.append(arg)\n  return base.get_config()\n"
  )
  monkeypatch.chdir(tmp_path.parent)  # A relative path, from another folder.
  spec = f"{tmp_path.name}/child.py"
  assert config_files.load(f"{spec}:x") == ["x"]
  assert config_files.load(spec) == [None]  # Executed again: nothing shared between loads.
  with pytest.raises(FileNotFoundError):
    config_files.load(f"{tmp_path.name}/missing.py")


def test_pair_defaults_are_the_common_config_data():
  # The pair CLIs take their defaults from PairOptions (library code never imports configs/).
  assert pairs.PairOptions() == pairs.PairOptions.from_config(load("common").data)


LOAD_FROM_ANYWHERE = """
import importlib.util, json, sys
from absl import flags
from mask2face import config_files

assert importlib.util.find_spec("configs") is None, "configs/ must not be importable here"
sizes = {spec: config_files.load(spec).data.image_size for spec in sys.argv[1].split(";")}
from mask2face import main  # Defines main.py's --config and --workdir, reading sys.argv.

flags.FLAGS(sys.argv[:1] + sys.argv[2:])
config = flags.FLAGS.config
main_config = [config.name, config.data.image_size, config.batch_size]
print(json.dumps({"sizes": sizes, "main": main_config}))
"""


def test_configs_load_by_path_from_any_folder(tmp_path, package_only_env):
  # From a folder where the top-level `configs` package cannot be imported, as for a user
  # of an installed mask2face: each config, and those built on other configs, load by path.
  specs = [f"{CONFIG_DIR / name}.py" for name in ALL_CONFIGS]
  specs += [f"{CONFIG_DIR / name}.py:runlocal" for name in ARCH_CONFIGS]
  unet = f"{CONFIG_DIR / 'unet.py'}:runlocal"
  args = [";".join(specs), f"--config={unet}", f"--workdir={tmp_path}", "--config.batch_size=3"]
  out = subprocess.run(
    [sys.executable, "-c", LOAD_FROM_ANYWHERE, *args],
    cwd=tmp_path,
    env=package_only_env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["sizes"] == {spec: config_files.load(spec).data.image_size for spec in specs}
  # runlocal shrinks the images (the bundled model's recipe trains at 128 px).
  assert set(result["sizes"].values()) == {64, 128, 256}
  assert result["main"] == ["unet", 64, 3]

  # The real command line: --helpfull exits (absl: status 1) after the config has parsed.
  help_run = subprocess.run(
    [
      sys.executable,
      "-m",
      "mask2face.main",
      f"--config={unet}",
      f"--workdir={tmp_path}",
      "--helpfull",
    ],
    cwd=tmp_path,
    env=package_only_env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert "Traceback" not in help_run.stderr, help_run.stderr[-3000:]
  assert "--workdir" in help_run.stdout + help_run.stderr
