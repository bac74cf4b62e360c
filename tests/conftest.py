"""Shared test fixtures: where the real face data lives, and the two faces shipped in wheels.

Tests that need `../shared/data` find it through `MASK2FACE_SHARED_DATA` (set by `.ci/run`),
falling back to `../shared/data` beside the checkout, and skip with a clear reason when it
is absent (a user's fresh clone does not have it).
"""

import os
import pathlib

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def shared_data_dir() -> pathlib.Path | None:
  """The real-data folder, or None when this machine does not have it."""
  env = os.environ.get("MASK2FACE_SHARED_DATA")
  path = pathlib.Path(env) if env else REPO_ROOT.parent / "shared" / "data"
  return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  path = shared_data_dir()
  if path is None:
    pytest.skip(
      "real face data not found: set MASK2FACE_SHARED_DATA to the shared data folder "
      "(../shared/data beside the checkout)"
    )
  return path


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
  """skimage's astronaut photo (Eileen Collins), uint8 RGB 512x512."""
  import skimage.data

  return np.asarray(skimage.data.astronaut(), dtype=np.uint8)


@pytest.fixture(scope="session")
def grace_hopper() -> np.ndarray:
  """matplotlib's sample photo of Grace Hopper, uint8 RGB 600x512."""
  import matplotlib.cbook
  from PIL import Image

  with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
    return np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8)
