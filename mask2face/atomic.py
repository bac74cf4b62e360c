"""Atomic file writes (a temp file beside the target, flushed, then `os.replace`); JSON reading.

Whoever reads a mask2face file (a resumed run reading its splits, a grid runner looking for
`results.json`, a notebook, another host) sees the old file or the whole new one, never a torn
write; a crash leaves at most a stray `.<name>.*.tmp` file, and never a truncated result.
`read_json` is the reading side: its errors name the file and what it should have been.
Remote paths (`gs://...`, through etils.epath) are written whole from memory: an object store
publishes an object only once its upload completes, which is atomic already.
Files get the permissions of a plain `open()` under the user's umask (0644 under the usual
022), not `tempfile`'s private 0600, so colleagues on a shared machine can read results;
`dir_mode()` is the same for folders made with `tempfile.mkdtemp` (0700 otherwise).
"""

import contextlib
import io
import json
import os
import pathlib
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
  """The process's umask, read without changing it where Linux shows it (/proc/self/status)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  # Elsewhere the only way to read it is to set it: set it back at once, one thread at a time.
  with _UMASK_LOCK:
    mask = os.umask(0o022)
    os.umask(mask)
  return mask


def file_mode() -> int:
  """What `open(path, 'w')` would give a new file: 0o666 less the umask."""
  return 0o666 & ~current_umask()


def dir_mode() -> int:
  """What `os.mkdir` would give a new folder: 0o777 less the umask."""
  return 0o777 & ~current_umask()


@contextlib.contextmanager
def open_for_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
  """Yields a file to write; on success it replaces `path` in one step, on error it vanishes."""
  if _is_remote(path):
    from etils import epath

    buffer = io.BytesIO() if "b" in mode else io.StringIO()
    yield buffer
    with epath.Path(path).open(mode) as f:
      f.write(buffer.getvalue())
    return
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fchmod(f.fileno(), file_mode())  # mkstemp made it 0600.
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    pathlib.Path(tmp).unlink(missing_ok=True)


def _is_remote(path) -> bool:
  return "://" in os.fspath(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  with open_for_write(path, "wb") as f:
    f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
  with open_for_write(path, "w") as f:
    f.write(text)


def write_json(
  path: str | os.PathLike,
  obj: Any,
  *,
  indent: int | None = 2,
  sort_keys: bool = False,
  default: Callable[[Any], Any] | None = None,
) -> None:
  """Writes `obj` as JSON (compact when `indent` is None)."""
  separators = (",", ":") if indent is None else None
  text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=default, separators=separators)
  write_text(path, text + "\n")


def read_json(path: str | os.PathLike, *, what: str = "JSON file") -> Any:
  """Reads a JSON file; errors name the file, `what` it should be and the problem.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: `path` is not valid UTF-8 JSON.
  """
  if _is_remote(path):
    from etils import epath

    path = epath.Path(path)
  else:
    path = pathlib.Path(path)
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: {what} not found") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: {what} is not valid JSON ({e})") from None


def write_image(path: str | os.PathLike, image, *, format: str = "PNG", **options) -> None:
  """Writes a uint8 array or a PIL image in `format` (PIL's names: PNG, JPEG, WEBP, ...)."""
  from PIL import Image

  if not isinstance(image, Image.Image):
    image = Image.fromarray(image)
  with open_for_write(path, "wb") as f:
    image.save(f, format=format, **options)
