"""The grain input pipeline: face photos -> (masked, clean, mask) training pairs in batches.

Per example, inside grain's worker processes: load the photo -> square crop from its cached
landmarks (`crop.py`) -> paint a mask -> the same flip and colour jitter on both images.

Order of crop and paint (`data.paint_order`): painting costs roughly in proportion to the
pixels the mask covers, so 'auto' paints at the lower of the two resolutions: on the full
photo, then crops, when the crop enlarges the face (LFW at 256²: 1.2x faster, and the mask
gets the same resampling blur as the face instead of sharper edges that give it away); on the
crop, with the landmarks mapped into it, when the crop shrinks the face (large photos, small
crops: 1.2-1.6x faster). 'crop_then_paint' and 'paint_then_crop' force one order;
`benchmarks/data_bench.py` measures all three.

Randomness: a training example's mask, flip and jitter come from
`np.random.default_rng([seed, epoch, record_index])`, so every epoch sees new masks and a
rerun sees the same ones; evaluation uses `[eval_seed, hash of the image's key]` (its key in
its own source) and no augmentation. Several sources (prepare.py) are mixed by weight in
training batches (mixing.py).

Batches are dicts of numpy arrays (see docs/design.md): `masked`, `clean` [B, H, W, 3] and
`mask` [B, H, W, 1] (1 under the mask), `family` int32 [B], `valid` float32 [B]. Training
batches carry the images and mask as uint8 (0..255, mask 0/1: a quarter of float32's bytes on
the way to the device, where `train.to_float` casts them); evaluation batches as float32 in
[0, 1], with `index` int32 [B] too, the example's position in `prepared.splits[split]` (-1 for
padding), which names its photo and identity for host-side metrics.

Workers: `data.worker_count` grain processes, -1 = one per core but one (`worker_count`);
OpenCV runs single-threaded inside them (`_one_cv2_thread`), since the workers already use
every core and OpenCV's own threads would only compete with them.
"""

import dataclasses
import functools
import hashlib
import math
import multiprocessing
import os

import cv2
import grain.python as grain
import numpy as np
from absl import flags, logging

from mask2face.data import mixing
from mask2face.data.pairs import PairOptions, make_pair, padding_example
from mask2face.data.prepare import PreparedData
from mask2face.data.prepare import prepare_data as prepare_data  # The pipeline's entry point.

# --------------------------------------------------------------------------------------------
# grain plumbing.


def _key_id(key: str) -> int:
  """A stable 64-bit number for a source key (Python's hash() changes between processes)."""
  return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "little")


class _PhotoSource(grain.RandomAccessDataSource):
  """Random access to (record index, photo, landmarks) for one split; indices past the split
  (evaluation padding) return a placeholder."""

  def __init__(self, source, keys, points, *, name, num_padded=0, seed_keys=None):
    self._source = source
    self._keys = list(keys)
    self._seed_keys = list(seed_keys or self._keys)  # What evaluation masks are seeded by.
    self._points = points
    self._name = name
    self._length = len(self._keys) + num_padded

  def __len__(self):
    return self._length

  def __getitem__(self, record_index):
    record_index = int(record_index)
    if record_index >= len(self._keys):
      return {"index": record_index, "image": None, "error": ""}
    key = self._keys[record_index]
    try:
      image = self._source.load(key)
    except (ValueError, OSError) as e:  # ImageError is a ValueError.
      logging.error("Skipping %s: %s", key, e)
      return {"index": record_index, "image": None, "error": f"{key}: {e}"}
    return {
      "index": record_index,
      "key": key,
      "key_id": _key_id(self._seed_keys[record_index]),
      "image": image,
      "points": self._points[record_index],
    }

  def __repr__(self):
    # grain compares this text when restoring an iterator state: it must be stable.
    digest = hashlib.sha1("\n".join(self._keys).encode()).hexdigest()[:12]
    return f"_PhotoSource(name={self._name!r}, len={self._length}, keys={digest})"


