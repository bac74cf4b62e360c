"""Tests for mask2face.data.pipeline on a tiny folder of real LFW faces (built in tmp)."""

import dataclasses
import gc
import hashlib
import pathlib

import cv2
import grain
import numpy as np
import pytest
from absl import flags

from mask2face import config_files
from mask2face.data import crop, images, masks, pairs, pipeline, sources, splits
from mask2face.data.landmark_cache import compute_cache

COMMON_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "common.py"
SIZE = 32
NUM_PEOPLE = 8


@pytest.fixture(scope="module")
def face_folder(shared_data, tmp_path_factory):
  """Symlinks to a few LFW people (2+ photos each) plus a corrupt file and a faceless image."""
  root = tmp_path_factory.mktemp("faces")
  lfw = shared_data / "lfw_gray"
  people = sorted(p for p in lfw.iterdir() if p.is_dir() and len(list(p.glob("*.jpg"))) >= 3)
  for person in people[:NUM_PEOPLE]:
    (root / person.name).mkdir()
    for photo in sorted(person.glob("*.jpg"))[:3]:
      (root / person.name / photo.name).symlink_to(photo)
  (root / "Broken_File").mkdir()
  (root / "Broken_File" / "Broken_File_0001.jpg").write_bytes(b"not a jpeg at all")
  (root / "Blank_Wall").mkdir()
  cv2.imwrite(
    str(root / "Blank_Wall" / "Blank_Wall_0001.jpg"), np.full((120, 120, 3), 128, np.uint8)
  )
  return root


@pytest.fixture(scope="module")
def landmark_cache(face_folder, tmp_path_factory):
  path = tmp_path_factory.mktemp("cache") / "landmarks.json"
  compute_cache(sources.get_source(str(face_folder)), path, workers=1, progress=False)
  return path


def _data_config(face_folder, landmark_cache, **overrides):
  config = config_files.load(COMMON_CONFIG).data
  config.source = str(face_folder)
  config.landmarks_cache = str(landmark_cache)
  config.image_size = SIZE
  config.test_size = 0.25
  config.val_fraction = 0.3
  config.worker_count = 0
  config.update(overrides)
  return config


