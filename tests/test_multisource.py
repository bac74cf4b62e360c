"""Several face sources in one run: settings, per-source splits, weighted mixing, restore.

The sampler is checked on its own (proportions, epochs, determinism, hosts); the whole path
on two tiny folders of real faces: LFW people (identity = folder) and UTKFace crops (one
identity per file, the `utkface` preset).
"""

import gc
import hashlib
import pickle

import grain
import numpy as np
import pytest
from absl import flags

from configs import common
from mask2face.data import crop, landmark_cache, mixing, pipeline, prepare, sources, splits

SIZE = 32


def _config(**values):
  config = common.get_config().data
  config.update(values)
  return config


def test_settings_one_source_unchanged_several_split_by_comma():
  # One source: taken as it is, so a regex holding a comma still works.
  one = prepare.source_settings(_config(source="/faces", identity_pattern=r"^(\d{1,3})_"))
  assert one == [prepare.SourceSettings("/faces", r"^(\d{1,3})_", "")]
  two = prepare.source_settings(
    _config(source="/a, /b", identity_pattern="utkface", landmarks_cache="/c1,/c2")
  )
  assert two == [
    prepare.SourceSettings("/a", "utkface", "/c1"),
    prepare.SourceSettings("/b", "utkface", "/c2"),
  ]
  per_source = prepare.source_settings(_config(source="/a,/b", identity_pattern=",maskdetect"))
  assert [s.identity_pattern for s in per_source] == ["", "maskdetect"]
  with pytest.raises(ValueError, match="landmarks_cache.*one per source"):
    prepare.source_settings(_config(source="/a,/b", landmarks_cache="/c1"))
  with pytest.raises(ValueError, match="empty entry"):
    prepare.source_settings(_config(source="/a,,/b"))


def test_mixing_weights():
  assert mixing.mixing_weights("", [30, 10], ["a", "b"]) == (0.75, 0.25)
  assert mixing.mixing_weights("1, 1", [30, 10], ["a", "b"]) == (0.5, 0.5)
  assert mixing.mixing_weights("3,1", [30, 0], ["a", "b"]) == (1.0, 0.0)  # b: nothing to draw.
  with pytest.raises(ValueError, match="2 weights for 3 sources"):
    mixing.mixing_weights("3,1", [1, 1, 1], ["a", "b", "c"])
  with pytest.raises(ValueError, match="non-negative"):
    mixing.mixing_weights("3,-1", [1, 1], ["a", "b"])
  with pytest.raises(ValueError, match="numbers"):
    mixing.mixing_weights("3,x", [1, 1], ["a", "b"])
  with pytest.raises(ValueError, match="positive weight"):
    mixing.mixing_weights("0,1", [5, 0], ["a", "b"])


def _draws(sampler, positions):
  metadata = [sampler[int(i)] for i in positions]
  return np.array([m.record_key for m in metadata]), metadata


def test_sampler_proportions_epochs_and_determinism():
  # Sources of hundreds of records: grain's index_shuffle is slow on tiny ranges.
  sizes, weights = (700, 500, 300), (0.6, 0.3, 0.1)
  sampler = mixing.MixedSampler(sizes, weights, seed=4)
  keys, metadata = _draws(sampler, range(10 * mixing.WINDOW))
  source = np.searchsorted(np.cumsum(sizes), keys, side="right")
  counts = np.bincount(source, minlength=3)
  np.testing.assert_allclose(counts / counts.sum(), weights, atol=0.002)
  # Exact within each window of positions (to one example), in a random order.
  first = np.bincount(source[: mixing.WINDOW], minlength=3)
  np.testing.assert_allclose(first, np.array(weights) * mixing.WINDOW, atol=1.5)
  assert not np.array_equal(source[:20], source[mixing.WINDOW : mixing.WINDOW + 20])
  # Each source goes through all its records once per epoch (whole windows: whole epochs
  # plus the start of the next, so per-record counts differ by at most one).
  offsets = np.cumsum((0,) + sizes[:-1])
  for s, n in enumerate(sizes):
    per_record = np.bincount(keys[source == s] - offsets[s], minlength=n)
    assert len(per_record) == n and np.ptp(per_record) <= 1 and per_record.min() >= 2
  # Every example's generator differs, also for one record in two epochs.
  draws = {m.rng.integers(1 << 62) for m in metadata[:200]}
  assert len(draws) == 200
  again = mixing.MixedSampler(sizes, weights, seed=4)
  np.testing.assert_array_equal(_draws(again, range(500))[0], keys[:500])
  copy = pickle.loads(pickle.dumps(sampler))  # As grain's worker processes get it.
  np.testing.assert_array_equal(_draws(copy, range(500))[0], keys[:500])
  assert _draws(copy, [7])[1][0].rng.random() == _draws(sampler, [7])[1][0].rng.random()
  other = mixing.MixedSampler(sizes, weights, seed=5)
  assert not np.array_equal(_draws(other, range(500))[0], keys[:500])
  # Hosts taking every other position both see the sources in proportion.
  for host in (0, 1):
    share = np.bincount(source[host::2], minlength=3) / len(source[host::2])
    np.testing.assert_allclose(share, weights, atol=0.01)
  assert repr(again) == repr(sampler) != repr(other)


