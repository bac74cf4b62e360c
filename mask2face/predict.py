"""Unmasking real photos: find every face, crop it as in training, predict, blend it back.

  python -m mask2face.predict --input=PHOTO_OR_DIR --output=DIR   # the bundled model
  python -m mask2face.predict --checkpoint=WORKDIR --input=PHOTO_OR_DIR --output=DIR

The work on each photo is `mask2face.unmasker.Unmasker`'s; this module is the command line
over photos and folders: outputs planned before anything is read, one report line per photo.

Refused before any photo is read (one line, exit status 1): a checkpoint that does not fit its
config's model, a face detector model that cannot be found or downloaded, an empty input, an
output folder equal to the input's, outputs or a `report.json` already there (unless
--overwrite). A bad file costs its own report line, not
the job; a job that writes no photo at all ends with exit status 1.
"""

from __future__ import annotations

import pathlib
import time

import numpy as np
from absl import app, flags, logging

from mask2face import atomic, bundled, cli, detect
from mask2face.data import images
from mask2face.unmasker import Unmasker, load_run

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
REPORT_FILE = "report.json"


# --- Files --------------------------------------------------------------------------------


def _write_like(path: pathlib.Path, image: np.ndarray, source: pathlib.Path) -> list[str]:
  """Saves `image` atomically in the format of `source` (alpha reattached when it had one).

  Returns:
    What the output could not keep of `source` (frames, bit depth), one note each.
  """
  from PIL import Image, ImageOps

  notes = []
  with Image.open(source) as original:
    fmt = original.format or "PNG"
    alpha = None
    if "A" in original.getbands() or "transparency" in original.info:
      alpha = ImageOps.exif_transpose(original.convert("RGBA")).getchannel("A")
    frames = getattr(original, "n_frames", 1)
    if frames > 1:
      notes.append(f"animated ({frames} frames): only the first frame was unmasked and written")
    if _bits_per_channel(original, source) > 8:
      notes.append("more than 8 bits per channel: written as 8-bit")
  out = Image.fromarray(image)
  if alpha is not None and alpha.size == out.size and fmt in ("PNG", "WEBP", "TIFF"):
    out.putalpha(alpha)
  options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
  atomic.write_image(path, out, format=fmt, **options)
  return notes


def _bits_per_channel(image, source: pathlib.Path) -> int:
  """8 for usual photos; 16 for 16-bit PNG and TIFF (Pillow opens 48-bit PNGs as 8-bit RGB)."""
  if image.format == "PNG":
    with open(source, "rb") as f:
      header = f.read(25)  # Signature, IHDR length and tag, width, height, then bit depth.
    if len(header) == 25 and header[12:16] == b"IHDR":
      return header[24]
  return 16 if image.mode.startswith("I;16") or image.mode in ("I", "F") else 8


def list_inputs(input_path: pathlib.Path) -> list[pathlib.Path]:
  """The photo itself, or every file under a folder (non-images and dangling links are
  reported, not hidden)."""
  if input_path.is_file():
    return [input_path]
  if input_path.is_dir():
    return sorted(
      p
      for p in input_path.rglob("*")
      if (p.is_file() or (p.is_symlink() and not p.exists())) and not p.name.startswith(".")
    )
  raise cli.UserError(f"{input_path}: no such file or folder")


def plan_outputs(input_path, output_dir, *, overwrite: bool = False):
  """[(photo, its output path)]: checked before any photo is read.

  Raises:
    cli.UserError: no input, nothing to read, the output folder is the input's (outputs
      would replace the photos), or outputs already exist and `overwrite` is False.
  """
  input_path = pathlib.Path(input_path).expanduser().resolve()
  output_dir = pathlib.Path(output_dir).expanduser().resolve()
  paths = list_inputs(input_path)
  # An output folder inside the input folder must not feed earlier results back in.
  if output_dir != input_path and output_dir.is_relative_to(input_path):
    paths = [p for p in paths if not p.is_relative_to(output_dir)]
  base = input_path if input_path.is_dir() else input_path.parent
  if output_dir == base:
    raise cli.UserError(
      f"--output {output_dir} is the folder of the input photos: outputs keep their names and "
      "would replace them; choose another folder"
    )
  if not paths:
    raise cli.UserError(f"{input_path}: no files to unmask")
  plan = [(p, output_dir / p.relative_to(base)) for p in paths]
  cli.refuse_existing([out for _, out in plan], overwrite=overwrite)
  return plan


