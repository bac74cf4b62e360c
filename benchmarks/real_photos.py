"""Real masked photos through a model: dlib's HOG face count before and after, and a figure.

dlib's HOG detector is trained on unmasked faces, so it misses most masked ones: finding a
face in more outputs than inputs says the unmasked faces look more like faces. Each photo is
detected as the issue that asked for this measure says: longer side at most 1024 px, upsample
1. A photo with no output (no face found by the unmasker) counts as the unchanged original.

  # The bundled model on ../shared/data/masked_real (offline: give the detector file):
  python benchmarks/real_photos.py --output=/tmp/m2f_real \
    --detector_model=../shared/data/models/face_detection_short_range.tflite \
    --figure=docs/before_after.png
  # Any trained run instead: --checkpoint=WORKDIR

Writes `<output>/<photo>` (as `mask2face.predict` does), `<output>/report.json` and
`<output>/hog_faces.json`, prints one line per photo and the totals, and, with --figure, a
before/after PNG of --figure_photos (under 400 KB, for the README).
"""

import json
import os
import pathlib
import sys

from absl import app, flags, logging

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from mask2face import atomic, bundled, predict  # noqa: E402
from mask2face.data import dlib_faces, images  # noqa: E402

SHARED = pathlib.Path(os.environ.get("MASK2FACE_SHARED_DATA") or REPO_ROOT.parent / "shared/data")
FIGURE_MAX_BYTES = 400 * 1024

flags.DEFINE_string("input", str(SHARED / "masked_real"), "A folder of masked photos.")
flags.DEFINE_string("checkpoint", bundled.PREFIX + bundled.DEFAULT, "Workdir or bundled:NAME.")
flags.DEFINE_string("output", None, "Output folder (replaced outputs: it is a scratch folder).")
flags.DEFINE_string("detector_model", "", "MediaPipe face detector .tflite ('' = cache).")
flags.DEFINE_string("figure", "", "Write a before/after PNG here ('' = none).")
flags.DEFINE_list("figure_photos", ["02.jpg", "08.jpg", "13.jpg", "24.jpg"], "Photos shown.")
flags.DEFINE_integer("figure_height", 220, "Height of each photo in the figure, pixels.")
flags.mark_flags_as_required(["output"])


def hog_faces(image) -> int:
  """Faces dlib's HOG detector finds (longer side at most 1024 px, upsample 1)."""
  view = dlib_faces.View.of(image, max_side=1024)
  return len(dlib_faces.detect(view, detector="hog", upsample=1))


def count_faces(reports: list[dict]) -> list[dict]:
  """Per photo: HOG faces in the original and in what the user gets back."""
  rows = []
  for report in reports:
    row = {"photo": pathlib.Path(report["input"]).name, "written": bool(report["output"])}
    try:
      original = images.load_image(report["input"])
    except images.ImageError as e:
      logging.error("Skipped %s", e)
      continue
    row["before"] = hog_faces(original)
    row["after"] = (
      hog_faces(images.load_image(report["output"])) if row["written"] else row["before"]
    )
    row["faces_unmasked"] = report["faces_unmasked"]
    rows.append(row)
  return rows


def _resize_to_height(image, height: int):
  from PIL import Image

  width = max(1, round(image.shape[1] * height / image.shape[0]))
  return Image.fromarray(image).resize((width, height), Image.LANCZOS)


def before_after_figure(pairs, path: pathlib.Path, height: int) -> int:
  """Rows of (before | after) photos with a white gutter, saved as PNG; returns its bytes."""
  from PIL import Image

  gutter = 6
  rows = [(_resize_to_height(a, height), _resize_to_height(b, height)) for a, b in pairs]
  width = max(a.width + b.width for a, b in rows) + 3 * gutter
  canvas = Image.new("RGB", (width, len(rows) * (height + gutter) + gutter), "white")
  for i, (a, b) in enumerate(rows):
    y = gutter + i * (height + gutter)
    canvas.paste(a, (gutter, y))
    canvas.paste(b, (2 * gutter + a.width, y))
  # Fewer colours until it fits the README's budget (photos compress poorly as PNG).
  data = _png_bytes(canvas)
  for colours in (256, 128, 64):
    if len(data) <= FIGURE_MAX_BYTES:
      break
    data = _png_bytes(canvas.quantize(colours, method=Image.Quantize.MEDIANCUT))
  atomic.write_bytes(path, data)
  return len(data)


def _png_bytes(image) -> bytes:
  import io

  buffer = io.BytesIO()
  image.save(buffer, format="PNG", optimize=True)
  return buffer.getvalue()


def main(argv):
  del argv
  f = flags.FLAGS
  output = pathlib.Path(f.output)
  reports = predict.run(
    f.checkpoint, f.input, output, detector_model=f.detector_model, overwrite=True
  )
  rows = count_faces(reports)
  for row in rows:
    print(
      f"{row['photo']:>10}  HOG faces before {row['before']}  after {row['after']}  "
      f"unmasked {row['faces_unmasked']}{'' if row['written'] else '  (no output)'}"
    )
  totals = {
    "photos": len(rows),
    "written": sum(r["written"] for r in rows),
    "with_face_before": sum(r["before"] > 0 for r in rows),
    "with_face_after": sum(r["after"] > 0 for r in rows),
    "checkpoint": f.checkpoint,
    "input": f.input,
  }
  print(json.dumps(totals))
  atomic.write_json(output / "hog_faces.json", {"totals": totals, "photos": rows}, indent=1)
  if f.figure:
    by_name = {pathlib.Path(r["input"]).name: r for r in reports}
    pairs = []
    for name in f.figure_photos:
      report = by_name.get(name)
      if report is None or not report["output"]:
        raise app.UsageError(f"{name}: not unmasked in this run; choose another --figure_photos")
      pairs.append((images.load_image(report["input"]), images.load_image(report["output"])))
    size = before_after_figure(pairs, pathlib.Path(f.figure), f.figure_height)
    print(f"Figure: {f.figure} ({size / 1024:.0f} KB)")


if __name__ == "__main__":
  app.run(main)
