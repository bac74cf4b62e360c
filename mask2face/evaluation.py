"""Evaluation passes: named rows of metrics over a split, exact on any number of hosts.

A row is one way of filling the masked region, scored on the same examples:
- `model`: the model's prediction (per-example metrics and loss from the jitted eval step);
- `baseline`: the masked input itself, the row every model must beat; it depends only on the
  data, so a pass can take it from a cache filled by an earlier pass over the same split;
- rows added by the caller through row functions `(batch, pred) -> {row: {metric: [B]}}`,
  called on the host with this host's batch and predictions as numpy (padding included: mark
  it NaN or let `valid` drop it). A row function that names an existing row adds metrics to
  it (the identity metric adds to `model`). Row functions run on a background thread, so slow
  host-side scoring (dlib) overlaps the device's next batches.

Every host keeps its own examples' per-example values; they are gathered once at the end of
a pass (`parallel.gather_hosts`) and averaged with `metrics.MetricAccumulator`, so every
example with `valid > 0` counts exactly once whatever the hosts, devices or batch size.
Batches must have one fixed shape (the pipeline pads the split), so the eval step compiles
once: a pass that compiled it again logs a warning.
"""

import concurrent.futures
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from mask2face import parallel

MODEL_ROW = "model"
BASELINE_ROW = "baseline"
# (this host's batch, this host's predictions) -> {row name: {metric name: [B] values}}.
RowFn = Callable[[Mapping[str, np.ndarray], np.ndarray], Mapping[str, Mapping[str, Any]]]


@dataclasses.dataclass
class EvalResult:
  """Means per row (`MetricAccumulator.result`: overall, per family, counts) and a grid."""

  rows: dict[str, dict[str, float]]
  grid: np.ndarray | None = None  # uint8; this host's first valid examples (None: none asked).

  @property
  def model(self) -> dict[str, float]:
    return self.rows[MODEL_ROW]


def image_grid(masked, pred, target, rows: int) -> np.ndarray:
  """uint8 [rows * H, 3 * W, 3]: one example per row, masked | prediction | target."""
  rows = min(rows, masked.shape[0])
  triplets = [np.concatenate([masked[i], pred[i], target[i]], axis=1) for i in range(rows)]
  return np.round(np.clip(np.concatenate(triplets, axis=0), 0, 1) * 255).astype(np.uint8)


class _Columns:
  """Per-example values of one pass on this host: row -> metric -> list of [B] arrays."""

  def __init__(self):
    self.values: dict[str, dict[str, list[np.ndarray]]] = {}

  def add(self, row: str, per_example: Mapping[str, Any], size: int) -> None:
    for name, value in per_example.items():
      value = np.asarray(value, np.float64).reshape(-1)
      if value.shape[0] != size:
        raise ValueError(f"row {row!r}: metric {name!r} has {value.shape[0]} values, not {size}")
      self.values.setdefault(row, {}).setdefault(name, []).append(value)

  def stacked(self) -> dict[str, dict[str, np.ndarray]]:
    return {
      row: {name: np.concatenate(parts) for name, parts in metrics.items()}
      for row, metrics in self.values.items()
    }


def _compile_count(fn) -> int | None:
  size = getattr(fn, "_cache_size", None)  # jax.jit's compiled-program count.
  return size() if callable(size) else None


