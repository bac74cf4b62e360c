"""This host's share of a run's data: the prepared sources, the train loader, the eval batches.

As flax's examples keep `input_pipeline.py` beside `train.py`: the data package
(`mask2face.data`) makes pairs and loaders from a `config.data`; this module sets them up for
one run on one host of possibly several (process 0 builds landmark caches and writes the
splits while the others wait at a barrier, each host reads its own shard).
"""

import functools

import jax
import ml_collections
from etils import epath

from mask2face import parallel, workdirs


def create_input_pipelines(config: ml_collections.ConfigDict, workdir: epath.Path):
  """This host's share of the data: (train iterator, split -> eval batches, PreparedData).

  Each host reads only the examples its own devices train on. The train iterator is endless
  and checkpointable (grain); `eval_batches(split)` gives that split's `pipeline.EvalBatches`
  (one per split, kept for the run, so its grain workers start once). Process 0 goes first:
  it builds any missing landmark cache (minutes of dlib) and writes `workdir/splits.json`
  while the other hosts wait at a barrier; then they read the cache (put it on storage every
  host sees) and make the same splits from the same seed.
  """
  from mask2face.data import pipeline

  if jax.process_index() == 0:
    prepared = pipeline.prepare_data(
      config.data, workdir=workdir, min_examples=workdirs.min_split_sizes(config)
    )
  parallel.sync("mask2face: landmark caches and splits ready")
  if jax.process_index() != 0:
    prepared = pipeline.prepare_data(config.data, workdir=None)
  n_hosts = jax.process_count()
  shard = dict(shard_index=jax.process_index(), shard_count=n_hosts)
  train_loader = pipeline.train_loader(
    prepared, config.data, batch_size=config.batch_size // n_hosts, seed=config.seed, **shard
  )
  eval_batch_size = (config.eval_batch_size or config.batch_size) // n_hosts

  @functools.cache
  def eval_batches(split: str):
    return pipeline.eval_batches(prepared, config.data, split, batch_size=eval_batch_size, **shard)

  return iter(train_loader), eval_batches, prepared


def num_steps_per_epoch(num_train_examples: int, batch_size: int) -> int:
  steps = num_train_examples // batch_size
  if steps == 0:
    raise ValueError(
      f"the train split has {num_train_examples} examples, fewer than one batch of {batch_size}"
    )
  return steps
