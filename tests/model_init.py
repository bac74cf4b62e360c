"""Fast variables for model tests: Flax's default scales drawn in numpy.

XLA:CPU takes seconds to compile each jitted threefry draw, so a jitted `model.init` of even a
tiny U-Net costs tens of seconds, longer than the test itself. Shapes come from
`jax.eval_shape` (nothing compiled); values from numpy with the same scales Flax would use.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

# rbg keys: cheap to compile wherever a test does need a real random stream (e.g. `latent`).
RNGS = {
  name: jax.random.key(i, impl="rbg") for i, name in enumerate(("params", "latent", "dropout"))
}


def numpy_init(model, x, seed=0):
  """Variables with Flax's default scales (lecun-normal kernels, zero biases, unit norms)."""
  shapes = jax.eval_shape(functools.partial(model.init, train=False), RNGS, x)
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if "kernel" in name:
      fan_in = int(np.prod(leaf.shape[:-1]))
      return jnp.asarray(rng.normal(0, fan_in**-0.5, leaf.shape), leaf.dtype)
    ones = "scale" in name or "var" in name
    return jnp.ones(leaf.shape, leaf.dtype) if ones else jnp.zeros(leaf.shape, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)