def evaluate(
  eval_step_fn,
  state,
  batches: Iterable[Mapping[str, np.ndarray]],
  mesh,
  *,
  family_names: Sequence[str] | None = None,
  row_fns: Sequence[RowFn] = (),
  baseline: dict | None = None,
  num_images: int = 0,
) -> EvalResult:
  """One pass over `batches` (this host's share of a split), every host together.

  Args:
    eval_step_fn: `train.make_eval_step`'s jitted step: (state, sharded batch) -> (per-example
      metrics with `valid` and `family`, predictions).
    state: the train state to evaluate.
    batches: this host's batches, all of one shape; every host the same number of them.
    mesh: the `'data'` mesh.
    family_names: mask family names by id, for the per-family means.
    row_fns: extra rows (see the module docstring).
    baseline: None for no baseline row; else a cache for this split: empty on the first pass
      (filled then), reused on later ones (the split's batches are the same every pass).
    num_images: rows of the image grid.

  Returns:
    an EvalResult with rows `model`, `baseline` (when asked) and the row functions' rows.
  """
  from mask2face import metrics

  columns = _Columns()
  valid_parts, family_parts = [], []
  grid_rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
  compute_baseline = baseline is not None and not baseline
  baseline_fn = jax.jit(metrics.baseline_metrics) if compute_baseline else None
  compiled_first = None
  pending = []  # Row functions' futures, in batch order.

  def finish(batch, outputs):
    """Host-side work on one batch, while the device runs the next one."""
    per_example, pred = parallel.local_rows(outputs)
    valid, family = per_example.pop("valid"), per_example.pop("family")
    size = valid.shape[0]
    valid_parts.append(np.asarray(valid, np.float64))
    family_parts.append(np.asarray(family, np.int64))
    columns.add(MODEL_ROW, per_example, size)
    if compute_baseline:
      columns.add(BASELINE_ROW, jax.device_get(baseline_fn(batch)), size)
    for row_fn in row_fns:
      pending.append((size, pool.submit(row_fn, batch, pred)))
    # Padding (valid == 0) is all zeros and would show as black rows in the grid.
    for i in np.flatnonzero(valid > 0)[: max(num_images - len(grid_rows), 0)]:
      grid_rows.append((batch["masked"][i], pred[i], batch["clean"][i]))

  with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
    previous = None
    for batch in batches:
      outputs = eval_step_fn(state, parallel.shard_batch(batch, mesh))
      if compiled_first is None:
        compiled_first = _compile_count(eval_step_fn)
      if previous is not None:
        finish(*previous)
      previous = (batch, outputs)
    if previous is not None:
      finish(*previous)
    for size, future in pending:
      for row, per_example in future.result().items():
        columns.add(row, per_example, size)

  if compiled_first is not None and _compile_count(eval_step_fn) != compiled_first:
    logging.warning("The eval step compiled again during a pass: batches changed shape.")
  local = columns.stacked()
  valid = np.concatenate(valid_parts) if valid_parts else np.zeros(0)
  if baseline is not None:
    if compute_baseline:
      baseline.update(local[BASELINE_ROW])
    elif len(next(iter(baseline.values()))) != len(valid):
      raise ValueError("the cached baseline was computed on other batches than this pass's")
    local[BASELINE_ROW] = dict(baseline)
  family = np.concatenate(family_parts) if family_parts else np.zeros(0, np.int64)
  local, valid, family = parallel.gather_hosts((local, valid, family))
  rows = {}
  for row, per_example in local.items():
    accumulator = metrics.MetricAccumulator()
    accumulator.add(per_example, valid=valid, family=family)
    rows[row] = accumulator.result(family_names)
  if rows.get(MODEL_ROW, {}).get("count", 0) == 0:
    raise ValueError("evaluation saw no valid examples: is the split empty?")
  grid = None
  if grid_rows:
    masked, pred, target = (np.stack(x) for x in zip(*grid_rows))
    grid = image_grid(masked, pred, target, num_images)
  return EvalResult(rows, grid)


def identity_row(scorer) -> RowFn:
  """The identity metric as a row function: dlib descriptors of predictions vs targets, added
  to the `model` row (NaN for padding)."""

  def row(batch, pred):
    return {MODEL_ROW: scorer.score_batch(pred, batch["clean"], batch["valid"])}

  return row


def comparison_row(verifier=None) -> RowFn:
  """The test split's comparison rows as one row function.

  Adds `model_composited` (the prediction inside the slightly dilated mask, the input
  outside: the headline), OpenCV's `telea` and `navier_stokes` inpainting given the true mask
  (`mask2face.baselines`), and, with an `identity.CrossPhotoVerifier`, dlib verification
  against another photo of the same person and against the same photo for every row plus the
  clean faces (`clean`, the ceiling). The images are made once and shared by both.
  """
  from mask2face import baselines

  def row(batch, pred):
    images = baselines.comparison_images(batch, pred)
    rows = {
      name: dict(values)
      for name, values in baselines.comparison_rows(batch, pred, images=images).items()
    }
    if verifier is not None:
      faces = {"clean": batch["clean"], BASELINE_ROW: batch["masked"], MODEL_ROW: pred, **images}
      verified = verifier.score_batch(batch["index"], faces, batch["valid"])
      for name, values in verified.items():
        rows.setdefault(name, {}).update(values)
    return rows

  return row
