"""Loading face photos as uint8 RGB arrays, whatever the file throws at us.

Every loader in mask2face goes through `load_image`, so the quirks of real files are handled
once: EXIF orientation, grayscale, palettes and alpha, 16-bit PNGs, huge photos. Files that
cannot be used raise `ImageError`, whose message names the file and the reason, so long jobs
can count and report them instead of dying.
"""

import io
import os
import pathlib
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Smaller than this is not a photo of a face (1x1 tracking pixels, icons).
MIN_SIDE = 16
_ORIENTATION_TAG = 0x0112

PathOrBytes = str | os.PathLike | bytes | bytearray | memoryview


class ImageError(ValueError):
  """A file that cannot be used as an image; the message names the file and the problem."""


def _describe(path_or_bytes) -> str:
  if isinstance(path_or_bytes, bytes | bytearray | memoryview):
    return f"<{len(path_or_bytes)} bytes>"
  return os.fspath(path_or_bytes)


def _to_uint8(image: Image.Image) -> np.ndarray:
  """Any PIL mode -> uint8 HxWx3 RGB (alpha dropped, 16-bit scaled down)."""
  mode = image.mode
  if mode.startswith("I;16") or mode == "I":
    values = np.asarray(image).astype(np.float64)
    # 16-bit PNGs open as I;16 (or I on some Pillow versions); 8-bit data never comes as "I",
    # so scaling by 65535 is right for both.
    gray = np.clip(np.round(values / 257.0), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if mode == "F":
    values = np.asarray(image, dtype=np.float64)
    # Float images are either in [0, 1] or in [0, 255].
    scale = 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else 1.0
    gray = np.clip(np.round(np.nan_to_num(values) * scale), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")
  if mode != "RGB":
    # RGBA/LA/PA -> RGB drops the alpha channel; L, 1, CMYK, YCbCr, P -> RGB convert colours.
    image = image.convert("RGB")
  return np.asarray(image, dtype=np.uint8)


def load_image(path_or_bytes: PathOrBytes, *, max_side: int | None = None) -> np.ndarray:
  """Reads an image file (or its bytes) as uint8 HxWx3 RGB.

  Args:
    path_or_bytes: a file path, or the encoded file's bytes.
    max_side: if given, images whose longer side exceeds it are downscaled (aspect kept).

  Returns:
    A C-contiguous uint8 array (height, width, 3), EXIF orientation applied.

  Raises:
    ImageError: missing, empty, corrupt, truncated, non-image or too small files.
  """
  name = _describe(path_or_bytes)
  if isinstance(path_or_bytes, bytes | bytearray | memoryview):
    data = bytes(path_or_bytes)
  else:
    path = pathlib.Path(path_or_bytes)
    try:
      data = path.read_bytes()
    except FileNotFoundError:
      raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
      raise ImageError(f"{name}: is a directory, not an image file") from None
    except OSError as e:
      raise ImageError(f"{name}: cannot read file ({e})") from e
  if not data:
    raise ImageError(f"{name}: empty file (0 bytes)")

  try:
    with warnings.catch_warnings():
      # A 8000x8000 photo is legitimate here; only true decompression bombs are refused.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      image = Image.open(io.BytesIO(data))
      if max_side and image.format == "JPEG" and max(image.size) > max_side:
        # JPEG can decode at 1/2, 1/4, 1/8 scale directly: much faster for huge photos.
        image.draft("RGB", (max_side, max_side))
      image.load()
  except UnidentifiedImageError:
    raise ImageError(f"{name}: not an image (unrecognised file format)") from None
  except Image.DecompressionBombError as e:
    raise ImageError(f"{name}: image too large to decode safely ({e})") from None
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    # Pillow reports truncated and corrupt data as OSError ("image file is truncated", ...).
    raise ImageError(f"{name}: corrupt or truncated image data ({e})") from None

  width, height = image.size
  if min(width, height) < MIN_SIDE:
    raise ImageError(
      f"{name}: image too small ({width}x{height}); need at least {MIN_SIDE} px per side"
    )
  try:
    # exif_transpose copies even when there is nothing to do: costly for a 8000x8000 photo.
    if image.getexif().get(_ORIENTATION_TAG, 1) != 1:
      image = ImageOps.exif_transpose(image)
  except Exception as e:  # A broken EXIF block: report it, naming the file.
    raise ImageError(f"{name}: unreadable EXIF orientation ({e})") from None

  if max_side and max(image.size) > max_side:
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
      image = Image.fromarray(_to_uint8(image))
    image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
  return np.ascontiguousarray(_to_uint8(image))
