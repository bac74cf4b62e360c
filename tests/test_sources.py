"""Tests for mask2face.data.sources: folders, identity patterns, TFDS lfw/celeb_a offline."""

import pathlib
import pickle
import re
import socket
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from mask2face.data import sources
from mask2face.data.images import ImageError


@pytest.fixture
def no_network(monkeypatch):
  """Makes every socket connect fail, and records the attempts so a test can assert none."""
  attempts = []

  def refuse(self, address):
    attempts.append(address)
    raise OSError(f"network disabled in tests (connect to {address})")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket.socket, "connect_ex", refuse)
  return attempts


def _write(path, size=(24, 20), mode="RGB", fmt=None, seed=0):
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  Image.fromarray(pixels).convert(mode).save(path, format=fmt)


def test_folder_source_mixed_extensions_and_nested(tmp_path):
  _write(tmp_path / "Ann" / "a1.jpg")
  _write(tmp_path / "Ann" / "a2.JPEG", fmt="JPEG")
  _write(tmp_path / "Bob" / "b1.png", mode="L")
  _write(tmp_path / "deep" / "er" / "Cid" / "c1.WebP", fmt="WEBP")
  _write(tmp_path / "Dee" / "d1.bmp", mode="RGBA", fmt="PNG")  # A PNG named .bmp still loads.
  _write(tmp_path / "loose.jpg")
  (tmp_path / "Ann" / "notes.txt").write_text("not an image")
  _write(tmp_path / ".thumbs" / "t.jpg")  # Hidden folders are skipped.
  _write(tmp_path / "Bob" / "._b1.png")  # So are macOS resource-fork files.

  source = sources.get_source(str(tmp_path))
  by_key = {r.key: r.identity for r in source.records}
  assert by_key == {
    "Ann/a1.jpg": "Ann",
    "Ann/a2.JPEG": "Ann",
    "Bob/b1.png": "Bob",
    "Dee/d1.bmp": "Dee",
    "deep/er/Cid/c1.WebP": "Cid",
    "loose.jpg": "loose.jpg",  # No folder names it: its own identity.
  }
  assert len(source) == 6
  assert [r.key for r in source.records] == sorted(by_key)
  for record in source.records:
    image = source.load(record.key)
    assert image.dtype == np.uint8 and image.shape == (20, 24, 3)
  with pytest.raises(KeyError, match="not an image"):
    source.load("../outside.jpg")


def test_folder_source_pickle_round_trip(tmp_path):
  _write(tmp_path / "Ann" / "a.png", seed=3)
  source = sources.get_source(str(tmp_path))
  source.load("Ann/a.png")  # Fills the lazy key set, which must not break pickling.
  copy = pickle.loads(pickle.dumps(source))
  assert copy.records == source.records and copy.name == source.name
  np.testing.assert_array_equal(copy.load("Ann/a.png"), source.load("Ann/a.png"))


def test_folder_source_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    sources.get_source(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no images found under .*empty"):
    sources.get_source(str(tmp_path / "empty"))
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "x.jpg").write_bytes(b"not a jpeg")
  source = sources.get_source(str(bad))
  with pytest.raises(ImageError, match="x.jpg"):
    source.load("x.jpg")
  with pytest.raises(ValueError, match="no group"):
    sources.get_source(str(bad), identity_pattern=r"\d+")
  with pytest.raises(ValueError, match="matched none"):
    sources.get_source(str(bad), identity_pattern=r"^(\d+)_")
  with pytest.raises(ValueError, match="unknown TFDS face source"):
    sources.get_source("tfds:mnist")


def test_identity_pattern_on_faces_color(shared_data):
  folder = shared_data / "faces_color"
  source = sources.get_source(str(folder), identity_pattern="maskdetect")
  names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))
  assert sorted(r.key for r in source.records) == names
  identity = {r.key: r.identity for r in source.records}
  # Names like 0_0_anhu_0004.jpg share the person `anhu`; the rest are their own identity.
  named = [n for n in names if re.fullmatch(r"\d+_\d+_.+_\d+\.jpg", n)]
  assert named, "faces_color should hold X_Y_<name>_NNNN.jpg files"
  for name in named:
    assert identity[name] == name.split("_", 2)[2].rsplit("_", 1)[0]
  for name in set(names) - set(named):
    assert identity[name] == name
  assert sum(1 for n in named if identity[n] == "anhu") > 10
  # A custom regex gives the same result as the preset.
  custom = sources.get_source(str(folder), identity_pattern=r"^\d+_\d+_(.+)_\d+\.jpg$")
  assert custom.records == source.records


def test_utkface_preset_one_identity_per_file(shared_data):
  folder = shared_data / "utkface"
  source = sources.get_source(str(folder), identity_pattern="utkface")
  assert len(source) == len(list(folder.glob("*.jpg.chip.jpg"))) > 8000
  assert all(r.identity == r.key.removesuffix(".jpg.chip.jpg") for r in source.records)
  assert len({r.identity for r in source.records}) == len(source)
  # The same as no pattern (files in the root are their own identities), only explicit.
  assert [r.key for r in sources.get_source(str(folder)).records] == [r.key for r in source.records]