class _EpochSampler(grain.IndexSampler):
  """grain's shuffling IndexSampler, with each record's generator seeded from
  `[seed, epoch, record_index]` (grain's own is seeded from `seed + position`)."""

  def __getitem__(self, index):
    metadata = super().__getitem__(index)
    epoch = index // self._num_records
    rng = np.random.default_rng([self._seed, epoch, int(metadata.record_key)])
    return dataclasses.replace(metadata, rng=rng)

  def __repr__(self):
    return "_Epoch" + super().__repr__()


class _HostBatchSampler:
  """Host `shard_index`'s slice of every global batch, in the order grain's loader reads it.

  grain's loader shards a sampler element-wise (host h reads every H-th element) and each of
  its W workers batches every W-th element of that, so which examples made up global batch k
  depended on the host and worker counts. Read through this sampler, host h's k-th batch is
  always elements [k*B + h*b, k*B + (h+1)*b) of the inner sampler's sequence (b per host,
  B = b*H): 2 hosts train on exactly the batches 1 host does, in the same device order.
  """

  def __init__(self, inner, *, batch_size: int, shard_index: int, shard_count: int, workers: int):
    self._inner = inner
    self._batch = int(batch_size)
    self._host, self._hosts = int(shard_index), int(shard_count)
    self._workers = max(1, int(workers))  # In-process reading is one worker's order.

  def global_index(self, index: int) -> int:
    """The inner sampler's position read at this host's `index`."""
    worker, position = index % self._workers, index // self._workers
    worker_batch, j = divmod(position, self._batch)
    batch = worker_batch * self._workers + worker  # The loader takes workers in turn.
    return (batch * self._hosts + self._host) * self._batch + j

  def __len__(self) -> int:
    return len(self._inner) // self._hosts

  def __getitem__(self, index: int):
    # The loader's own index stays in the metadata: grain's iterator state counts in it.
    return dataclasses.replace(self._inner[self.global_index(index)], index=index)

  def __repr__(self):
    # grain compares this text when restoring an iterator state: it must be stable.
    return (
      f"HostBatches({self._inner!r}, batch={self._batch}, host={self._host}/{self._hosts}, "
      f"workers={self._workers})"
    )


@functools.cache
def _one_cv2_thread(pid: int) -> None:
  """One OpenCV thread in a worker process (the workers already use every core); once per
  process id, so a forked worker does not inherit its parent's 'done'."""
  del pid  # The cache key.
  if multiprocessing.parent_process() is not None:
    cv2.setNumThreads(1)


def _guarded(element, rng, options, *, augment, dtype=np.float32):
  """`make_pair`, or None (logged, naming the image) when one odd face breaks it: a long run
  goes on without that example (training drops it, evaluation counts it invalid)."""
  _one_cv2_thread(os.getpid())
  try:
    return make_pair(
      element["image"], element["points"], rng, options, augment=augment, dtype=dtype
    )
  except Exception as e:
    logging.error(
      "Skipping %s: making its pair failed (%s: %s)", element["key"], type(e).__name__, e
    )
    return None


class _TrainPair(grain.RandomMapTransform):
  """Makes an augmented uint8 training pair from the sampler's per-(epoch, record) generator."""

  def __init__(self, options: PairOptions):
    self._options = options

  def random_map(self, element, rng):
    if element["image"] is None:
      return None
    return _guarded(element, rng, self._options, augment=True, dtype=np.uint8)


class _EvalPair(grain.MapTransform):
  """Makes an evaluation pair: fixed mask per example, no augmentation, padding -> valid=0."""

  def __init__(self, options: PairOptions, seed: int):
    self._options = options
    self._seed = seed

  def map(self, element):
    if element["image"] is None:
      return padding_example(self._options.image_size)
    # Seeded by the image's key, so its mask is the same whatever the split size or cap.
    rng = np.random.default_rng([self._seed, element["key_id"]])
    pair = _guarded(element, rng, self._options, augment=False)
    if pair is None:
      return padding_example(self._options.image_size)
    pair["index"] = np.int32(element["index"])  # Position in the split: its key and identity.
    return pair