@pytest.fixture(scope="module")
def prepared(face_folder, landmark_cache, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("workdir")
  return pipeline.prepare_data(_data_config(face_folder, landmark_cache), workdir=workdir), workdir


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _digest(array):
  return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def test_prepare_data_drops_faceless_and_fixes_splits(face_folder, landmark_cache, prepared):
  data, workdir = prepared
  all_keys = [k for keys in data.splits.values() for k in keys]
  assert data.num_without_face == 2  # The corrupt file and the blank image.
  assert len(all_keys) == len(set(all_keys)) == NUM_PEOPLE * 3
  assert not any(k.startswith(("Broken_File", "Blank_Wall")) for k in all_keys)
  assert all(len(keys) > 0 for keys in data.splits.values())
  written = splits.read_splits(workdir / "splits.json")
  assert {k: sorted(v) for k, v in written.items()} == {
    k: sorted(v) for k, v in data.splits.items()
  }
  # A rerun with another split seed reads the written split back: the split never changes.
  again = pipeline.prepare_data(
    _data_config(face_folder, landmark_cache, split_seed=123), workdir=workdir
  )
  assert again.splits == data.splits
  capped = pipeline.prepare_data(_data_config(face_folder, landmark_cache, max_examples=3))
  assert all(len(v) == min(3, len(data.splits[k])) for k, v in capped.splits.items())
  assert set(capped.splits["train"]) <= set(data.splits["train"])


def test_train_batches_shapes_dtypes_ranges(face_folder, landmark_cache, prepared):
  config = _data_config(face_folder, landmark_cache)
  batch = next(iter(pipeline.train_loader(prepared[0], config, batch_size=4, seed=0)))
  assert set(batch) == {"masked", "clean", "mask", "family", "valid"}
  assert batch["masked"].shape == batch["clean"].shape == (4, SIZE, SIZE, 3)
  assert batch["mask"].shape == (4, SIZE, SIZE, 1)
  # Images travel as uint8 (0..255) and the mask as 0/1: train.to_float casts on the device.
  for name in ("masked", "clean", "mask"):
    assert batch[name].dtype == np.uint8, name
  assert batch["masked"].max() > 1 and batch["valid"].dtype == np.float32
  assert set(np.unique(batch["mask"])) <= {0, 1}
  assert (batch["mask"].mean(axis=(1, 2, 3)) > 0.05).all()  # Every face wears a mask.
  assert batch["family"].dtype == np.int32
  assert ((batch["family"] >= 0) & (batch["family"] < len(masks.FAMILY_NAMES))).all()
  np.testing.assert_array_equal(batch["valid"], 1.0)


def test_masks_new_each_epoch_and_same_on_rerun(face_folder, landmark_cache, prepared):
  config = _data_config(face_folder, landmark_cache, flip=False, color_jitter=False)
  data = prepared[0]
  n = len(data.splits["train"])
  batches = _take(iter(pipeline.train_loader(data, config, batch_size=1, seed=5)), 2 * n)
  rerun = _take(iter(pipeline.train_loader(data, config, batch_size=1, seed=5)), 2 * n)
  for a, b in zip(batches, rerun):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  # Without augmentation a photo's clean crop is the same every epoch; its mask is not.
  masks_by_photo = {}
  for batch in batches:
    masks_by_photo.setdefault(_digest(batch["clean"]), []).append(batch["mask"])
  assert len(masks_by_photo) == n and all(len(m) == 2 for m in masks_by_photo.values())
  assert all(not np.array_equal(*m) for m in masks_by_photo.values())
  other_seed = next(iter(pipeline.train_loader(data, config, batch_size=n, seed=6)))
  assert not np.array_equal(other_seed["clean"], np.concatenate([b["clean"] for b in batches[:n]]))


def test_augmentation_identical_on_both_images(face_folder, landmark_cache, prepared):
  config = _data_config(face_folder, landmark_cache)
  plain = _data_config(face_folder, landmark_cache, flip=False, color_jitter=False)
  data = prepared[0]
  n = len(data.splits["train"])
  batch = next(iter(pipeline.train_loader(data, config, batch_size=n, seed=1)))
  base = next(iter(pipeline.train_loader(data, plain, batch_size=n, seed=1)))
  jittered = np.abs(batch["clean"].astype(np.float32) - base["clean"].astype(np.float32))
  assert jittered.max() > 0.05 * 255  # Jitter did something.
  for masked, clean, mask in zip(batch["masked"], batch["clean"], batch["mask"]):
    # Away from the mask's (possibly feathered) edge, both images are the same pixels.
    near = cv2.dilate(mask[..., 0].astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    np.testing.assert_array_equal(masked[~near], clean[~near])
  # Flips mirror the mask with the images: the mask's left-right balance follows the face.
  mirrored = [np.array_equal(m, b[:, ::-1]) for m, b in zip(batch["mask"], base["mask"])]
  same = [np.array_equal(m, b) for m, b in zip(batch["mask"], base["mask"])]
  assert all(a or b for a, b in zip(mirrored, same)) and any(mirrored)


def _clean_crop(data, key):
  matrix = crop.crop_transform(data.landmarks[key].points, size=SIZE)
  return crop.warp(data.source.load(key), matrix, SIZE).astype(np.float32) / 255.0


@pytest.mark.parametrize("shard_count", [1, 2])
def test_eval_every_example_once_padded(face_folder, landmark_cache, prepared, shard_count):
  config = _data_config(face_folder, landmark_cache)
  data = prepared[0]
  keys = data.splits["validation"]
  batch_size = 2
  expected = {_digest(_clean_crop(data, k)) for k in keys}
  seen, num_batches = [], []
  for shard in range(shard_count):
    loader = pipeline.eval_batches(
      data, config, "validation", batch_size=batch_size, shard_index=shard, shard_count=shard_count
    )
    batches = list(loader)
    num_batches.append(len(batches))
    for batch in batches:
      assert batch["clean"].shape == (batch_size, SIZE, SIZE, 3)
      for clean, valid, mask in zip(batch["clean"], batch["valid"], batch["mask"]):
        if valid:
          seen.append(_digest(clean))
        else:
          assert not clean.any() and not mask.any()
    # A second pass gives the same masks (fixed per example).
    again = list(loader)
    for a, b in zip(batches, again):
      np.testing.assert_array_equal(a["mask"], b["mask"])
  assert len(set(num_batches)) == 1  # Every host runs the same number of eval steps.
  assert num_batches[0] == pipeline.num_eval_batches(len(keys), batch_size, shard_count)
  assert len(seen) == len(keys) and set(seen) == expected


def test_iterator_state_restores_exactly(face_folder, landmark_cache, prepared, tmp_path):
  """Take N batches, save the state (as orbax does), take M; a fresh loader restored from the
  saved state gives the same M."""
  config = _data_config(face_folder, landmark_cache)
  data = prepared[0]
  handler = grain.checkpoint.CheckpointHandler()
  iterator = iter(pipeline.train_loader(data, config, batch_size=3, seed=2))
  _take(iterator, 4)  # Crosses an epoch boundary.
  handler.save(tmp_path, args=grain.checkpoint.CheckpointSave(iterator))
  after = _take(iterator, 3)
  fresh = iter(pipeline.train_loader(data, config, batch_size=3, seed=2))
  handler.restore(tmp_path, args=grain.checkpoint.CheckpointRestore(fresh))
  for a, b in zip(after, _take(fresh, 3)):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])