def unmask_files(
  unmasker: Unmasker, input_path, output_dir, *, progress: bool = True, overwrite: bool = False
) -> list:
  """Unmasks one photo or a folder of them into `output_dir`; returns per-file reports.

  Each report: {'input', 'output', 'faces_found', 'faces_unmasked', 'skipped', 'notes'} where
  'skipped' names why no output was written ('' when one was) or why faces were skipped, and
  'notes' what the output could not keep (frames, bit depth). Bad files are counted and
  reported (one log line each), never fatal. Inputs are never overwritten; other existing
  outputs only with `overwrite` (`plan_outputs` refuses first).
  """
  from tqdm import tqdm

  reports = []
  plan = plan_outputs(input_path, output_dir, overwrite=overwrite)
  for path, out_path in tqdm(plan, desc="photos", unit="photo", disable=not progress):
    report = {"input": str(path), "output": "", "faces_found": 0, "faces_unmasked": 0}
    report["skipped"], report["notes"] = "", []
    reports.append(report)
    if path.suffix.lower() in VIDEO_SUFFIXES:
      report["skipped"] = f"unreadable: {path}: a video; unmask its frames as photos"
      logging.error("Skipped %s", report["skipped"])
      continue
    try:
      image = images.load_image(path)
    except images.ImageError as e:
      report["skipped"] = f"unreadable: {e}"
      logging.error("Skipped %s", report["skipped"])
      continue
    try:
      unmasked, faces = unmasker.unmask(image)
    except Exception as e:  # One bad photo must not end a long folder job, nor bury the log.
      report["skipped"] = f"error: {type(e).__name__}: {e}"
      logging.error("Failed on %s: %s: %s", path, type(e).__name__, e)
      continue
    report["faces_found"] = len(faces)
    report["faces_unmasked"] = sum(f.unmasked for f in faces)
    reasons = sorted({f.skipped for f in faces if f.skipped})
    if not faces:
      report["skipped"] = "no face found"
      continue
    if reasons:
      report["skipped"] = "; ".join(reasons)
    try:
      report["notes"] = _write_like(out_path, unmasked, path)
    except OSError as e:
      report["skipped"] = f"cannot write {out_path}: {e}"
      logging.error("%s", report["skipped"])
      continue
    for note in report["notes"]:
      logging.warning("%s: %s", path, note)
    report["output"] = str(out_path)
  return reports


def format_reports(reports: list[dict]) -> str:
  """A few lines for the CLI: counts over the per-file reports, then every skipped file."""
  written = sum(bool(r["output"]) for r in reports)
  found = sum(r["faces_found"] for r in reports)
  unmasked = sum(r["faces_unmasked"] for r in reports)
  lines = [
    f"{len(reports)} files: {written} written, {found} faces found, {unmasked} unmasked, "
    f"{len(reports) - written} without output"
  ]
  lines += [f"  {r['input']}: {r['skipped']}" for r in reports if r["skipped"]]
  lines += [f"  {r['input']}: {note}" for r in reports for note in r.get("notes", ())]
  return "\n".join(lines)


def failure(reports: list[dict]) -> str | None:
  """Why the job did not do what was asked (no photo written), or None when it did."""
  if any(r["output"] for r in reports):
    return None
  found = sum(r["faces_found"] for r in reports)
  why = "no face found in any" if not found else "no face could be unmasked in any"
  return f"nothing written: {why} of the {len(reports)} file(s) (see the list above)"


def run(
  checkpoint,
  input_path,
  output_dir,
  *,
  which: str = "best",
  detector_model: str = "",
  fallbacks=("dlib_cnn", "dlib_hog"),
  batch_size: int = 8,
  overwrite: bool = False,
) -> list[dict]:
  """The CLI's job: unmask `input_path` into `output_dir`, write `report.json` there.

  Raises:
    cli.UserError: before any photo is read (see `plan_outputs`, `check_weights`).
  """
  output_dir = pathlib.Path(output_dir).expanduser()
  plan_outputs(input_path, output_dir, overwrite=overwrite)  # Refusals first, in a second.
  cli.refuse_existing([output_dir / REPORT_FILE], overwrite=overwrite)
  config, model, variables = load_run(checkpoint, which=which)
  with detect.FaceFinder(detector_model or None, fallbacks=fallbacks) as finder:
    try:
      finder.load()  # Offline without the model file: one error now, not one per photo.
    except detect.DetectorError as e:
      raise cli.UserError(str(e)) from e
    unmasker = Unmasker.from_run(config, model, variables, finder=finder, batch_size=batch_size)
    reports = unmask_files(unmasker, input_path, output_dir, overwrite=overwrite)
  atomic.write_json(output_dir / REPORT_FILE, reports, indent=1)
  return reports


def define_flags() -> None:
  """The CLI's flags (defined only when run as a program, so importing this module is free)."""
  flags.DEFINE_string(
    "checkpoint",
    bundled.PREFIX + bundled.DEFAULT,
    "A training workdir (config.json inside), or bundled:NAME for a model in the package.",
  )
  flags.DEFINE_string("input", None, "A photo or a folder of photos.")
  flags.DEFINE_string("output", None, "Output folder (same names and formats).")
  flags.DEFINE_enum("which", "best", ["best", "latest"], "Which checkpoint to use.")
  flags.DEFINE_string(
    "detector_model", "", "MediaPipe face detector .tflite ('' = cache, else download once)."
  )
  flags.DEFINE_list("fallbacks", ["dlib_cnn", "dlib_hog"], "Fallback detectors.")
  flags.DEFINE_integer("batch_size", 8, "Faces per forward pass.")
  flags.DEFINE_bool("overwrite", False, "Replace outputs (and report.json) already in --output.")
  flags.mark_flags_as_required(["input", "output"])


@cli.one_line_errors
def main(argv):
  del argv
  f = flags.FLAGS
  start = time.time()
  reports = run(
    f.checkpoint,
    f.input,
    f.output,
    which=f.which,
    detector_model=f.detector_model,
    fallbacks=f.fallbacks,
    batch_size=f.batch_size,
    overwrite=f.overwrite,
  )
  cli.emit(format_reports(reports))
  cli.emit(f"Report: {pathlib.Path(f.output) / REPORT_FILE} ({time.time() - start:.1f} s)")
  why = failure(reports)
  if why:
    raise cli.UserError(why)


if __name__ == "__main__":
  define_flags()
  app.run(main)