def test_source_set_qualifies_keys(tmp_path):
  from PIL import Image

  for folder in ("a", "b"):
    (tmp_path / folder / "Ann").mkdir(parents=True)
    pixels = np.full((20, 20, 3), 50 if folder == "a" else 200, np.uint8)
    Image.fromarray(pixels).save(tmp_path / folder / "Ann" / "1.png")
  parts = [(t, sources.get_source(str(tmp_path / t))) for t in ("a", "b")]
  both = prepare.SourceSet(parts)
  assert [(r.key, r.identity) for r in both.records] == [
    ("a/Ann/1.png", "a/Ann"),
    ("b/Ann/1.png", "b/Ann"),
  ]
  assert both.load("b/Ann/1.png")[0, 0, 0] == 200
  assert pickle.loads(pickle.dumps(both)).load("a/Ann/1.png")[0, 0, 0] == 50
  with pytest.raises(KeyError, match="c/Ann"):
    both.load("c/Ann/1.png")
  assert prepare._tags(["/x/faces", "/y/faces", "tfds:lfw"]) == ["faces", "faces_2", "lfw"]


@pytest.fixture(scope="module")
def two_folders(shared_data, tmp_path_factory):
  """`lfw`: 6 people x 3 photos; `utk`: 12 UTKFace crops; each with its landmark cache."""
  root = tmp_path_factory.mktemp("sources")
  people = sorted(
    p for p in (shared_data / "lfw_gray").iterdir() if len(list(p.glob("*.jpg"))) >= 3
  )
  for person in people[:6]:
    (root / "lfw" / person.name).mkdir(parents=True)
    for photo in sorted(person.glob("*.jpg"))[:3]:
      (root / "lfw" / person.name / photo.name).symlink_to(photo)
  (root / "utk").mkdir()
  for photo in sorted((shared_data / "utkface").glob("*.jpg"))[::500][:12]:
    (root / "utk" / photo.name).symlink_to(photo)
  caches = []
  for name, pattern in (("lfw", ""), ("utk", "utkface")):
    cache = root / f"{name}.json"
    source = sources.get_source(str(root / name), identity_pattern=pattern)
    landmark_cache.compute_cache(source, cache, workers=1, progress=False)
    caches.append(str(cache))
  return root, caches


def _two_config(two_folders, **overrides):
  root, caches = two_folders
  values = dict(
    source=f"{root / 'lfw'},{root / 'utk'}",
    identity_pattern=",utkface",
    landmarks_cache=",".join(caches),
    source_weights="3,1",
    image_size=SIZE,
    test_size=0.25,
    val_fraction=0.3,
    worker_count=0,
    flip=False,
    color_jitter=False,
  )
  return _config(**{**values, **overrides})


