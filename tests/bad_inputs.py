"""A reusable folder of awkward image files, for tests of anything that reads face photos.

`make_bad_inputs(directory, face_image)` writes one file per case and returns their paths;
`EXPECTED` says what a landmarking job should make of each (`unreadable`, `face`, `no_face`).
Loaders should accept the `face` and `no_face` files and reject the `unreadable` ones with an
`ImageError` naming the file.
"""

import io
import pathlib

import numpy as np
from PIL import Image

EXPECTED = {
  "corrupt": "unreadable",  # JPEG markers followed by random bytes.
  "truncated": "unreadable",  # The first half of a real JPEG.
  "empty": "unreadable",  # 0 bytes.
  "text": "unreadable",  # A text file named .jpg.
  "tiny": "unreadable",  # 1x1 pixel.
  "gray": "face",  # 8-bit grayscale PNG.
  "rgba": "face",  # RGBA PNG with a partly transparent background.
  "png16": "face",  # 16-bit grayscale PNG.
  "exif_rotated": "face",  # Stored sideways, EXIF orientation 6 ("rotate 90 CW to view").
  "huge": "face",  # 8000x8000 solid colour with the face pasted in, enlarged.
  "no_face": "no_face",  # A smooth colour gradient.
}

HUGE_SIDE = 8000


def _jpeg_bytes(image: np.ndarray, **kwargs) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, "JPEG", quality=90, **kwargs)
  return buf.getvalue()


def make_bad_inputs(directory, face_image: np.ndarray) -> dict[str, pathlib.Path]:
  """Writes every case of `EXPECTED` into `directory`; returns {case: path}.

  Args:
    directory: an existing or new folder (a test's tmp_path).
    face_image: uint8 RGB photo with one clear frontal face (e.g. the grace_hopper fixture).
  """
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  face = np.asarray(face_image, dtype=np.uint8)
  rng = np.random.default_rng(0)
  paths = {}

  def write(name, data: bytes):
    paths[name.partition(".")[0]] = path = directory / name
    path.write_bytes(data)

  write("corrupt.jpg", b"\xff\xd8\xff\xe0" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
  full = _jpeg_bytes(face)
  write("truncated.jpg", full[: len(full) // 2])
  write("empty.jpg", b"")
  write("text.jpg", b"This is not an image, just text with a .jpg name.\n")

  buf = io.BytesIO()
  Image.new("RGB", (1, 1), (200, 150, 120)).save(buf, "PNG")
  write("tiny.png", buf.getvalue())

  gray = np.asarray(Image.fromarray(face).convert("L"))
  buf = io.BytesIO()
  Image.fromarray(gray).save(buf, "PNG")
  write("gray.png", buf.getvalue())

  alpha = np.full(face.shape[:2], 255, np.uint8)
  alpha[: face.shape[0] // 8] = 0  # A transparent band: its RGB must still come through.
  buf = io.BytesIO()
  Image.fromarray(np.dstack([face, alpha]), "RGBA").save(buf, "PNG")
  write("rgba.png", buf.getvalue())

  buf = io.BytesIO()
  Image.fromarray(gray.astype(np.uint16) * 257).save(buf, "PNG")
  write("png16.png", buf.getvalue())

  # Orientation 6 = the viewer rotates 90 degrees clockwise, so store it 90 degrees
  # counter-clockwise (PIL's ROTATE_90).
  exif = Image.Exif()
  exif[0x0112] = 6
  sideways = np.asarray(Image.fromarray(face).transpose(Image.Transpose.ROTATE_90))
  write("exif_rotated.jpg", _jpeg_bytes(sideways, exif=exif.tobytes()))

  # Enlarged so the face survives detection's downscale to 1024 px (~1/8) at a usable size.
  huge = Image.new("RGB", (HUGE_SIDE, HUGE_SIDE), (90, 140, 200))
  scale = 2000 / max(face.shape[:2])
  enlarged = Image.fromarray(face).resize(
    (round(face.shape[1] * scale), round(face.shape[0] * scale)), Image.Resampling.BILINEAR
  )
  huge.paste(enlarged, (3000, 2500))
  buf = io.BytesIO()
  huge.save(buf, "JPEG", quality=85)
  write("huge.jpg", buf.getvalue())

  y, x = np.mgrid[0:240, 0:320]
  gradient = np.stack([x * 255 // 319, y * 255 // 239, np.full_like(x, 128)], -1).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(gradient).save(buf, "PNG")
  write("no_face.png", buf.getvalue())
  assert set(paths) == set(EXPECTED), sorted(paths)
  return paths
