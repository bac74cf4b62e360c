"""What the command-line tools print for their user, kept apart from the logs.

absl logging goes to stderr. What a command produces for its user (a summary, a table, one
command per line for a cluster scheduler) goes to stdout through `emit`, so it can be read,
redirected or piped without the logs in between.
"""

import sys
from typing import TextIO


def emit(*lines: str, file: TextIO | None = None) -> None:
  """Writes each line to `file` (default: the current stdout) and flushes."""
  out = file if file is not None else sys.stdout
  for line in lines:
    out.write(f"{line}\n")
  out.flush()
