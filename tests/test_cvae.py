"""The conditional VAE (vae_unet), its KL(q || p) in the loss, and sampling at evaluation.

Tiny models (filters 4 to 16, 32 px) with numpy-initialised variables (tests/model_init.py).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from model_init import numpy_init

from mask2face import losses, metrics
from mask2face.models import get_model, sampling

SIZE = 32
LATENT = 4
TINY = dict(filters=(4, 8, 16), kernels=3, latent_channels=LATENT, dropped_skips=1)
STATS = ("post_mean", "post_logvar", "prior_mean", "prior_logvar")


def _images(seed, batch=2):
  return jnp.asarray(np.random.default_rng(seed).random((batch, SIZE, SIZE, 3), np.float32))


def _mask(batch=2):
  mask = np.zeros((batch, SIZE, SIZE, 1), np.float32)
  mask[:, SIZE // 2 :, 4:-4] = 1.0  # The lower half of the face.
  return jnp.asarray(mask)


def _loss_config(kl_weight=1e-2):
  return ml_collections.ConfigDict(
    dict(name="mae", kl_weight=kl_weight, coarse_weight=0.0, masked_weight=1.0, unmasked_weight=1.0)
  )


@functools.cache
def _built(name="vae_unet", **kwargs):
  model = get_model(name, **(kwargs or TINY))
  return model, numpy_init(model, _images(0))


def _rngs(seed):
  return {"latent": jax.random.key(seed, impl="rbg")}


@functools.cache
def _train_apply(name="vae_unet"):
  model, _ = _built(name)

  def apply(variables, x, target, seed):
    (pred, aux), _ = model.apply(
      variables, x, train=True, target=target, rngs=_rngs(seed), mutable=["batch_stats"]
    )
    return pred, aux

  return jax.jit(apply)


@functools.cache
def _eval_apply(with_target):
  model, _ = _built()

  def apply(variables, x, target, seed):
    kwargs = dict(target=target) if with_target else {}
    return model.apply(variables, x, train=False, rngs=_rngs(seed), **kwargs)

  return jax.jit(apply)


def test_prior_and_posterior_exist_with_their_shapes():
  _, variables = _built()
  # Init had no target, yet the posterior's variables exist.
  assert {"prior", "posterior"} <= set(variables["params"])
  assert {"prior", "posterior"} <= set(variables["batch_stats"])
  for net in ("prior", variables["params"]["posterior"]):
    head = variables["params"]["prior"] if net == "prior" else net["head"]
    assert head["mean"]["kernel"].shape[-1] == head["logvar"]["kernel"].shape[-1] == LATENT
  x, clean = _images(1), _images(2)
  pred, aux = _train_apply()(variables, x, clean, 0)
  assert pred.shape == x.shape
  assert set(aux) == set(STATS)
  for key in STATS:
    assert aux[key].shape == (2, SIZE // 8, SIZE // 8, LATENT) and aux[key].dtype == jnp.float32
  pred, aux = _eval_apply(False)(variables, x, clean, 0)
  assert set(aux) == {"prior_mean", "prior_logvar"}


def test_posterior_sees_the_target_and_the_prior_does_not():
  _, variables = _built()
  x = _images(3)
  _, aux_a = _train_apply()(variables, x, _images(4), 0)
  _, aux_b = _train_apply()(variables, x, _images(5), 0)
  assert float(jnp.max(jnp.abs(aux_a["post_mean"] - aux_b["post_mean"]))) > 1e-4
  np.testing.assert_array_equal(aux_a["prior_mean"], aux_b["prior_mean"])
  np.testing.assert_array_equal(aux_a["prior_logvar"], aux_b["prior_logvar"])
  # The masked image does change the prior.
  _, aux_c = _train_apply()(variables, _images(6), _images(4), 0)
  assert float(jnp.max(jnp.abs(aux_a["prior_mean"] - aux_c["prior_mean"]))) > 1e-4


def test_evaluation_ignores_any_target_and_samples_the_prior():
  model, variables = _built()
  x = _images(7)
  without, aux = _eval_apply(False)(variables, x, x, 1)
  with_a, _ = _eval_apply(True)(variables, x, _images(8), 1)
  with_b, _ = _eval_apply(True)(variables, x, _images(9), 1)
  np.testing.assert_array_equal(without, with_a)
  np.testing.assert_array_equal(without, with_b)
  # One key, one completion; another key, another completion.
  again, _ = _eval_apply(False)(variables, x, x, 1)
  other, _ = _eval_apply(False)(variables, x, x, 2)
  np.testing.assert_array_equal(without, again)
  assert float(jnp.max(jnp.abs(without - other))) > 1e-5
  # Without a `latent` rng (predict.py, export.py) it decodes the prior mean, deterministically.
  mean_a, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  mean_b, _ = model.apply(variables, x, train=False)
  np.testing.assert_allclose(mean_a, mean_b, atol=1e-6)
  assert float(jnp.max(jnp.abs(mean_a - without))) > 1e-5
  # Training must sample: a missing `latent` rng is an error, not a silent mean.
  with pytest.raises(Exception, match="latent"):
    model.apply(variables, x, train=True, target=x, mutable=["batch_stats"])
  with pytest.raises(ValueError, match="target shape"):
    model.apply(variables, x, train=True, target=x[..., :1], rngs=_rngs(0), mutable=True)


def test_gradients_reach_prior_and_posterior():
  model, variables = _built()
  x, clean = _images(10), _images(11)
  batch = {"clean": clean, "mask": _mask()}

  def loss(params, kl_weight):
    (pred, aux), _ = model.apply(
      {**variables, "params": params},
      x,
      train=True,
      target=clean,
      rngs=_rngs(0),
      mutable=["batch_stats"],
    )
    return losses.compute_loss(_loss_config(kl_weight), pred, aux, batch)[0]

  grad_fn = jax.jit(jax.grad(loss), static_argnums=1)
  grads = grad_fn(variables["params"], 1e-2)
  for net in ("prior", "posterior"):
    flat = jax.tree_util.tree_flatten_with_path(grads[net])[0]
    dead = [jax.tree_util.keystr(p) for p, g in flat if not bool(jnp.any(g != 0))]
    assert flat and not dead, f"{net}: zero gradient for {dead}"
  # In training the prior is reached through the KL term alone.
  no_kl = grad_fn(variables["params"], 0.0)
  assert all(not bool(jnp.any(g != 0)) for g in jax.tree.leaves(no_kl["prior"]))


def test_training_steps_lower_the_loss_on_a_fixed_batch():
  model, variables = _built()
  x, clean = _images(12, batch=4), _images(13, batch=4)
  batch = {"clean": clean, "mask": _mask(4)}
  config = _loss_config()
  tx = optax.adam(3e-3)

  @jax.jit
  def step(params, batch_stats, opt_state, seed):
    def loss_fn(p):
      (pred, aux), updates = model.apply(
        {"params": p, "batch_stats": batch_stats},
        x,
        train=True,
        target=clean,
        rngs=_rngs(seed),
        mutable=["batch_stats"],
      )
      loss, terms = losses.compute_loss(config, pred, aux, batch)
      return loss, (terms, updates["batch_stats"])

    (loss, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, terms

  params, batch_stats = variables["params"], variables["batch_stats"]
  opt_state = tx.init(params)
  history = []
  for i in range(30):
    params, batch_stats, opt_state, terms = step(params, batch_stats, opt_state, i)
    history.append({k: float(v) for k, v in terms.items()})
  assert all(np.isfinite(h["loss"]) for h in history)
  assert all(h["kl"] > 0 for h in history)  # q and p differ: the KL term is live.
  first, last = (
    np.mean([h["loss"] for h in history[:3]]),
    np.mean([h["loss"] for h in history[-3:]]),
  )
  assert last < 0.8 * first, (first, last)


def test_refine_unet_with_a_vae_second_stage_has_its_kl_in_the_loss():
  kwargs = dict(filters=(4, 8), kernels=3, refine_model="vae_unet")
  model = get_model("refine_unet", **kwargs, refine_kwargs=dict(latent_channels=LATENT))
  variables = numpy_init(model, _images(0))
  x, clean = _images(14), _images(15)
  (pred, aux), _ = jax.jit(
    lambda v: model.apply(v, x, train=True, target=clean, rngs=_rngs(0), mutable=["batch_stats"])
  )(variables)
  assert {f"refine_{k}" for k in STATS} <= set(aux)
  batch = {"clean": clean, "mask": _mask()}
  _, terms = losses.compute_loss(_loss_config(), pred, aux, batch)
  assert float(terms["kl"]) > 0 and float(terms["refine_kl"]) == float(terms["kl"])
  _, without = losses.compute_loss(_loss_config(), pred, {"coarse": aux["coarse"]}, batch)
  assert float(terms["loss"]) > float(without["loss"])


def test_samples_of_the_cvae_differ_inside_the_mask():
  model, variables = _built()
  x, clean, mask = _images(16), _images(17), _mask()
  draw = jax.jit(functools.partial(sampling.sample_predictions, model, num_samples=3))
  samples = draw(variables, x, jax.random.key(0, impl="rbg"))
  assert samples.shape == (3, *x.shape)
  np.testing.assert_array_equal(samples, draw(variables, x, jax.random.key(0, impl="rbg")))
  assert float(jnp.max(jnp.abs(samples[0] - samples[1]) * mask)) > 1e-5
  diversity = sampling.sample_diversity(samples, mask)
  assert diversity.shape == (2,) and bool(jnp.all(diversity > 0))

  higher = lambda name: "psnr" in name or "ssim" in name
  summary = sampling.summarize_samples(metrics.image_metrics, samples, clean, mask, higher)
  assert {"masked_psnr_best", "masked_psnr_mean", "l1_best", "diversity"} <= set(summary)
  assert bool(jnp.all(summary["masked_psnr_best"] >= summary["masked_psnr_mean"]))
  assert bool(jnp.all(summary["masked_l1_best"] <= summary["masked_l1_mean"]))
  np.testing.assert_allclose(summary["diversity"], diversity)


def test_samples_of_a_deterministic_model_are_identical():
  model = get_model("unet", filters=(4, 8), kernels=3)
  variables = numpy_init(model, _images(0))
  samples = sampling.sample_predictions(
    model, variables, _images(18), jax.random.key(1, impl="rbg"), 3
  )
  np.testing.assert_array_equal(sampling.sample_diversity(samples, _mask()), 0.0)
  values = jnp.asarray([[1.0, 5.0], [3.0, 2.0]])
  np.testing.assert_array_equal(sampling.best_of_n(values, higher_is_better=True), [3.0, 5.0])
  np.testing.assert_array_equal(sampling.best_of_n(values, higher_is_better=False), [1.0, 2.0])
  np.testing.assert_array_equal(sampling.sample_mean(values), [2.0, 3.5])


def test_sample_diversity_is_the_mean_pairwise_l1_inside_the_mask():
  mask = _mask(1)
  inside = np.asarray([0.5, 0.7, 0.5], np.float32)  # Pairs differ by 0.2, 0.2 and 0.
  outside = np.asarray([0.0, 0.3, 0.9], np.float32)  # Differences here must not count.
  samples = np.where(
    np.asarray(mask) > 0, inside[:, None, None, None, None], outside[:, None, None, None, None]
  )
  samples = np.broadcast_to(samples, (3, 1, SIZE, SIZE, 3))
  np.testing.assert_allclose(sampling.sample_diversity(samples, mask), [0.4 / 3], rtol=1e-4)
  np.testing.assert_allclose(sampling.sample_diversity(samples, mask[..., 0]), [0.4 / 3], rtol=1e-4)
  np.testing.assert_array_equal(sampling.sample_diversity(samples[:1], mask), [0.0])
  np.testing.assert_array_equal(sampling.sample_diversity(samples, np.zeros_like(mask)), [0.0])


@pytest.mark.parametrize("name", ["vae_unet", "unet"])
def test_the_eval_step_scores_samples_best_mean_and_diversity(name):
  """`config.num_samples` reaches evaluation: per-example best, mean and diversity of samples."""
  from mask2face import parallel, train

  model, variables = _built(name) if name == "vae_unet" else _built(name, filters=(4, 8))
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = train.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=variables["params"],
    batch_stats=variables.get("batch_stats", {}),
    opt_state=(),
    rng=jax.random.PRNGKey(0),
  )
  loss_fn = functools.partial(losses.compute_loss, _loss_config())
  batch = {
    "masked": _images(20),
    "clean": _images(21),
    "mask": _mask(),
    "family": np.zeros(2, np.int32),
    "valid": np.ones(2, np.float32),
  }
  per_example, _ = train.make_eval_step(model, loss_fn, mesh, num_samples=3)(state, batch)
  best, mean = per_example["samples_3/masked_psnr_best"], per_example["samples_3/masked_psnr_mean"]
  assert best.shape == (2,) and bool(jnp.all(best >= mean - 1e-5))
  assert bool(
    jnp.all(
      per_example["samples_3/masked_l1_best"] <= per_example["samples_3/masked_l1_mean"] + 1e-6
    )
  )
  diversity = per_example["samples_3/diversity"]
  if name == "vae_unet":
    assert bool(jnp.all(diversity > 0)) and bool(jnp.any(best > mean))
  else:  # A deterministic model's samples are one image: best == mean, no diversity.
    np.testing.assert_array_equal(diversity, 0.0)
    np.testing.assert_allclose(best, mean, rtol=1e-6)
  plain, _ = train.make_eval_step(model, loss_fn, mesh)(state, batch)
  assert not any(k.startswith("samples_") for k in plain)
