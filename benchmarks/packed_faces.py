"""Face photos and their landmarks packed in one small file, for timing the train loader on a
machine that has neither the photos nor dlib (the GPU benchmark host).

  python benchmarks/packed_faces.py --source=../shared/data/lfw_gray --num=512 \
      --out=benchmarks/out/lfw_packed.npz

The file holds each photo's original JPEG bytes (the loader decodes them as it would the
files) and its cached 68 landmarks; `prepared(path)` turns it into the `PreparedData` the
train loader takes, every photo in the train split. It holds real photos: keep it out of the
repository (benchmarks/out/ is ignored).
"""

import pathlib
import sys
from typing import NamedTuple

import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from mask2face.data import images, sources  # noqa: E402
from mask2face.data.prepare import PreparedData  # noqa: E402


class _Points(NamedTuple):
  points: np.ndarray  # (68, 2): all the train loader reads of a FaceLandmarks.


class PackedSource(sources.FaceSource):
  """The photos of a packed file, loaded (decoded) by key like a folder's (picklable)."""

  def __init__(self, path):
    with np.load(path) as data:
      self._jpeg, self._offsets = data["jpeg"], data["offsets"]
      keys, self.points = [str(k) for k in data["keys"]], data["points"]
    self.name = f"packed:{pathlib.Path(path).name}"
    self.records = [sources.FaceRecord(k, k) for k in keys]
    self._index = {k: i for i, k in enumerate(keys)}

  def load(self, key: str) -> np.ndarray:
    i = self._index[key]
    return images.load_image(self._jpeg[self._offsets[i] : self._offsets[i + 1]].tobytes())


def prepared(path) -> PreparedData:
  """Every packed photo in the train split (no validation or test)."""
  source = PackedSource(path)
  keys = [r.key for r in source.records]
  landmarks = {k: _Points(p) for k, p in zip(keys, source.points, strict=True)}
  splits = {"train": keys, "validation": [], "test": []}
  return PreparedData(source=source, landmarks=landmarks, splits=splits, num_without_face=0)


def pack(source_spec: str, landmarks_cache: str, num: int, out: pathlib.Path) -> int:
  """Packs the first `num` photos of `source_spec` that have landmarks; returns the count."""
  from mask2face.data import landmarks as landmarks_lib

  source = sources.get_source(source_spec)
  table = landmarks_lib.load_cache(landmarks_cache or landmarks_lib.default_cache_path(source_spec))
  keys = [r.key for r in source.records if r.key in table][:num]
  if not keys:
    raise ValueError(f"no photo of {source_spec} has cached landmarks")
  root = pathlib.Path(source_spec)
  blobs = [np.frombuffer((root / k).read_bytes(), np.uint8) for k in keys]
  out.parent.mkdir(parents=True, exist_ok=True)
  np.savez(
    out,
    jpeg=np.concatenate(blobs),
    offsets=np.cumsum([0] + [len(b) for b in blobs]),
    keys=np.array(keys),
    points=np.stack([np.asarray(table[k].points, np.float32) for k in keys]),
  )
  return len(keys)


def main(argv):
  del argv
  f = flags.FLAGS
  count = pack(f.source, f.landmarks_cache, f.num, pathlib.Path(f.out))
  size = pathlib.Path(f.out).stat().st_size / 2**20
  print(f"{count} photos, {size:.1f} MiB -> {f.out}")


if __name__ == "__main__":
  flags.DEFINE_string("source", "../shared/data/lfw_gray", "A folder of face photos.")
  flags.DEFINE_string("landmarks_cache", "", "Its landmark cache ('' = the default path).")
  flags.DEFINE_integer("num", 512, "Photos to pack.")
  flags.DEFINE_string("out", "benchmarks/out/lfw_packed.npz", "The packed file.")
  app.run(main)
