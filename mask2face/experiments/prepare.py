"""Data, once for every point: each distinct face source of a grid is prepared before its runs.

`point_data_config` reads back the `config.data` a point's trainer will see; `prepare_sources`
computes each distinct source's landmark cache once, so runs started together only load it.
"""

import time
from collections.abc import Sequence

from absl import logging

from mask2face import config_files
from mask2face.experiments import grid as grid_lib
from mask2face.experiments.commands import RunSettings, point_overrides

# The `config.data` fields that decide a source's landmark cache (the expensive shared part).
DATA_SOURCE_FIELDS = (
  "source",
  "identity_pattern",
  "tfds_data_dir",
  "manual_dir",
  "landmarks_cache",
)


def point_data_config(point: grid_lib.Point, settings: RunSettings):
  """The `config.data` section the point's trainer will see: config, runlocal, overrides."""
  # Loaded as the trainer's --config loads it, by absolute path: this process may run anywhere.
  path, arg = grid_lib.resolve_config(point.config), settings.config_arg(point)
  data_config = config_files.load(f"{path}:{arg}" if arg else path).data
  for key, text in point_overrides(point, settings).items():
    field = key.removeprefix("data.")
    if key.startswith("data.") and field in data_config:
      data_config[field] = config_files.parse_value(text, data_config[field])
  return data_config


def prepare_sources(points: Sequence[grid_lib.Point], settings: RunSettings) -> int:
  """Prepares each distinct data source of `points` once, in this process.

  Every trainer starts with `pipeline.prepare_data`, which computes the source's landmark cache
  when it is missing; N points started at once would all compute the same cache. Done here
  first, the trainers only load it. A source that cannot be prepared is logged and left to the
  points, which report their own error.

  Returns:
    How many distinct sources were prepared.
  """
  from mask2face.data import pipeline

  seen, prepared = set(), 0
  for point in points:
    try:
      data_config = point_data_config(point, settings)
    except Exception as e:  # A broken config fails in its own point, with its own message.
      logging.warning("%s: cannot read its data config (%s: %s)", point.name, type(e).__name__, e)
      continue
    key = tuple(str(data_config.get(f, "")) for f in DATA_SOURCE_FIELDS)
    if key in seen:
      continue
    seen.add(key)
    logging.info(
      "Preparing the data of %s once for every point (landmarks: %s)",
      data_config.source,
      data_config.landmarks_cache or "default cache",
    )
    start = time.time()
    try:
      found = pipeline.prepare_data(data_config)
    except Exception as e:  # Each point retries and reports it; the grid goes on.
      logging.warning(
        "Could not prepare %s (%s: %s); each point will try on its own.",
        data_config.source,
        type(e).__name__,
        e,
      )
      continue
    prepared += 1
    logging.info(
      "Data ready in %.0f s: %d faces, landmarks in %s",
      time.time() - start,
      len(found.landmarks),
      found.landmarks_path or "the cache",
    )
  return prepared
