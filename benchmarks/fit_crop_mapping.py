"""Re-fits the detector -> training crop mapping stored in `mask2face/detect.py`.

On unmasked faces, where dlib's 68 landmarks (the training crop) and MediaPipe's detector both
work, it collects MediaPipe's box and keypoints and the landmark crop's centre and side, fits
the three linear maps by least squares (one pass of outlier trimming), reports the held-out
agreement and prints the constants to paste into `mask2face/detect.py`.

  python benchmarks/fit_crop_mapping.py --data=../shared/data --max_per_folder=800
"""

import pathlib

import numpy as np
from absl import app, flags
from tqdm import tqdm

from mask2face import detect
from mask2face.data import crop, images
from mask2face.data.landmarks import LandmarkDetector

_DATA = flags.DEFINE_string("data", "../shared/data", "The shared data folder.")
_FOLDERS = flags.DEFINE_list("folders", ["faces_color", "lfw_gray"], "Sub-folders to fit on.")
_MAX = flags.DEFINE_integer("max_per_folder", 800, "Images per folder (evenly spread).")
_MODEL = flags.DEFINE_string("detector_model", "", "MediaPipe model ('' = data/models copy).")


def collect_pairs(paths, finder, landmarker, size=256):
  """[(FoundFace, (cx, cy, side) of the landmark crop)] for images with one face in both."""
  pairs, skipped = [], {}
  for path in tqdm(paths, desc="faces", unit="img"):
    try:
      image = images.load_image(path)
    except images.ImageError:
      skipped["unreadable"] = skipped.get("unreadable", 0) + 1
      continue
    marks = [m for m in landmarker.detect(image) if not m.fallback]
    faces = finder.find(image)
    if len(marks) != 1 or len(faces) != 1:
      skipped["not one face in both"] = skipped.get("not one face in both", 0) + 1
      continue
    matrix = crop.crop_transform(marks[0].points, size=size)
    target = detect.square_from_transform(matrix, size)
    x0, y0, x1, y1 = faces[0].box
    if not (x0 <= target[0] <= x1 and y0 <= target[1] <= y1):
      skipped["detectors disagree"] = skipped.get("detectors disagree", 0) + 1
      continue
    pairs.append((faces[0], target))
  return pairs, skipped


def design(pairs):
  """Feature matrices and targets (relative to the box centre) for the three maps."""
  fx, fy, fs, tx, ty, ts = [], [], [], [], [], []
  for face, (cx, cy, side) in pairs:
    (bx, by), x, y, s = detect.crop_features(face)
    fx.append(x)
    fy.append(y)
    fs.append(s)
    tx.append(cx - bx)
    ty.append(cy - by)
    ts.append(side)
  return [np.array(a) for a in (fx, fy, fs, tx, ty, ts)]


def robust_lstsq(features, target):
  """Least squares, then again without residuals beyond 3 robust standard deviations."""
  coefs = np.linalg.lstsq(features, target, rcond=None)[0]
  residual = target - features @ coefs
  mad = np.median(np.abs(residual - np.median(residual))) * 1.4826
  keep = np.abs(residual) <= 3 * max(mad, 1e-6)
  return np.linalg.lstsq(features[keep], target[keep], rcond=None)[0]


def fit(pairs):
  fx, fy, fs, tx, ty, ts = design(pairs)
  # Fit relative to the side so big faces don't dominate the squared error.
  w = 1.0 / ts[:, None]
  return (
    robust_lstsq(fx * w, tx * w[:, 0]),
    robust_lstsq(fy * w, ty * w[:, 0]),
    robust_lstsq(fs * w, ts * w[:, 0]),
  )


def errors(pairs, coefs):
  """Per face: centre offset / side, and predicted side / true side."""
  fx, fy, fs, tx, ty, ts = design(pairs)
  cx, cy, cs = coefs
  offset = np.hypot(fx @ cx - tx, fy @ cy - ty) / ts
  return offset, (fs @ cs) / ts


def describe(offset, ratio):
  return (
    f"centre offset / side: median {np.median(offset):.3f}, p90 {np.quantile(offset, 0.9):.3f}; "
    f"side ratio: median {np.median(ratio):.3f}, p10-p90 {np.quantile(ratio, 0.1):.3f}-"
    f"{np.quantile(ratio, 0.9):.3f} ({len(offset)} faces)"
  )


def main(argv):
  del argv
  data = pathlib.Path(_DATA.value)
  model = _MODEL.value or data / "models" / "face_detection_short_range.tflite"
  paths = []
  for folder in _FOLDERS.value:
    found = sorted(p for p in (data / folder).rglob("*") if p.is_file())
    step = max(1, len(found) // _MAX.value)
    paths += found[::step][: _MAX.value]
  with detect.FaceFinder(model, fallbacks=()) as finder:
    pairs, skipped = collect_pairs(paths, finder, LandmarkDetector())
  print(f"{len(pairs)} faces usable of {len(paths)}; skipped: {skipped}")
  train, held_out = pairs[::2], pairs[1::2]
  print("held-out half: " + describe(*errors(held_out, fit(train))))
  coefs = fit(pairs)
  print("all (in-sample): " + describe(*errors(pairs, coefs)))
  names = ("CENTER_X_COEFS", "CENTER_Y_COEFS", "SIDE_COEFS")
  for name, c in zip(names, coefs):
    print(f"{name} = ({', '.join(f'{v:.4f}' for v in c)})")


if __name__ == "__main__":
  app.run(main)
