"""Every registered architecture, tiny, overfits one fixed batch of real masked/clean pairs.

The pairs are real faces (../shared/data/faces_color) with dlib landmarks, masks painted by
`MaskPainter` and both images cropped with the same transform, as the pipeline makes them.
A model that cannot halve its L1 loss on four images in a couple of hundred Adam steps has a
wiring bug (a detached branch, a broken skip, a saturated head).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from model_init import numpy_init

from mask2face.models import MODELS, get_model

SIZE = 32
NUM_FACES = 4
STEPS = 150
# Tiny settings per model (a new model without an entry gets DEFAULT).
DEFAULT = dict(filters=(8, 16), kernels=3)
TINY = {
  "encoder_decoder": dict(filters=(8, 16), kernels=3),
  "unet": dict(filters=(8, 16), kernels=3),
  "resnet_unet": dict(filters=(8, 16), kernels=3),
  "refine_unet": dict(filters=(8, 16), kernels=3),
  "vae_unet": dict(filters=(8, 16), kernels=3, latent_channels=8, dropped_skips=1),
  "vae_bottleneck_unet": dict(filters=(8, 16), kernels=3, latent_channels=8, dropped_skips=1),
}


@pytest.fixture(scope="module")
def pairs(shared_data):
  """(masked, clean) float32 [NUM_FACES, SIZE, SIZE, 3] from the first faces dlib finds."""
  from mask2face.data.crop import crop_transform, warp
  from mask2face.data.images import load_image
  from mask2face.data.landmarks import LandmarkDetector
  from mask2face.data.masks import MaskPainter

  folder = shared_data / "faces_color"
  if not folder.is_dir():
    pytest.skip(f"{folder} not found")
  detector, painter = LandmarkDetector(), MaskPainter()
  masked, clean = [], []
  for i, path in enumerate(sorted(folder.glob("*.jpg"))[:40]):
    image = load_image(path)
    face = detector.detect_largest(image)
    if face is None or face.fallback:
      continue
    painted = painter.paint(image, face.points, np.random.default_rng(i))
    matrix = crop_transform(face.points, size=SIZE)
    masked.append(warp(painted.image, matrix, SIZE))
    clean.append(warp(image, matrix, SIZE))
    if len(masked) == NUM_FACES:
      break
  assert len(masked) == NUM_FACES, f"dlib found faces in only {len(masked)} of 40 photos"
  as_batch = lambda images: jnp.asarray(np.stack(images), jnp.float32) / 255.0
  return as_batch(masked), as_batch(clean)


def _l1(model, variables, masked, clean, train):
  rngs = {"latent": jax.random.key(1, impl="rbg"), "dropout": jax.random.key(2, impl="rbg")}
  if train:
    (pred, _), state = model.apply(
      variables, masked, train=True, rngs=rngs, mutable=["batch_stats"]
    )
    return jnp.mean(jnp.abs(pred - clean)), state
  pred, _ = model.apply(variables, masked, train=False, rngs=rngs)
  return jnp.mean(jnp.abs(pred - clean)), {}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_overfits_one_batch_of_real_pairs(name, pairs):
  masked, clean = pairs
  # The pairs differ where the mask is, so the task is not the identity.
  assert float(jnp.mean(jnp.abs(masked - clean))) > 0.01
  model = get_model(name, **TINY.get(name, DEFAULT))
  variables = numpy_init(model, masked)
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  tx = optax.adam(3e-3)

  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def step(params, state, opt_state):
    def loss_fn(p):
      return _l1(model, {"params": p, **state}, masked, clean, train=True)

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), {**state, **new_state}, opt_state, loss

  opt_state = tx.init(params)
  losses = []
  for _ in range(STEPS):
    params, state, opt_state, loss = step(params, state, opt_state)
    losses.append(loss)
  losses = np.asarray(losses)
  final, _ = _l1(model, {"params": params, **state}, masked, clean, train=True)
  assert np.all(np.isfinite(losses))
  assert float(final) <= 0.5 * losses[0], f"{name}: L1 {losses[0]:.4f} -> {float(final):.4f}"
  # Eval mode (running statistics, the VAE's mean) must have learned too.
  eval_loss, _ = _l1(model, {"params": params, **state}, masked, clean, train=False)
  assert float(eval_loss) < losses[0], f"{name}: eval L1 {float(eval_loss):.4f}"