def test_train_shards_are_disjoint(face_folder, landmark_cache, prepared):
  config = _data_config(face_folder, landmark_cache, flip=False, color_jitter=False)
  data = prepared[0]
  half = len(data.splits["train"]) // 2
  seen = []
  for shard in range(2):
    loader = pipeline.train_loader(
      data, config, batch_size=half, seed=0, shard_index=shard, shard_count=2
    )
    seen.append({_digest(c) for c in next(iter(loader))["clean"]})
  assert len(seen[0]) == len(seen[1]) == half and not seen[0] & seen[1]


def test_worker_processes(face_folder, landmark_cache, prepared):
  """worker_count=2: the same examples as in-process loading, and an exact restore."""
  flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags (see STACK_NOTES).
  data = prepared[0]
  inline = _data_config(face_folder, landmark_cache)
  workers = _data_config(face_folder, landmark_cache, worker_count=2)
  expected = _take(iter(pipeline.train_loader(data, inline, batch_size=2, seed=3)), 4)
  iterator = iter(pipeline.train_loader(data, workers, batch_size=2, seed=3))
  got = _take(iterator, 2)
  state = iterator.get_state()
  got += _take(iterator, 2)
  # Each worker batches its own share of the sampler's order, so batches group examples
  # differently; the examples themselves (masks, flips, jitter) are the same.
  digests = lambda batches: sorted(_digest(x) for b in batches for x in b["masked"])
  assert digests(got) == digests(expected)
  restored = iter(pipeline.train_loader(data, workers, batch_size=2, seed=3))
  restored.set_state(state)
  for a, b in zip(got[2:], _take(restored, 2)):
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])
  # Stop the worker processes now rather than at interpreter exit.
  del iterator, restored
  gc.collect()


def test_bad_arguments_name_the_problem(face_folder, landmark_cache, prepared):
  config = _data_config(face_folder, landmark_cache)
  with pytest.raises(ValueError, match="shard_index"):
    pipeline.train_loader(prepared[0], config, batch_size=1, seed=0, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match="unknown split"):
    pipeline.eval_batches(prepared[0], config, "dev", batch_size=1)
  with pytest.raises(ValueError, match="fewer than one global batch"):
    pipeline.train_loader(prepared[0], config, batch_size=1000, seed=0)
  for bad in ({"paint_order": "sideways"}, {"mask_families": "balaclava"}):
    with pytest.raises(ValueError, match="paint_order|balaclava"):
      pipeline.train_loader(
        prepared[0], _data_config(face_folder, landmark_cache, **bad), batch_size=1, seed=0
      )