class _DropFailed(grain.FilterTransform):
  def filter(self, element):
    return element is not None


def _split_keys(prepared: PreparedData, split: str) -> list[str]:
  if split not in prepared.splits:
    raise ValueError(f"unknown split {split!r}; expected one of {sorted(prepared.splits)}")
  keys = prepared.splits[split]
  if not keys:
    raise ValueError(f"split {split!r} of {prepared.source.name} is empty")
  return keys


def _points(prepared: PreparedData, keys) -> np.ndarray:
  return np.stack([np.asarray(prepared.landmarks[k].points, np.float32) for k in keys])


# Auto worker counts stop here: each worker is a process with its own memory and imports.
MAX_AUTO_WORKERS = 16


def worker_count(data_config) -> int:
  """`data.worker_count`, where -1 (auto) is one per core this process may use, but one.

  At 256 px a worker makes about 200 training pairs a second, so 1,000 img/s needs five or
  more; the core left over runs the training loop.
  """
  count = int(data_config.worker_count)
  if count >= 0:
    return count
  if count != -1:
    raise ValueError(f"data.worker_count must be -1 (auto) or >= 0, got {count}")
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return min(max((cores or 1) - 1, 0), MAX_AUTO_WORKERS)


def _worker_count(data_config) -> int:
  count = worker_count(data_config)
  if count > 0 and not flags.FLAGS.is_parsed():
    # grain's workers read absl flags; outside absl.app.run (pytest, notebooks) they are unparsed.
    flags.FLAGS.mark_as_parsed()
  return count


def _check_shard(shard_index, shard_count):
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, shard_count={shard_count})")


def train_loader(
  prepared: PreparedData, data_config, *, batch_size, seed, shard_index=0, shard_count=1
):
  """An endless, shuffled grain loader of training batches for this host.

  Args:
    prepared: from `prepare_data`.
    data_config: `config.data`.
    batch_size: examples per batch on this host (the global batch / shard_count).
    seed: shuffling, masks and augmentation (also mixed with the epoch).
    shard_index, shard_count: this host's slice of the data (jax.process_index/count()).

  Several sources are drawn by `data.source_weights` ('' = in proportion to their train
  splits), each reshuffled every one of its own epochs (mixing.MixedSampler).

  Returns:
    a `grain.DataLoader`; `iter(loader)` gives an iterator with `get_state()`/`set_state()`,
    saved by orbax with `grain.python.PyGrainCheckpointSave(iterator)`.
  """
  _check_shard(shard_index, shard_count)
  keys = _split_keys(prepared, "train")
  if len(keys) < batch_size * shard_count:
    raise ValueError(
      f"train split has {len(keys)} examples, fewer than one global batch "
      f"({batch_size} x {shard_count} hosts)"
    )
  source = _PhotoSource(prepared.source, keys, _points(prepared, keys), name="train")
  # The sampler shuffles the whole split each epoch; each host reads its slice of every global
  # batch (_HostBatchSampler), so hosts never see the same example in an epoch.
  if len(prepared.parts) > 1:
    sizes = [len(part.splits["train"]) for part in prepared.parts]
    tags = [part.tag for part in prepared.parts]
    weights = mixing.mixing_weights(data_config.get("source_weights", ""), sizes, tags)
    logging.info("Mixing %s in training batches with weights %s", tags, weights)
    sampler = mixing.MixedSampler(sizes, weights, int(seed))
  else:
    sampler = _EpochSampler(num_records=len(keys), shuffle=True, seed=int(seed), num_epochs=None)
  options = PairOptions.from_config(data_config)
  workers = _worker_count(data_config)
  shard = grain.ShardOptions(shard_index, shard_count, drop_remainder=True)
  if shard_count > 1 or workers > 1:
    # One host with at most one worker reads the sampler in order already (and keeps the
    # iterator states of runs saved before this reordering existed).
    sampler = _HostBatchSampler(
      sampler,
      batch_size=batch_size,
      shard_index=shard_index,
      shard_count=shard_count,
      workers=workers,
    )
    shard = grain.NoSharding()  # The sampler above is this host's already.
  return grain.DataLoader(
    data_source=source,
    sampler=sampler,
    operations=[
      _TrainPair(options),
      _DropFailed(),
      grain.Batch(batch_size=batch_size, drop_remainder=True),
    ],
    worker_count=workers,
    worker_buffer_size=int(data_config.worker_buffer_size),
    shard_options=shard,
  )


