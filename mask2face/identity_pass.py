"""Identity verification during an evaluation pass, in worker processes or inline.

`IdentityPass` feeds an evaluation's batches to an `identity.CrossPhotoVerifier`. dlib's
descriptors take about 70 ms a face on a CPU core, five rows a face: with `workers > 0` the
batches are scored in spawned processes while the caller goes on feeding the accelerator,
which keeps the metric off the device's critical path; with `workers == 0` in the caller.
"""

import concurrent.futures
import multiprocessing
from collections.abc import Mapping, Sequence

import numpy as np

from mask2face.identity import CrossPhotoVerifier

_WORKER_VERIFIER: CrossPhotoVerifier | None = None  # One per worker process of IdentityPass.


def _install_verifier(verifier: CrossPhotoVerifier) -> None:
  global _WORKER_VERIFIER
  _WORKER_VERIFIER = verifier


def _score_in_worker(index, images, valid):
  return _WORKER_VERIFIER.score_batch(index, images, valid)


class IdentityPass:
  """One evaluation pass of `CrossPhotoVerifier`: batches in, per-row means out.

  With `workers > 0`, batches are scored in that many worker processes (spawned, each loading
  dlib's models once) while the caller goes on feeding the accelerator; `add` returns at once
  unless `max_pending` batches are still waiting. With `workers == 0` each batch is scored in
  `add` (for the end of a test pass, or tests).

    with identity.IdentityPass(verifier, workers=4) as scoring:
      for batch, pred in test_pass:
        rows = {'clean': batch['clean'], 'masked_input': batch['masked'], 'model': pred, ...}
        scoring.add(batch['index'], rows, valid=batch['valid'], family=batch['family'])
      results = scoring.result(FAMILY_NAMES)  # {row: {metric: mean, family/...: mean}}

  `per_example()` gives the per-example arrays instead (to gather them over hosts first).
  """

  def __init__(self, verifier: CrossPhotoVerifier, *, workers: int = 0, max_pending: int = 0):
    self.verifier = verifier
    self._pool = None
    if workers > 0:
      # spawn, not fork: the parent holds JAX's threads, which a fork would copy mid-flight.
      self._pool = concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_install_verifier,
        initargs=(verifier,),
      )
    self._max_pending = max_pending or 4 * max(workers, 1)
    self._batches: list[tuple[object, np.ndarray, np.ndarray, np.ndarray]] = []

  def add(self, index, images: Mapping[str, np.ndarray], *, valid, family=None) -> None:
    """Queues (or scores) one batch: `index`, `valid`, `family` [B], `images` {row: [B, H, W, 3]}
    (float in [0, 1] or uint8)."""
    index = np.asarray(index, np.int64).reshape(-1)
    valid = np.asarray(valid, np.float32).reshape(-1)
    family = np.full(index.shape, -1) if family is None else np.asarray(family).reshape(-1)
    # uint8 is what dlib reads; a quarter of the float bytes to send to a worker.
    images = {
      row: np.round(np.clip(np.asarray(x, np.float32), 0, 1) * 255).astype(np.uint8)
      for row, x in images.items()
    }
    if self._pool is None:
      scores = self.verifier.score_batch(index, images, valid)
    else:
      pending = [
        b[0]
        for b in self._batches
        if isinstance(b[0], concurrent.futures.Future) and not b[0].done()
      ]
      if len(pending) >= self._max_pending:
        pending[0].result()  # Bounded memory: wait for the oldest batch.
      scores = self._pool.submit(_score_in_worker, index, images, valid)
    self._batches.append((scores, index, valid, family))

  def per_example(self) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Waits for every batch: ({row: {metric: [N]}}, {'index', 'valid', 'family': [N]})."""
    rows: dict[str, dict[str, list[np.ndarray]]] = {}
    for scores, *_ in self._batches:
      if isinstance(scores, concurrent.futures.Future):
        scores = scores.result()
      for row, values in scores.items():
        for metric, value in values.items():
          rows.setdefault(row, {}).setdefault(metric, []).append(value)
    examples = {
      name: np.concatenate([b[i] for b in self._batches]) if self._batches else np.zeros(0)
      for i, name in ((1, "index"), (2, "valid"), (3, "family"))
    }
    return {r: {m: np.concatenate(v) for m, v in ms.items()} for r, ms in rows.items()}, examples

  def result(self, family_names: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """{row: `MetricAccumulator.result`} over every valid example added (this host's)."""
    from mask2face import metrics  # jax and dm_pix: not needed in the workers.

    rows, examples = self.per_example()
    out = {}
    for row, values in rows.items():
      accumulator = metrics.MetricAccumulator()
      accumulator.add(values, valid=examples["valid"], family=examples["family"])
      out[row] = accumulator.result(family_names)
    return out

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)
      self._pool = None

  def __enter__(self) -> "IdentityPass":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