@pytest.fixture(scope="module")
def mixed(two_folders, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("workdir")
  return pipeline.prepare_data(_two_config(two_folders), workdir=workdir), workdir


def _digest(array):
  """A hash of an image's float32 [0, 1] values, whether it came as uint8 (training batches)
  or float32 (evaluation batches)."""
  array = np.asarray(array)
  if array.dtype == np.uint8:
    array = array.astype(np.float32) / 255.0
  return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def _clean_digests(data, keys):
  out = {}
  for key in keys:
    matrix = crop.crop_transform(data.landmarks[key].points, size=SIZE)
    out[_digest(crop.warp(data.source.load(key), matrix, SIZE).astype(np.float32) / 255.0)] = key
  return out


def test_each_source_split_on_its_own_and_recorded(two_folders, mixed):
  data, workdir = mixed
  assert [p.tag for p in data.parts] == ["lfw", "utk"]
  for part in data.parts:
    faces = [r for r in part.source.records if r.key in part.landmarks]
    splits.check_splits(part.splits, faces)  # Identity-disjoint, every face once.
    assert all(part.splits[name] for name in splits.SPLIT_NAMES)
  assert {r.identity for r in data.parts[1].source.records} == {
    r.key.removesuffix(".jpg.chip.jpg") for r in data.parts[1].source.records
  }
  for name in splits.SPLIT_NAMES:
    assert data.splits[name] == [f"{p.tag}/{k}" for p in data.parts for k in p.splits[name]]
  written = splits.read_splits(workdir / "splits.json")
  assert written == data.splits
  entries = written.info["sources"]
  assert [e["source"] for e in entries] == [p.source.name for p in data.parts]
  assert [e["splits"] for e in entries] == [p.splits for p in data.parts]
  assert entries[1]["identity_pattern"] == "utkface"
  # A rerun reads the splits back, whatever the split seed; other sources are refused.
  again = pipeline.prepare_data(_two_config(two_folders, split_seed=9), workdir=workdir)
  assert again.splits == data.splits
  root, caches = two_folders
  with pytest.raises(ValueError, match="not for the sources"):
    pipeline.prepare_data(
      _two_config(
        two_folders,
        source=f"{root / 'utk'},{root / 'lfw'}",
        landmarks_cache=",".join(caches[::-1]),
        identity_pattern="utkface,",
      ),
      workdir=workdir,
    )


def test_eval_every_example_once_masks_as_in_a_single_source_run(two_folders, mixed):
  data = mixed[0]
  config = _two_config(two_folders)
  expected = _clean_digests(data, data.splits["test"])
  seen = {}
  for batch in pipeline.eval_batches(data, config, "test", batch_size=3):
    for clean, mask, valid in zip(batch["clean"], batch["mask"], batch["valid"]):
      if valid:
        seen.setdefault(_digest(clean), []).append(_digest(mask))
  assert set(seen) == set(expected) and all(len(v) == 1 for v in seen.values())
  root, caches = two_folders
  alone_config = _config(
    source=str(root / "utk"),
    identity_pattern="utkface",
    landmarks_cache=caches[1],
    image_size=SIZE,
    test_size=0.25,
    val_fraction=0.3,
    worker_count=0,
  )
  alone = pipeline.prepare_data(alone_config)
  assert alone.splits == data.parts[1].splits  # The same split as within the mixture.
  for batch in pipeline.eval_batches(alone, alone_config, "test", batch_size=3):
    for clean, mask, valid in zip(batch["clean"], batch["mask"], batch["valid"]):
      if valid:
        assert seen[_digest(clean)] == [_digest(mask)]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_training_mixes_by_weight_deterministic_and_restores(
  two_folders, mixed, tmp_path, monkeypatch
):
  data = mixed[0]
  config = _two_config(two_folders)
  source_of = {
    d: k.partition("/")[0] for d, k in _clean_digests(data, data.splits["train"]).items()
  }
  # Windows of 64 positions: 32 batches of 8 are four whole windows, each exact.
  monkeypatch.setattr(mixing, "WINDOW", 64)
  batches = _take(iter(pipeline.train_loader(data, config, batch_size=8, seed=1)), 32)
  drawn = [source_of[_digest(c)] for b in batches for c in b["clean"]]
  assert abs(drawn.count("lfw") - 0.75 * 256) <= 1, drawn.count("lfw")
  assert drawn[:64] != drawn[64:128]  # Shuffled within windows, not a fixed pattern.
  rerun = _take(iter(pipeline.train_loader(data, config, batch_size=8, seed=1)), 4)
  for a, b in zip(batches, rerun):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  other = next(iter(pipeline.train_loader(data, config, batch_size=8, seed=2)))
  assert not np.array_equal(other["masked"], batches[0]["masked"])
  # Proportional to the train splits' sizes when no weights are given.
  even = _two_config(two_folders, source_weights="")
  drawn = [
    source_of[_digest(c)]
    for b in _take(iter(pipeline.train_loader(data, even, batch_size=8, seed=1)), 16)
    for c in b["clean"]
  ]
  sizes = [len(p.splits["train"]) for p in data.parts]
  assert abs(drawn.count("lfw") - 128 * sizes[0] / sum(sizes)) <= 1.5
  # Save the iterator as orbax does, take more; a fresh loader restored gives the same.
  handler = grain.checkpoint.CheckpointHandler()
  iterator = iter(pipeline.train_loader(data, config, batch_size=8, seed=1))
  _take(iterator, 5)
  handler.save(tmp_path, args=grain.checkpoint.CheckpointSave(iterator))
  after = _take(iterator, 3)
  fresh = iter(pipeline.train_loader(data, config, batch_size=8, seed=1))
  handler.restore(tmp_path, args=grain.checkpoint.CheckpointRestore(fresh))
  for a, b in zip(after, _take(fresh, 3)):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])


def test_mixed_worker_processes_restore(two_folders, mixed):
  """worker_count=2: the sampler travels to the workers; the same examples, exact restore."""
  flags.FLAGS.mark_as_parsed()
  data = mixed[0]
  inline = _take(
    iter(pipeline.train_loader(data, _two_config(two_folders), batch_size=4, seed=3)), 4
  )
  workers = _two_config(two_folders, worker_count=2)
  iterator = iter(pipeline.train_loader(data, workers, batch_size=4, seed=3))
  got = _take(iterator, 2)
  state = iterator.get_state()
  got += _take(iterator, 2)
  digests = lambda batches: sorted(_digest(x) for b in batches for x in b["masked"])
  assert digests(got) == digests(inline)
  restored = iter(pipeline.train_loader(data, workers, batch_size=4, seed=3))
  restored.set_state(state)
  for a, b in zip(got[2:], _take(restored, 2)):
    np.testing.assert_array_equal(a["masked"], b["masked"])
  del iterator, restored
  gc.collect()