def num_eval_batches(num_examples: int, batch_size: int, shard_count: int = 1) -> int:
  """Batches per host for one pass over `num_examples` (the same on every host)."""
  return math.ceil(num_examples / (batch_size * shard_count))


class EvalBatches:
  """Passes over one split, each `iter()` one pass of `num_batches` full [batch_size] batches.

  The grain loader below is endless (the padded split repeated) and read one pass at a time:
  its worker processes start once and serve every evaluation of the run. Examples come out of
  the workers one by one, in order, and are batched here, so every batch has the same shape
  whatever the worker count (batching inside workers gave each worker's remainder its own
  odd-sized batch, and a new compilation).
  """

  def __init__(self, loader: grain.DataLoader, *, num_batches: int, batch_size: int):
    self._loader = loader
    self.num_batches = num_batches
    self.batch_size = batch_size
    self._examples = None  # The endless iterator, started by the first pass.
    self._unread = 0  # Examples a pass left unread (stopped early): skipped by the next one.

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self):
    if self._examples is None:
      self._examples = iter(self._loader)
    for _ in range(self._unread):
      next(self._examples)
    self._unread = self.num_batches * self.batch_size
    for _ in range(self.num_batches):
      examples = [next(self._examples) for _ in range(self.batch_size)]
      self._unread -= self.batch_size
      yield {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def eval_batches(
  prepared: PreparedData, data_config, split, *, batch_size, shard_index=0, shard_count=1
) -> EvalBatches:
  """Passes over a split: every example exactly once, fixed masks, no augmentation.

  The split is padded to a multiple of `batch_size * shard_count` with `valid == 0` examples,
  so every host gets the same number of batches, all of shape [batch_size, ...]. `index` [B]
  gives each example's position in `prepared.splits[split]` (the same on every host; -1 for
  padding).

  Returns:
    an `EvalBatches`; each `iter()` is a fresh pass (the same batches every time).
  """
  _check_shard(shard_index, shard_count)
  keys = _split_keys(prepared, split)
  num_batches = num_eval_batches(len(keys), batch_size, shard_count)
  total = num_batches * batch_size * shard_count
  source = _PhotoSource(
    prepared.source,
    keys,
    _points(prepared, keys),
    name=split,
    num_padded=total - len(keys),
    seed_keys=[prepared.seed_key(k) for k in keys],
  )
  # Endless, in order: pass n reads the split's n-th repetition; the masks do not depend on it.
  sampler = grain.IndexSampler(num_records=total, shuffle=False, num_epochs=None)
  options = PairOptions.from_config(data_config)
  loader = grain.DataLoader(
    data_source=source,
    sampler=sampler,
    operations=[_EvalPair(options, int(data_config.get("eval_seed", 0)))],
    worker_count=_worker_count(data_config),
    worker_buffer_size=int(data_config.worker_buffer_size),
    shard_options=grain.ShardOptions(shard_index, shard_count, drop_remainder=False),
  )
  return EvalBatches(loader, num_batches=num_batches, batch_size=batch_size)