def test_jitter_transform_components():
  rng = np.random.default_rng(0)
  x = rng.random((6, 6, 3)).astype(np.float32) * 0.5 + 0.25
  mean = x.reshape(-1, 3).mean(axis=0)

  def jitter(**kw):
    fields = dict(brightness=0.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.0)
    options = pairs.PairOptions(**{**fields, **kw})
    return pairs.color_jitter([x], np.random.default_rng(1), options, reference=x)[0]

  np.testing.assert_allclose(jitter(), x, atol=1e-6)
  gray = jitter(saturation=(0.0, 0.0))
  np.testing.assert_allclose(gray[..., 0], gray[..., 2], atol=1e-6)
  np.testing.assert_allclose(gray[..., 0], x @ np.array([0.299, 0.587, 0.114]), atol=1e-5)
  shift = jitter(brightness=0.1) - x
  assert np.ptp(shift) < 1e-5 and 0 < abs(shift.mean()) <= 0.1
  low = jitter(contrast=(0.5, 0.5))
  np.testing.assert_allclose(low, (x - mean) * 0.5 + mean, atol=1e-6)
  hue = jitter(hue=0.05)
  # A hue rotation keeps luma and changes colour.
  luma = np.array([0.299, 0.587, 0.114])
  np.testing.assert_allclose(hue @ luma, x @ luma, atol=1e-5)
  assert np.abs(hue - x).max() > 1e-3
  assert jitter(brightness=1.0, contrast=(1.5, 1.5)).max() <= 1.0


def test_eval_masks_follow_the_image_not_the_cap(face_folder, landmark_cache, prepared):
  config = _data_config(face_folder, landmark_cache)
  capped_config = _data_config(face_folder, landmark_cache, max_examples=2)
  capped = pipeline.prepare_data(capped_config)

  def masks_by_photo(data, cfg):
    out = {}
    for batch in pipeline.eval_batches(data, cfg, "validation", batch_size=2):
      for clean, mask, valid in zip(batch["clean"], batch["mask"], batch["valid"]):
        if valid:
          out[_digest(clean)] = _digest(mask)
    return out

  full, few = masks_by_photo(prepared[0], config), masks_by_photo(capped, capped_config)
  assert len(few) == 2 and all(full[k] == v for k, v in few.items())


@pytest.mark.parametrize("size", [64, 256])
def test_paint_orders_agree(prepared, size):
  """Painting on the crop (mapped landmarks) or on the photo (then cropping) puts the same
  mask in the same place; 'auto' picks one of the two."""
  data = prepared[0]
  key = data.splits["train"][0]
  image, points = data.source.load(key), data.landmarks[key].points
  made = {}
  for order in pairs.PAINT_ORDERS:
    options = pairs.PairOptions(image_size=size, paint_order=order, mask_families="surgical")
    made[order] = pairs.make_pair(image, points, np.random.default_rng(7), options, augment=False)
  a, b = made["crop_then_paint"]["mask"] > 0, made["paint_then_crop"]["mask"] > 0
  assert (a & b).sum() / (a | b).sum() > 0.8
  np.testing.assert_array_equal(made["crop_then_paint"]["clean"], made["paint_then_crop"]["clean"])
  # LFW's crop box is about 180 px: a 256 px crop enlarges it, a 64 px crop shrinks it.
  expected = "paint_then_crop" if size == 256 else "crop_then_paint"
  np.testing.assert_array_equal(made["auto"]["masked"], made[expected]["masked"])
  with pytest.raises(ValueError, match="paint_order"):
    pairs.PairOptions(image_size=size, paint_order="sideways")


