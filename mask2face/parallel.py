"""Data parallelism over every device: a one-axis `'data'` mesh and pmap-style shard_map steps.

The per-device step functions in `train.py` are written as under `pmap`: they see their own
slice of the batch, and average gradients, metrics and BatchNorm statistics with explicit
`lax.pmean(..., 'data')`. `data_parallel` wraps them in `jax.shard_map(..., check_vma=False)`,
which gives exactly those semantics (with the default `check_vma=True` gradients of replicated
parameters come out already summed over the axis, and a further pmean would be wrong).
"""

import collections
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A one-axis `'data'` mesh over `devices` (default: every device of every host)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh, *, what: str = "batch_size") -> int:
  """Returns the per-device batch size; raises ValueError when the global batch does not divide."""
  n = mesh.devices.size
  if batch_size <= 0 or batch_size % n:
    raise ValueError(
      f"{what}={batch_size} does not divide by the {n} devices of the mesh "
      f"({jax.process_count()} host(s)); pick a multiple of {n}."
    )
  return batch_size // n


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` on every device of `mesh` (sharding `P()`)."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Splits a batch along its first axis over the `'data'` axis of `mesh`.

  On one host `batch` is the global batch. On several hosts each host passes only the examples
  its own devices train on (the pipeline's `shard_index=jax.process_index()`), and the global
  array is assembled from the per-host pieces.
  """
  sharding = NamedSharding(mesh, P(AXIS))
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def data_parallel(
  fn: Callable[..., Any],
  mesh: Mesh,
  *,
  in_specs: Any,
  out_specs: Any,
  donate_argnums: int | Sequence[int] = (),
) -> Callable[..., Any]:
  """Jits the per-device function `fn` as a data-parallel step over `mesh`.

  Args:
    fn: a per-device function that uses `lax.pmean(..., 'data')` where it needs all devices.
    mesh: from `make_mesh`.
    in_specs, out_specs: shard_map specs (`P()` replicated, `P('data')` split on axis 0).
    donate_argnums: arguments whose buffers the step may reuse (the train state).
  """
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
  return jax.jit(mapped, donate_argnums=donate_argnums)


def fetch(tree: Any) -> Any:
  """Brings a (possibly multi-host) global array tree to this host as numpy."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  return multihost_utils.process_allgather(tree, tiled=True)


def local_rows(tree: Any) -> Any:
  """This host's rows of arrays split over `'data'` (`P('data')`), as numpy.

  The inverse of `shard_batch`: each host gets back the rows it passed in, in order, without
  any traffic between hosts (an evaluation's predictions stay where they were made).
  """
  if jax.process_count() == 1:
    return jax.device_get(tree)

  def rows(x):
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    return np.concatenate([np.asarray(s.data) for s in shards])

  return jax.tree.map(rows, tree)


def gather_hosts(tree: Any) -> Any:
  """Host-local numpy arrays concatenated over hosts along axis 0, host 0's rows first.

  Every host must pass the same structure and shapes; one host returns its input.
  """
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils

  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def all_hosts(flag: bool) -> bool:
  """True when `flag` is true on every host (a collective: every host must call it)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.all(gather_hosts(np.asarray([flag]))))


def sync(name: str) -> None:
  """A barrier across hosts (no-op on one host); `name` should be unique per call site."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


class DevicePrefetch(Iterator[dict[str, jax.Array]]):
  """Batches of `iterator`, sharded on `mesh` up to `size` steps ahead of the one running.

  As `flax.jax_utils.prefetch_to_device`, for `shard_batch`'s global arrays: the copy to the
  devices of the next batches overlaps the current step. `get_state()` is the wrapped (grain)
  iterator's state just after the last batch handed out, so a checkpoint records the batches
  really trained on; the prefetched ones are read again after a restore.
  """

  def __init__(self, iterator, mesh: Mesh, size: int = 2):
    self._iterator = iterator
    self._mesh = mesh
    self._size = max(int(size), 1)
    self._queue: collections.deque = collections.deque()
    self._state = iterator.get_state()

  def __next__(self) -> dict[str, jax.Array]:
    while len(self._queue) < self._size:
      batch = shard_batch(next(self._iterator), self._mesh)
      self._queue.append((batch, self._iterator.get_state()))
    batch, self._state = self._queue.popleft()
    return batch

  def get_state(self):
    return self._state
