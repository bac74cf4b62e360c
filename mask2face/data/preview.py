"""CLI: a picture of training examples, each as masked | clean | mask, to check the pipeline.

  python -m mask2face.data.preview --source=../shared/data/lfw_gray --out=/tmp/grid.png --num=16

Same settings and flags as `mask2face.data.export_pairs` (crop, mask families, `--augment`,
`--config`); bad files and photos without a face are skipped, counted and listed. The PNG is
written atomically; an existing --out is replaced only with --overwrite.
"""

import math
import pathlib
import sys

import numpy as np
from absl import app, flags

from mask2face import cli
from mask2face.data import export_pairs


def make_grid(pairs, *, columns=None, gap=4) -> np.ndarray:
  """Tiles (masked | clean | mask) triptychs into a uint8 RGB picture, `columns` per row."""
  if not pairs:
    raise ValueError("no examples to draw")
  size = pairs[0]["clean"].shape[0]
  columns = columns or math.ceil(math.sqrt(len(pairs)))
  rows = math.ceil(len(pairs) / columns)
  tile_w = 3 * size + 2 * gap
  grid = np.full(
    (rows * (size + gap) + gap, columns * (tile_w + 2 * gap) + gap, 3), 255, dtype=np.uint8
  )
  for i, pair in enumerate(pairs):
    mask = np.repeat(export_pairs.to_uint8(pair["mask"])[..., None], 3, axis=-1)
    tile = [export_pairs.to_uint8(pair["masked"]), export_pairs.to_uint8(pair["clean"]), mask]
    y = gap + (i // columns) * (size + gap)
    x = gap + (i % columns) * (tile_w + 2 * gap)
    for j, image in enumerate(tile):
      grid[y : y + size, x + j * (size + gap) : x + j * (size + gap) + size] = image
  return grid


@cli.one_line_errors
def main(argv):
  del argv
  f = flags.FLAGS
  cli.refuse_existing([f.out], overwrite=f.overwrite)
  source = export_pairs.open_source(f)
  tally, pairs = export_pairs.Tally(), []
  outcomes = export_pairs.iter_outcomes(
    source,
    export_pairs.options_from_flags(f),
    seed=f.seed,
    augment=f.augment,
    cache_path=f.landmarks_cache,
    workers=f.workers,
  )
  try:
    for outcome in outcomes:
      tally.add(outcome)
      if outcome.pair is not None:
        pairs.append(outcome.pair)
        if len(pairs) >= f.num:
          break
  finally:
    outcomes.close()
  if not pairs:
    sys.exit(f"no example could be made from {source.name}\n{tally.report()}")
  out = pathlib.Path(f.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  export_pairs.write_png(out, make_grid(pairs))
  cli.emit(f"wrote {len(pairs)} examples (masked | clean | mask) to {out}")
  cli.emit(tally.report())


if __name__ == "__main__":
  export_pairs.define_flags()
  flags.DEFINE_integer("num", 16, "Examples to draw.")
  app.run(main)