def test_prepare_data_computes_a_missing_cache(face_folder, tmp_path, monkeypatch):
  """No landmarks_cache: one is computed under ~/.cache/mask2face/landmarks and reused."""
  monkeypatch.setenv("HOME", str(tmp_path))
  folder = tmp_path / "few"
  for person in sorted(p for p in face_folder.iterdir() if p.name != "Broken_File")[:2]:
    (folder / person.name).mkdir(parents=True)
    for photo in sorted(person.iterdir())[:2]:
      (folder / person.name / photo.name).symlink_to(photo.resolve())
  config = _data_config(folder, "", test_size=0.0, val_fraction=0.0)
  data = pipeline.prepare_data(config)
  cache = pathlib.Path(data.landmarks_path)
  assert cache.is_file() and tmp_path / ".cache" / "mask2face" / "landmarks" in cache.parents
  assert sorted(data.splits["train"]) == sorted(data.landmarks.keys())
  assert len(data.splits["train"]) + data.num_without_face == 4
  before = cache.stat().st_mtime_ns
  assert pipeline.prepare_data(config).splits == data.splits
  assert cache.stat().st_mtime_ns == before  # Read back, not recomputed.


class _FlakySource(sources.FaceSource):
  """Wraps a source; one key fails to load (a file damaged after its landmarks were cached)."""

  def __init__(self, inner, bad_key):
    self.name, self.records, self._inner, self._bad = inner.name, inner.records, inner, bad_key

  def load(self, key):
    if key == self._bad:
      raise images.ImageError(f"{key}: truncated JPEG")
    return self._inner.load(key)


def test_unreadable_file_is_skipped(face_folder, landmark_cache, prepared):
  data = prepared[0]
  config = _data_config(face_folder, landmark_cache, flip=False, color_jitter=False)
  train_bad, val_bad = data.splits["train"][0], data.splits["validation"][0]
  flaky = dataclasses.replace(data, source=_FlakySource(data.source, train_bad))
  n = len(data.splits["train"])
  batches = _take(iter(pipeline.train_loader(flaky, config, batch_size=n - 1, seed=0)), 2)
  assert all(b["valid"].shape == (n - 1,) for b in batches)
  bad_digest = _digest(_clean_crop(data, train_bad))
  assert bad_digest not in {_digest(c) for b in batches for c in b["clean"]}
  flaky = dataclasses.replace(data, source=_FlakySource(data.source, val_bad))
  valid = sum(
    b["valid"].sum() for b in pipeline.eval_batches(flaky, config, "validation", batch_size=2)
  )
  assert valid == len(data.splits["validation"]) - 1


def test_each_host_reads_its_slice_of_the_one_host_batches():
  """Global batch k is elements [k*B, (k+1)*B) of the sampler for any hosts and workers.

  grain's loader gives worker w of a host the host's indices w, w + W, ... and batches each
  worker's reads, taking the workers in turn; this replays that order.
  """
  import grain.python as grain

  class Identity:
    def __len__(self):
      return 10**6

    def __getitem__(self, i):
      return grain.RecordMetadata(index=i, record_key=i)

  def global_batches(hosts, workers, num_batches=6, global_batch=8):
    b, lanes = global_batch // hosts, max(workers, 1)
    samplers = [
      pipeline._HostBatchSampler(
        Identity(), batch_size=b, shard_index=h, shard_count=hosts, workers=workers
      )
      for h in range(hosts)
    ]
    out = []
    for k in range(num_batches):
      worker, worker_batch = k % lanes, k // lanes
      local = [worker + lanes * (worker_batch * b + j) for j in range(b)]
      assert all(s[i].index == i for s in samplers for i in local)  # grain's own counter.
      out.append([s[i].record_key for s in samplers for i in local])
    return out

  want = [list(range(8 * k, 8 * k + 8)) for k in range(6)]
  for hosts, workers in [(1, 0), (1, 1), (1, 2), (2, 0), (2, 2), (4, 3), (8, 1)]:
    assert global_batches(hosts, workers) == want, (hosts, workers)
