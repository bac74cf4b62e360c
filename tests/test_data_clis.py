"""End-to-end tests of the pair export and preview CLIs on a tiny folder with a bad file."""

import os
import pathlib
import subprocess
import sys
import types

import cv2
import numpy as np
import pytest
from PIL import Image

from mask2face.data import export_pairs, pairs, preview, sources

SIZE = 32
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_folder(shared_data, tmp_path_factory):
  """Three LFW faces (symlinked), a corrupt file and an image without a face."""
  root = tmp_path_factory.mktemp("tiny")
  lfw = shared_data / "lfw_gray"
  people = sorted(p for p in lfw.iterdir() if p.is_dir())[:3]
  for person in people:
    (root / person.name).mkdir()
    photo = sorted(person.glob("*.jpg"))[0]
    (root / person.name / photo.name).symlink_to(photo)
  (root / "Zz_Broken").mkdir()
  (root / "Zz_Broken" / "Zz_Broken_0001.jpg").write_bytes(b"\xff\xd8 truncated")
  (root / "Zz_Blank").mkdir()
  cv2.imwrite(str(root / "Zz_Blank" / "Zz_Blank_0001.png"), np.full((100, 100, 3), 90, np.uint8))
  return root


def _run(module, *args, cwd=REPO_ROOT, env=None):
  env = env or dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  result = subprocess.run(
    [sys.executable, "-m", module, *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def _read(path):
  return np.asarray(Image.open(path))


def test_export_writes_pairs_and_reports_bad_files(tiny_folder, tmp_path):
  out = tmp_path / "pairs"
  stdout = _run(
    "mask2face.data.export_pairs",
    f"--source={tiny_folder}",
    "--num=10",
    f"--out={out}",
    f"--size={SIZE}",
  )
  names = {d: sorted(os.listdir(out / d)) for d in ("inputs", "outputs", "masks")}
  assert len(names["inputs"]) == 3 and names["inputs"] == names["outputs"] == names["masks"]
  assert "wrote 3 pairs" in stdout
  assert "unreadable" in stdout and "Zz_Broken_0001.jpg" in stdout
  assert "no_face" in stdout and "Zz_Blank_0001.png" in stdout
  for name in names["inputs"]:
    masked, clean = _read(out / "inputs" / name), _read(out / "outputs" / name)
    mask = _read(out / "masks" / name)
    assert masked.shape == clean.shape == (SIZE, SIZE, 3) and mask.shape == (SIZE, SIZE)
    assert set(np.unique(mask)) <= {0, 255} and (mask > 0).mean() > 0.05
    # Away from the mask's edge the two images are the same pixels: one crop for both.
    near = cv2.dilate((mask > 0).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    np.testing.assert_array_equal(masked[~near], clean[~near])
    assert np.abs(masked[mask > 0].astype(int) - clean[mask > 0]).mean() > 5
  assert not [p for p in out.rglob(".*")]  # No temp files left behind.


def test_export_stops_at_num(tiny_folder, tmp_path):
  out = tmp_path / "two"
  options = pairs.PairOptions(image_size=24)
  tally = export_pairs.write_pairs(sources.get_source(str(tiny_folder)), options, out, num=2)
  assert tally.counts["ok"] == 2 and len(os.listdir(out / "inputs")) == 2


def test_export_takes_settings_from_a_config_by_path(tiny_folder, tmp_path, package_only_env):
  # From a folder where `configs` cannot be imported: the config loads by its path, and its
  # `config.data` sets the crop size (runlocal: 64 px) where no flag is given.
  out = tmp_path / "pairs"
  config = f"{REPO_ROOT / 'configs' / 'unet.py'}:runlocal"
  args = [f"--config={config}", f"--source={tiny_folder}", "--num=1", f"--out={out}"]
  stdout = _run("mask2face.data.export_pairs", *args, cwd=tmp_path, env=package_only_env)
  assert "wrote 1 pairs" in stdout
  (name,) = os.listdir(out / "inputs")
  assert _read(out / "inputs" / name).shape == (64, 64, 3)


def test_pair_options_from_flags_and_config():
  class Flags:
    """The two things `options_from_flags` reads: `f.config` and `f[name].value/.present`."""

    def __init__(self, config="", **given):
      self.config = config
      defaults = pairs.PairOptions()
      self._flags = {
        name: types.SimpleNamespace(
          value=given.get(name, getattr(defaults, field)), present=int(name in given)
        )
        for name, field in export_pairs.OPTION_FLAGS.items()
      }

    def __getitem__(self, name):
      return self._flags[name]

  assert export_pairs.options_from_flags(Flags()) == pairs.PairOptions()
  assert export_pairs.options_from_flags(Flags(size=48)).image_size == 48
  config = f"{REPO_ROOT / 'configs' / 'unet.py'}:runlocal"
  from_config = export_pairs.options_from_flags(Flags(config, margin=0.5))
  assert (from_config.image_size, from_config.margin) == (64, 0.5)  # The flag given wins.
  assert export_pairs.options_from_flags(Flags(config, size=48)).image_size == 48


def test_preview_writes_grid(tiny_folder, tmp_path):
  out = tmp_path / "grid.png"
  stdout = _run(
    "mask2face.data.preview",
    f"--source={tiny_folder}",
    f"--out={out}",
    "--num=16",
    f"--size={SIZE}",
  )
  grid = _read(out)
  # Three examples (the other two files are skipped), two per row.
  expected = preview.make_grid([{k: np.zeros(s) for k, s in _shapes().items()}] * 3)
  assert grid.shape == expected.shape and grid.dtype == np.uint8
  assert "wrote 3 examples" in stdout and "skipped 2 file(s)" in stdout
  # The mask column is black and white; the face columns are not blank.
  assert grid.std() > 20


def _shapes():
  return {"masked": (SIZE, SIZE, 3), "clean": (SIZE, SIZE, 3), "mask": (SIZE, SIZE, 1)}


def test_make_grid_layout():
  pairs = [
    {
      "masked": np.full((8, 8, 3), 0.5, np.float32),
      "clean": np.ones((8, 8, 3), np.float32),
      "mask": np.zeros((8, 8, 1), np.float32),
    }
  ] * 5
  grid = preview.make_grid(pairs, columns=2, gap=2)
  assert grid.shape == (3 * (8 + 2) + 2, 2 * (3 * 8 + 2 * 2 + 2 * 2) + 2, 3)
  assert grid[2, 2, 0] == 128 and grid[2, 2 + 8 + 2, 0] == 255 and grid[2, 2 + 2 * 10, 0] == 0
  with pytest.raises(ValueError, match="no examples"):
    preview.make_grid([])
