"""Registry-driven model tests: every model in `MODELS` is checked by being registered.

Each case is a tiny model (filters 4 to 16, 32 px) so the whole file runs in well under a
minute on 2 CPU cores; the upstream parameter counts use `jax.eval_shape` (no real init).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from model_init import RNGS, numpy_init

from mask2face import losses
from mask2face.models import MODELS, get_model, layers, model_from_config

SIZE = 32
# Tiny keyword arguments per registered model; a model missing here gets DEFAULT_TINY.
DEFAULT_TINY = dict(filters=(4, 8, 16), kernels=3)
TINY = {
  "encoder_decoder": dict(filters=(4, 8, 16), kernels=3),
  "unet": dict(filters=(4, 8, 16), kernels=3),
  "resnet_unet": dict(filters=(4, 8, 16), kernels=(5, 3, 3)),
  "refine_unet": dict(filters=(4, 8), kernels=3),
  "vae_unet": dict(filters=(4, 8, 16), kernels=3, latent_channels=4, dropped_skips=1),
  "vae_bottleneck_unet": dict(filters=(4, 8, 16), kernels=3, latent_channels=4, dropped_skips=1),
}
# Registered models plus the options worth covering separately.
CASES = {name: (name, TINY.get(name, DEFAULT_TINY)) for name in MODELS}
CASES.update(
  {
    "resnet_unet-upstream": ("resnet_unet", dict(TINY["resnet_unet"], variant="upstream")),
    "resnet_unet-group": ("resnet_unet", dict(TINY["resnet_unet"], norm="group")),
    "unet-batch-transpose": ("unet", dict(TINY["unet"], norm="batch", upsample="transpose")),
    "encoder_decoder-group": ("encoder_decoder", dict(TINY["encoder_decoder"], norm="group")),
    "refine_unet-resnet-vae": (
      "refine_unet",
      dict(
        filters=(4, 8),
        kernels=3,
        coarse_model="vae_unet",
        refine_model="resnet_unet",
        coarse_kwargs=dict(latent_channels=4),
      ),
    ),
  }
)


def _batch(seed=0, batch=2, size=SIZE):
  return jnp.asarray(np.random.default_rng(seed).random((batch, size, size, 3), np.float32))


def _samples_at_eval(case):
  """Whether the case contains a conditional VAE (it samples its prior at evaluation too)."""
  name, kwargs = CASES[case]
  return "vae_unet" in (name, kwargs.get("coarse_model"), kwargs.get("refine_model"))


@functools.cache
def _built(case, dtype="float32"):
  name, kwargs = CASES[case]
  model = get_model(name, dtype=dtype, **kwargs)
  return model, numpy_init(model, _batch())


@functools.cache
def _jitted(case, train, dtype="float32"):
  """One compiled forward per case and mode, shared by the tests (compiles dominate)."""
  model, _ = _built(case, dtype)
  return jax.jit(lambda v, x, seed: _apply(model, v, x, train=train, seed=seed))


def _apply(model, variables, x, *, train, seed=3):
  rngs = {"latent": jax.random.key(seed, impl="rbg"), "dropout": jax.random.key(7, impl="rbg")}
  if train:
    # As the trainer does: the clean image as `target` (only a conditional VAE looks at it).
    (pred, aux), updates = model.apply(
      variables, x, train=True, target=1.0 - x, rngs=rngs, mutable=["batch_stats"]
    )
    return pred, aux, updates
  pred, aux = model.apply(variables, x, train=False, rngs=rngs)
  return pred, aux, {}


@pytest.mark.parametrize("case", sorted(CASES))
def test_output_shape_range_finite_and_jit(case):
  model, variables = _built(case)
  x = _batch(1)
  for train in (False, True):
    pred, aux, _ = _jitted(case, train)(variables, x, 3)
    assert pred.shape == x.shape and pred.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(pred)))
    assert float(pred.min()) >= 0.0 and float(pred.max()) <= 1.0
    assert isinstance(aux, dict)
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in jax.tree.leaves(aux))


@pytest.mark.parametrize("case", sorted(MODELS))
def test_bfloat16_compute_close_to_float32(case):
  model32, variables = _built(case)
  model16, variables16 = _built(case, "bfloat16")
  # Parameters stay float32 whatever the compute dtype.
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables16["params"]))
  x = _batch(2)
  pred32 = _jitted(case, False)(variables, x, 3)[0]
  pred16 = _jitted(case, False, "bfloat16")(variables, x, 3)[0]
  assert pred16.dtype == jnp.float32 and pred16.shape == x.shape
  assert bool(jnp.all(jnp.isfinite(pred16)))
  assert 0 < float(jnp.max(jnp.abs(pred16 - pred32))) < 0.1


@pytest.mark.parametrize("case", sorted([*MODELS, "resnet_unet-upstream"]))
def test_every_parameter_gets_a_gradient(case):
  model, variables = _built(case)
  x, target = _batch(4), _batch(5)

  # The training loss with every term, so parameters reached only through aux (a VAE's prior,
  # via the KL; a coarse stage) count as wired.
  config = ml_collections.ConfigDict(
    dict(name="mae", kl_weight=1e-2, coarse_weight=0.5, masked_weight=1.0, unmasked_weight=1.0)
  )
  batch = {"clean": target, "mask": jnp.ones((*target.shape[:3], 1))}

  def loss(params):
    pred, aux, _ = _apply(model, {**variables, "params": params}, x, train=True)
    return losses.compute_loss(config, pred, aux, batch)[0]

  grads = jax.jit(jax.grad(loss))(variables["params"])
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  dead = [jax.tree_util.keystr(p) for p, g in flat if not bool(jnp.any(g != 0))]
  assert not dead, f"{case}: parameters with zero gradient: {dead}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_batch_stats_update_in_training_and_eval_is_deterministic(case):
  model, variables = _built(case)
  x = _batch(6)
  _, _, updates = _jitted(case, True)(variables, x, 3)
  if "batch_stats" in variables:
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert len(before) == len(after) > 0
    assert all(not np.allclose(b, a) for b, a in zip(before, after))
  else:
    assert not updates.get("batch_stats")
  # Eval: running statistics; one rng seed, one output. Different seeds give the same output
  # unless the model samples its prior (a conditional VAE).
  a, _, _ = _jitted(case, False)(variables, x, 10)
  a2, _, _ = _jitted(case, False)(variables, x, 10)
  b, _, _ = _jitted(case, False)(variables, x, 20)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(a2))
  if _samples_at_eval(case):
    assert float(jnp.max(jnp.abs(a - b))) > 1e-5
  else:
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_batchnorm_takes_axis_name():
  model = get_model("unet", axis_name="data", norm="batch", **TINY["unet"])
  x = _batch(0, batch=4)
  variables = numpy_init(model, x[:2])
  # Under vmap with the axis named, statistics are averaged over it.
  f = lambda v, xs: model.apply(v, xs, train=True, mutable=["batch_stats"])[1]
  per_device = jax.jit(jax.vmap(f, in_axes=(None, 0), axis_name="data"))
  stats = per_device(variables, x.reshape(2, 2, *x.shape[1:]))
  leaf = jax.tree.leaves(stats["batch_stats"])[0]
  np.testing.assert_allclose(leaf[0], leaf[1], rtol=1e-5)


def test_unknown_model_and_bad_kwargs():
  with pytest.raises(ValueError, match="unknown model 'nope'.*resnet_unet.*unet"):
    get_model("nope")
  with pytest.raises(ValueError, match="unet.*bad keyword"):
    get_model("unet", not_an_option=1)
  with pytest.raises(ValueError, match="variant='upstream'"):
    _built_fail("resnet_unet", variant="upstream", norm="batch", **TINY["resnet_unet"])
  with pytest.raises(ValueError, match="divisible by 8"):
    jax.eval_shape(get_model("unet", **TINY["unet"]).init, RNGS, jnp.zeros((1, 36, 36, 3)))
  with pytest.raises(ValueError, match="upsample 'bicubic'"):
    _built_fail("encoder_decoder", upsample="bicubic", **TINY["encoder_decoder"])


def _built_fail(name, **kwargs):
  jax.eval_shape(get_model(name, **kwargs).init, RNGS, _batch())


def _param_count(model, size=256):
  shapes = jax.eval_shape(model.init, RNGS, jnp.zeros((1, size, size, 3)))
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize(
  "filters,kernels,expected",
  [
    ((64, 128, 128, 256, 256, 512), (7, 7, 7, 3, 3, 3), 53_586_243),
    ((64, 128, 128, 256, 256, 512), (7, 5, 5, 3, 3, 3), 42_379_587),
    ((16, 32, 64, 128, 256), (3, 3, 3, 3, 3), 5_906_611),
    ((256, 256, 128, 128, 64, 64, 32, 16), 3, 16_410_563),
  ],
)
def test_upstream_resnet_unet_parameter_counts(filters, kernels, expected):
  # Upstream's logged counts (see ../shared/UPSTREAM.md): the port must match exactly.
  model = get_model("resnet_unet", variant="upstream", filters=filters, kernels=kernels)
  assert _param_count(model) == expected


def test_model_from_config_matches_get_model():
  config = ml_collections.ConfigDict()
  config.model_name = "resnet_unet"
  config.model = ml_collections.ConfigDict(
    dict(dtype="bfloat16", variant="upstream", filters=[16, 32, 64, 128, 256], kernels=3)
  )
  model = model_from_config(config)  # As the trainer builds it: BatchNorm averaged over 'data'.
  assert model.axis_name == "data" and model.filters == (16, 32, 64, 128, 256)
  assert _param_count(model) == 5_906_611
  assert model_from_config(config, axis_name=None).axis_name is None  # Inference, export.
  config.model_name = "unet3"
  with pytest.raises(ValueError, match="valid names"):
    model_from_config(config)


def test_refine_unet_returns_coarse_output():
  model, variables = _built("refine_unet")
  x = _batch(7)
  pred, aux, _ = _jitted("refine_unet", False)(variables, x, 3)
  coarse = aux["coarse"]
  assert coarse.shape == x.shape and coarse.dtype == jnp.float32
  assert float(coarse.min()) >= 0 and float(coarse.max()) <= 1
  assert not np.allclose(coarse, pred)
  # The coarse stage alone (same parameters) reproduces aux['coarse'].
  stage = get_model("unet", norm="batch", upsample="resize_conv", **TINY["refine_unet"])
  alone, _ = stage.apply({k: v["coarse"] for k, v in variables.items()}, x, train=False)
  np.testing.assert_allclose(np.asarray(alone), np.asarray(coarse), atol=1e-6)
  assert set(variables["params"]) == {"coarse", "refine"}


def test_vae_bottleneck_unet_mean_at_eval_samples_in_training():
  model, variables = _built("vae_bottleneck_unet")
  x = _batch(8)
  eval_a, aux, _ = _jitted("vae_bottleneck_unet", False)(variables, x, 1)
  eval_b, _, _ = _jitted("vae_bottleneck_unet", False)(variables, x, 2)
  np.testing.assert_array_equal(np.asarray(eval_a), np.asarray(eval_b))
  assert aux["mean"].shape == aux["logvar"].shape == (2, SIZE // 8, SIZE // 8, 4)
  train_a, aux_a, _ = _jitted("vae_bottleneck_unet", True)(variables, x, 1)
  train_a2, _, _ = _jitted("vae_bottleneck_unet", True)(variables, x, 1)
  train_b, aux_b, _ = _jitted("vae_bottleneck_unet", True)(variables, x, 2)
  np.testing.assert_array_equal(np.asarray(train_a), np.asarray(train_a2))
  assert float(jnp.max(jnp.abs(train_a - train_b))) > 1e-4
  # The posterior itself does not depend on the sample.
  np.testing.assert_allclose(aux_a["mean"], aux_b["mean"], rtol=1e-6)
  with pytest.raises(Exception, match="latent"):
    model.apply(variables, x, train=True, mutable=["batch_stats"])


@pytest.mark.parametrize("name", ["vae_unet", "vae_bottleneck_unet"])
def test_vae_dropped_skips_change_the_decoder(name):
  kwargs = dict(filters=(4, 8), kernels=3, latent_channels=2)
  counts = [_param_count(get_model(name, dropped_skips=n, **kwargs), 32) for n in (0, 1, 2)]
  # Each dropped skip removes its channels from the decoder conv's input.
  assert counts[0] > counts[1] > counts[2]
  with pytest.raises(ValueError, match=f"{name}: dropped_skips"):
    _built_fail(name, dropped_skips=3, **kwargs)


def test_summary_counts_parameters_and_flops():
  from mask2face.models import summary

  small = get_model("unet", filters=(4, 8), kernels=3)
  wide = get_model("unet", filters=(8, 16), kernels=3)
  s_small, s_wide = summary.model_costs(small, SIZE), summary.model_costs(wide, SIZE)
  assert s_small["params"] == _param_count(small, SIZE) > 0
  # Doubling every width roughly quadruples the conv FLOPs and doubles the activations.
  assert 3 < s_wide["gflops"] / s_small["gflops"] < 5
  assert 1.5 < s_wide["activation_mib"] / s_small["activation_mib"] < 2.5
  table = summary.markdown_table([("unet", s_small)], SIZE)
  assert f"| unet | {s_small['params']:,} |" in table


def test_modules_from_config_values_are_hashable():
  # jax.jit(model.apply) hashes the module: lists and dicts from configs must be frozen.
  model = get_model(
    "refine_unet", filters=[4, 8], kernels=3, coarse_kwargs={"filters": [4, 8]}, refine_kwargs={}
  )
  assert hash(model) == hash(model.clone())
  shapes = jax.eval_shape(functools.partial(model.init, train=False), RNGS, _batch())
  pred, aux = jax.eval_shape(jax.jit(model.apply, static_argnames="train"), shapes, _batch())
  assert pred.shape == aux["coarse"].shape == _batch().shape


def test_parameter_names_are_stable():
  # Checkpoints store parameters by module name: the shared blocks (layers.Blocks) must keep
  # the names each model had when it created its submodules itself.
  model = get_model("unet", filters=(4, 8), kernels=3, norm="batch")
  shapes = jax.eval_shape(functools.partial(model.init, train=False), RNGS, _batch())
  convs = 2 + 1 + 2 + 1  # Encoder per level, bottleneck, decoder per level, head conv.
  assert set(shapes["params"]) == {
    *(f"ConvNormAct_{i}" for i in range(convs)),
    "Upsample_0",
    "Upsample_1",
    "Norm_0",
    "Norm_1",
    "SigmoidHead_0",
  }
  assert set(shapes["params"]["Upsample_0"]["Conv_0"]) == {"kernel"}  # No bias before a norm.
  assert set(shapes["batch_stats"]) == {
    *(f"ConvNormAct_{i}" for i in range(convs)),
    "Norm_0",
    "Norm_1",
  }


def test_models_share_the_convnet_fields_with_their_own_defaults():
  shared = ("filters", "kernels", "norm", "activation", "upsample", "out_channels", "dtype")
  for name, cls in MODELS.items():
    assert issubclass(cls, layers.ConvNet), name
    assert all(hasattr(cls, f) for f in shared), name
  # Upstream's U-Net had no normalization; the others default to BatchNorm; resnet_unet's
  # variant decides.
  assert MODELS["unet"].norm == "none" and MODELS["vae_unet"].norm == "batch"
  assert MODELS["encoder_decoder"].norm == "batch" and MODELS["resnet_unet"].norm is None
  assert get_model("resnet_unet", variant="upstream").options()["upsample"] == "transpose"
  with pytest.raises(ValueError, match="unknown activation 'swish2'.*relu"):
    _built_fail("vae_unet", activation="swish2", **TINY["vae_unet"])
  with pytest.raises(ValueError, match="unknown norm 'layer'"):
    _built_fail("unet", norm="layer", **TINY["unet"])


def test_out_channels_for_every_model():
  for name in MODELS:
    model = get_model(name, out_channels=1, **TINY[name])
    shapes = jax.eval_shape(functools.partial(model.init, train=False), RNGS, _batch())
    pred, aux = jax.eval_shape(functools.partial(model.apply, train=False), shapes, _batch())
    assert pred.shape == (2, SIZE, SIZE, 1), name
    if name == "refine_unet":  # The coarse stage still outputs the input's channels.
      assert aux["coarse"].shape == (2, SIZE, SIZE, 3)
