"""Training on several face sources at once: a grain sampler that mixes them by weight.

The training split of a multi-source run is the sources' train splits one after another
(record keys `offsets[s] .. offsets[s] + sizes[s] - 1`). `MixedSampler` maps the loader's
global position to one record:

- which source: grain's `MapDataset.mix` (an exact interleaving by the weights) reordered
  within windows of `WINDOW` positions by `grain.experimental.WindowShuffleMapDataset`, so
  every window holds the sources in proportion but in random order (a fixed A, B, A, B pattern
  would hand all of A to one host or worker when they take every n-th position);
- which record of that source: its own endless stream, a fresh shuffle every epoch
  (`MapDataset.range(n).shuffle(seed).repeat()`);
- the example's generator (mask, flip, jitter): `[seed, source, epoch, record]`, so each
  source's epochs see new masks.

Everything is a pure function of (position, seed): the grain DataLoader's iterator state (the
last positions read) checkpoints and restores it exactly, and hosts and workers taking every
n-th position see disjoint records within each source's epoch.
"""

import sys
from collections.abc import Sequence

import grain.python as grain
import numpy as np

WINDOW = 1024  # Positions shuffled together; each holds the sources in proportion (within 1).
_SPAN = 2**50  # Source s's selection positions are s * _SPAN + j.


def mixing_weights(text: str, sizes: Sequence[int], names: Sequence[str]) -> tuple[float, ...]:
  """Normalised weights from `data.source_weights` ('' = proportional to `sizes`).

  Raises:
    ValueError: a count that is not one per source, a non-number, a negative weight, or no
      positive weight on a source with training examples.
  """
  if not str(text).strip():
    weights = np.asarray(sizes, np.float64)
  else:
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != len(sizes):
      raise ValueError(
        f"source_weights {text!r} gives {len(parts)} weights for {len(sizes)} sources "
        f"({', '.join(names)})"
      )
    try:
      weights = np.array([float(p) for p in parts], np.float64)
    except ValueError:
      raise ValueError(f"source_weights must be numbers, got {text!r}") from None
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
      raise ValueError(f"source_weights must be non-negative numbers, got {text!r}")
  weights = np.where(np.asarray(sizes) > 0, weights, 0.0)
  if weights.sum() <= 0:
    raise ValueError(
      f"no source with training examples has a positive weight (source_weights {text!r}, "
      f"train sizes {dict(zip(names, sizes))})"
    )
  return tuple(float(w) for w in weights / weights.sum())


def _derived_seed(*parts: int) -> int:
  """A 31-bit seed for grain's shuffles from several integers."""
  return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


class MixedSampler:
  """A grain sampler drawing source s with probability `weights[s]` (see module docstring).

  Args:
    sizes: training records per source, in the data source's order.
    weights: one non-negative weight per source (normalised here); 0 = never drawn.
    seed: shuffling, mixing order and the examples' generators.
  """

  def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int):
    self._sizes = tuple(int(n) for n in sizes)
    total = float(sum(weights))
    self._weights = tuple(float(w) / total for w in weights)
    self._seed = int(seed)
    self._offsets = tuple(int(o) for o in np.cumsum((0,) + self._sizes[:-1]))
    self._active = tuple(s for s, w in enumerate(self._weights) if w > 0)
    if any(self._sizes[s] <= 0 for s in self._active):
      raise ValueError(f"a source with a positive weight has no records: sizes {self._sizes}")
    self._datasets = None

  def __getstate__(self):
    # grain's datasets are rebuilt in each process (cheap); only the settings travel.
    return {**self.__dict__, "_datasets": None}

  def _build(self):
    # grain's mix takes the relative weights of the drawn sources only (it refuses zeros).
    selection = grain.MapDataset.mix(
      [grain.MapDataset.range(s * _SPAN, (s + 1) * _SPAN) for s in self._active],
      [self._weights[s] for s in self._active],
    )
    selection = grain.experimental.WindowShuffleMapDataset(
      selection, window_size=WINDOW, seed=_derived_seed(self._seed, 1)
    )
    streams = {
      s: grain.MapDataset.range(self._sizes[s])
      .shuffle(seed=_derived_seed(self._seed, 2, s))
      .repeat()
      for s in self._active
    }
    self._datasets = (selection, streams)

  def __len__(self) -> int:
    return sys.maxsize  # Endless, like grain's IndexSampler with num_epochs=None.

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    if index < 0:
      raise IndexError(f"negative sampler index {index}")
    if self._datasets is None:
      self._build()
    selection, streams = self._datasets
    source, position = divmod(int(selection[index]), _SPAN)
    record = int(streams[source][position])
    epoch = position // self._sizes[source]
    rng = np.random.default_rng([self._seed, source, epoch, record])
    return grain.RecordMetadata(index=index, record_key=self._offsets[source] + record, rng=rng)

  def __repr__(self):
    # grain compares this text when restoring an iterator state: it must be stable.
    weights = ", ".join(f"{w:.6g}" for w in self._weights)
    return f"MixedSampler(sizes={self._sizes}, weights=({weights}), seed={self._seed})"
