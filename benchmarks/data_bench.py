"""Data pipeline speed: landmarking faces/s per core and training pairs/s per worker.

  python benchmarks/data_bench.py --data=../shared/data --num=60

Everything runs in one process on one thread (OpenCV's threads off) and rates use this
process's CPU time, so they hold on a busy machine; a pipeline with W grain workers makes
about W x the pairs/s shown (until the cores run out). Pairs are timed with augmentation, at 256²
and 128², for each order of the crop and the mask painting (`data.paint_order`), on
LFW photos (250x250) and on the colour folder (mixed sizes, up to 960 px). Prints a
Markdown table.
"""

import dataclasses
import pathlib
import time

import cv2
import numpy as np
from absl import app, flags

from mask2face import config_files
from mask2face.data import images, pairs
from mask2face.data.landmarks import LandmarkDetector

COMMON_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "common.py"

_DATA = flags.DEFINE_string("data", "../shared/data", "The shared data folder.")
_FOLDERS = flags.DEFINE_list("folders", ["lfw_gray", "faces_color"], "Sub-folders to time.")
_NUM = flags.DEFINE_integer("num", 60, "Photos per folder (evenly spread).")
_SIZES = flags.DEFINE_list("sizes", ["256", "128"], "Crop sizes.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Pair passes over the photos (epochs).")


def _photos(folder: pathlib.Path, num: int) -> list[pathlib.Path]:
  paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
  if not paths:
    raise FileNotFoundError(f"no images under {folder}")
  return [paths[i] for i in np.linspace(0, len(paths) - 1, min(num, len(paths))).astype(int)]


def landmark_photos(paths):
  """Loads and landmarks photos; returns [(image, points)] and faces/s (detection only)."""
  detector = LandmarkDetector()
  loaded = [images.load_image(p) for p in paths]
  start = time.process_time()
  faces = [detector.detect_largest(image) for image in loaded]
  seconds = time.process_time() - start
  found = [(image, face.points) for image, face in zip(loaded, faces) if face is not None]
  return found, len(loaded) / seconds


def pairs_per_second(found, options, repeats) -> float:
  pairs.make_pair(found[0][0], found[0][1], np.random.default_rng(0), options, augment=True)
  start = time.process_time()
  for epoch in range(repeats):
    for i, (image, points) in enumerate(found):
      rng = np.random.default_rng([0, epoch, i])
      pairs.make_pair(image, points, rng, options, augment=True)
  return repeats * len(found) / (time.process_time() - start)


def main(argv):
  del argv
  cv2.setNumThreads(1)
  base = pairs.PairOptions.from_config(config_files.load(COMMON_CONFIG).data)
  rows = []
  for name in _FOLDERS.value:
    found, faces_per_s = landmark_photos(_photos(pathlib.Path(_DATA.value) / name, _NUM.value))
    sides = [max(image.shape[:2]) for image, _ in found]
    row = [name, f"{len(found)}", f"{np.median(sides):.0f}", f"{faces_per_s:.1f}"]
    for size in (int(s) for s in _SIZES.value):
      for order in pairs.PAINT_ORDERS:
        options = dataclasses.replace(base, image_size=size, paint_order=order)
        row.append(f"{pairs_per_second(found, options, _REPEATS.value):.1f}")
    rows.append(row)
  header = ["photos", "faces", "median side", "landmarks faces/s/core"]
  for size in _SIZES.value:
    header += [f"pairs/s/worker {size}² {order}" for order in pairs.PAINT_ORDERS]
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for row in rows:
    print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
  app.run(main)