def _lfw_archive(lfw_gray: pathlib.Path, out: pathlib.Path, num_people: int) -> dict[str, int]:
  """Writes `lfw.tgz` in LFW's own layout (`lfw/<Person>/<Person>_NNNN.jpg`)."""
  people = sorted(p for p in lfw_gray.iterdir() if p.is_dir())[:num_people]
  counts = {}
  out.mkdir(parents=True, exist_ok=True)
  with tarfile.open(out / "lfw.tgz", "w:gz") as tar:
    for person in people:
      files = sorted(person.glob("*.jpg"))
      counts[person.name] = len(files)
      for f in files:
        tar.add(f, arcname=f"lfw/{person.name}/{f.name}")
  return counts


def test_tfds_lfw_offline_end_to_end(shared_data, tmp_path, no_network):
  manual_dir = tmp_path / "manual"
  counts = _lfw_archive(shared_data / "lfw_gray", manual_dir, num_people=30)
  data_dir = tmp_path / "tfds"

  source = sources.get_source("tfds:lfw", tfds_data_dir=str(data_dir), manual_dir=str(manual_dir))
  assert no_network == [], f"preparing from a local archive tried the network: {no_network}"
  assert list(data_dir.glob("lfw/*/lfw-train.array_record*")), "not prepared as array_record"
  assert source.name == "tfds:lfw" and len(source) == sum(counts.values())
  found = {}
  for record in source.records:
    found[record.identity] = found.get(record.identity, 0) + 1
    assert record.key.endswith("/" + record.identity) and record.key.startswith("train/")
  assert found == counts
  assert len({r.key for r in source.records}) == len(source)

  # Images load as RGB (LFW's grayscale copy), the same image from a pickled copy.
  key = source.records[7].key
  image = source.load(key)
  assert image.shape == (250, 250, 3) and image.dtype == np.uint8
  assert np.array_equal(image[..., 0], image[..., 2]) and image.std() > 10
  copy = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(copy.load(key), image)
  with pytest.raises(KeyError):
    source.load("train/notanumber/x")
  with pytest.raises(KeyError):
    source.load("nosuchsplit/0/x")

  # Reopening reuses the prepared data: same records, in the same order, still offline.
  again = sources.get_source("tfds:lfw", tfds_data_dir=str(data_dir))
  assert again.records == source.records
  assert no_network == []


@pytest.mark.parametrize(
  "dataset,expected_files",
  [
    ("lfw", ["lfw.tgz"]),
    ("celeb_a", ["img_align_celeba.zip", "list_eval_partition.txt", "list_attr_celeba.txt"]),
  ],
)
def test_tfds_offline_fails_fast_with_instructions(tmp_path, no_network, dataset, expected_files):
  start = time.monotonic()
  with pytest.raises(ConnectionError) as info:
    sources.get_source(f"tfds:{dataset}", tfds_data_dir=str(tmp_path / "tfds"))
  elapsed = time.monotonic() - start
  assert elapsed < 10, f"the offline error took {elapsed:.1f} s"
  message = str(info.value)
  assert "--config.data.manual_dir" in message and "--config.data.source" in message
  for name in expected_files:
    assert name in message
  assert not list((tmp_path / "tfds").glob(f"{dataset}/*/*.array_record*"))


def test_celeb_a_manual_dir_is_wired(tmp_path, no_network):
  # One of celeb_a's five files in manual_dir: the error lists only the four still missing,
  # which shows the builder's registered file names are looked up in manual_dir.
  manual_dir = tmp_path / "manual"
  manual_dir.mkdir()
  (manual_dir / "identity_CelebA.txt").write_text("000001.jpg 2880\n")
  with pytest.raises(ConnectionError) as info:
    sources.get_source(
      "tfds:celeb_a", tfds_data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir)
    )
  message = str(info.value)
  assert "identity_CelebA.txt" not in message
  assert "img_align_celeba.zip" in message and "list_landmarks_align_celeba.txt" in message
  assert str(manual_dir) in message
  with pytest.raises(FileNotFoundError, match="not prepared"):
    sources.TfdsSource("celeb_a", data_dir=str(tmp_path / "tfds"))


def test_tfds_identity_labels():
  # LFW's label is a text feature (bytes from array_record); celeb_a's an int64 identity number.
  assert sources._tfds_identity("lfw", {"label": b"Ann_Lee"}) == "Ann_Lee"
  assert sources._tfds_identity("lfw", {"label": "Ann_Lee"}) == "Ann_Lee"
  example = {"identity": {"Identity_No": np.int64(2880)}}
  assert sources._tfds_identity("celeb_a", example) == "2880"
