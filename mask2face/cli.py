"""What the command-line tools print for their user, kept apart from the logs; how they refuse.

absl logging goes to stderr. What a command produces for its user (a summary, a table, one
command per line for a cluster scheduler) goes to stdout through `emit`, so it can be read,
redirected or piped without the logs in between.

A command that cannot do what was asked (a bad argument, an output already in the way, nothing
to work on, nothing written) raises `UserError`; `one_line_errors` turns it into one line on
stderr and exit status 1, with no traceback. `refuse_existing` is the rule every command
follows for its outputs: what exists is replaced only with `--overwrite`.
"""

import functools
import os
import sys
from collections.abc import Callable, Iterable
from typing import TextIO


class UserError(ValueError):
  """A command cannot do what was asked; the message is the whole story, in one line."""


def emit(*lines: str, file: TextIO | None = None) -> None:
  """Writes each line to `file` (default: the current stdout) and flushes."""
  out = file if file is not None else sys.stdout
  for line in lines:
    out.write(f"{line}\n")
  out.flush()


def refuse_existing(paths: Iterable[str | os.PathLike], *, overwrite: bool) -> None:
  """Raises `UserError` naming the first of `paths` that exists, unless `overwrite`.

  A dangling symlink counts as existing: writing through it would create its target.
  """
  existing = [str(p) for p in paths if os.path.lexists(p)]
  if existing and not overwrite:
    more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
    raise UserError(f"{existing[0]}{more} already exists: pass --overwrite to replace it")


def one_line_errors(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """Wraps an `app.run` main: a `UserError` ends the program with its message, exit status 1."""

  @functools.wraps(main)
  def wrapped(argv):
    try:
      return main(argv)
    except UserError as e:
      sys.exit(f"{_program()}: error: {e}")

  return wrapped


def _program() -> str:
  """`mask2face.export` for `python -m mask2face.export`, else the script's file name."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  if spec is not None and spec.name:
    return spec.name
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "mask2face"
