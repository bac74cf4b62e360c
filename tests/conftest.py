"""Shared test fixtures: where the real face data lives, the two faces shipped in wheels, and a
subprocess environment without the checkout root on the path.

Tests that need `../shared/data` find it through `MASK2FACE_SHARED_DATA` (set by `.ci/run`),
falling back to `../shared/data` beside the checkout, and skip with a clear reason when it
is absent (a user's fresh clone does not have it).

Compilation is most of a tiny model's test, so, before jax is first imported: XLA's cheaper
CPU pipeline (about 20% less compile time, the same functions; subprocess runs get it through
`tiny_run.environment`), and JAX's persistent compilation cache in a temporary folder shared
by the test processes (the suite builds the same tiny steps many times: measured 73 s -> 52 s
on two checkpoint tests). A caller's own settings win.
"""

import os
import pathlib
import tempfile

os.environ.setdefault(
  "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  str(pathlib.Path(tempfile.gettempdir()) / f"mask2face-tests-xla-{os.getuid()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

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


@pytest.fixture(scope="session")
def package_only_env(tmp_path_factory) -> dict[str, str]:
  """A subprocess environment that imports this checkout's `mask2face` but not its `configs/`.

  As for an installed package run from another folder: `mask2face` comes from a folder that
  holds only a link to the package, and the checkout root is left off PYTHONPATH.
  """
  site = tmp_path_factory.mktemp("site")
  (site / "mask2face").symlink_to(REPO_ROOT / "mask2face", target_is_directory=True)
  kept = [
    p
    for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if p and pathlib.Path(p).resolve() != REPO_ROOT
  ]
  return dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), *kept]))
