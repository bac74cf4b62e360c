"""Tests for mask2face.identity: dlib face-descriptor similarity between predictions and targets,
and verification against another photo of the same person."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from mask2face import identity, identity_pass
from mask2face.data import dlib_faces, masks


def _face_crop(image, size=160):
  """A crop like the dataset's: the dlib face box widened by 1/3 on every side, resized."""
  x0, y0, x1, y1 = dlib_faces.find_faces(image, upsample=1)[0].box
  w, h = x1 - x0 + 1, y1 - y0 + 1  # dlib's box corners are inclusive.
  region = (x0 - w / 3, y0 - h / 3, x1 + w / 3, y1 + h / 3)
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, box=region))


def _gray_rgb(path):
  return np.repeat(np.asarray(Image.open(path).convert("L"))[..., None], 3, axis=-1)


@pytest.fixture(scope="module")
def face_crops(astronaut, grace_hopper):
  return _face_crop(astronaut), _face_crop(grace_hopper)


def test_identity_scorer_same_face_scores_one(face_crops):
  scorer = identity.IdentityScorer()
  eileen, grace = face_crops
  same = scorer.score(eileen, eileen)
  assert same["identity_similarity"] > 0.999 and same["identity_distance"] < 1e-3
  different = scorer.score(grace, eileen)
  assert different["identity_similarity"] < same["identity_similarity"] - 0.01
  assert same["identity_fallback"] == different["identity_fallback"] == 0.0
  # Float [0, 1] input is the same picture as its uint8 original.
  as_float = scorer.score(eileen.astype(np.float32) / 255.0, eileen)
  assert as_float["identity_similarity"] > 0.999


def test_identity_scorer_different_people_lower_than_same_person(face_crops, shared_data):
  scorer = identity.IdentityScorer()
  eileen, grace = face_crops
  different = scorer.score(grace, eileen)["identity_similarity"]
  people = sorted(p for p in (shared_data / "lfw_gray").iterdir() if p.is_dir())[:3]
  same_person = []
  for person in people:
    first, second = sorted(person.glob("*.jpg"))[:2]
    same_person.append(scorer.score(_gray_rgb(first), _gray_rgb(second))["identity_similarity"])
  assert max(same_person) <= 1.0 + 1e-9
  assert different < min(same_person), (different, same_person)
  assert scorer.num_scored == 4 and scorer.num_fallback == 0


def test_identity_scorer_marks_fallback_and_skips_padding():
  rng = np.random.default_rng(7)
  noise = rng.uniform(size=(2, 64, 64, 3)).astype(np.float32)
  scorer = identity.IdentityScorer()
  out = scorer.score_batch(noise, noise[::-1], valid=np.array([1.0, 0.0]))
  assert out["identity_fallback"][0] == 1.0 and np.isfinite(out["identity_similarity"][0])
  assert np.isnan(out["identity_similarity"][1])
  assert scorer.num_fallback == 1 and scorer.num_scored == 1
  with pytest.raises(ValueError, match="prediction"):
    scorer.score(np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.uint8))


# --- Verification against another photo of the same person. ---------------------------------


def test_partner_photos_pick_another_photo_of_the_same_person():
  from mask2face.data.sources import FaceRecord

  records = [
    FaceRecord("a/1", "a"),
    FaceRecord("a/2", "a"),
    FaceRecord("a/3", "a"),
    FaceRecord("b/1", "b"),
    FaceRecord("c/1", "c"),
    FaceRecord("c/2", "c"),  # No landmarks: may not serve.
  ]
  keys = ["a/1", "a/2", "a/3", "b/1", "c/1"]
  partners = identity.partner_photos(records, keys, available={"a/1", "a/2", "a/3", "b/1", "c/1"})
  # The next photo in key order, wrapping: every photo of a person serves once.
  assert partners == {"a/1": "a/2", "a/2": "a/3", "a/3": "a/1"}
  assert identity.partner_photos(records, ["c/1"]) == {"c/1": "c/2"}


@pytest.fixture(scope="module")
def lfw_test_split(shared_data, tmp_path_factory):
  """Five LFW people with 2-3 photos each and one with a single photo, all in the test split,
  cropped at 128 px as the pipeline crops them."""
  from mask2face import config_files
  from mask2face.data import pipeline, sources
  from mask2face.data.landmark_cache import compute_cache

  root = tmp_path_factory.mktemp("lfw_people")
  people = sorted(p for p in (shared_data / "lfw_gray").iterdir() if p.is_dir())[::50][:6]
  for n, person in enumerate(people):
    (root / person.name).mkdir()
    for photo in sorted(person.glob("*.jpg"))[: 1 if n == 0 else 3]:
      (root / person.name / photo.name).symlink_to(photo)
  cache = root.parent / "landmarks.json"
  compute_cache(sources.get_source(str(root)), cache, workers=1, progress=False)
  config = config_files.load(pathlib.Path(__file__).parents[1] / "configs" / "common.py").data
  config.update(
    source=str(root),
    landmarks_cache=str(cache),
    image_size=128,
    test_size=0.999,
    val_fraction=0.0,
    worker_count=0,
  )
  prepared = pipeline.prepare_data(config)
  batches = list(pipeline.eval_batches(prepared, config, "test", batch_size=4))
  return prepared, config, batches, people[0].name


def test_cross_photo_verification_on_real_people(lfw_test_split):
  from mask2face import baselines

  prepared, config, batches, single = lfw_test_split
  assert identity.dlib_available()  # This machine has dlib: the metric must run here.
  keys = prepared.splits["test"]
  assert len(keys) >= 10
  verifier = identity.CrossPhotoVerifier.from_prepared(prepared, config, "test")
  alone = [k for k in keys if k.startswith(single)]
  assert verifier.num_with_partner == len(keys) - len(alone) and alone
  # The partner is the same person's other photo, cropped as the pipeline crops.
  key = next(k for k in keys if k in verifier.partners)
  partner = verifier.partners[key][0]
  assert partner != key and partner.split("/")[0] == key.split("/")[0]
  assert verifier.partner_crop(key).shape == (128, 128, 3)

  scoring = identity_pass.IdentityPass(verifier)
  seen = []
  for batch in batches:
    # Every example's index names its photo: its clean crop is that photo's crop.
    seen += [int(i) for i, v in zip(batch["index"], batch["valid"]) if v > 0]
    telea = baselines.inpaint(batch["masked"], batch["mask"], "telea")
    rows = {"clean": batch["clean"], "masked_input": batch["masked"], "telea": telea}
    scoring.add(batch["index"], rows, valid=batch["valid"], family=batch["family"])
  assert sorted(seen) == list(range(len(keys)))
  per_example, examples = scoring.per_example()
  result = scoring.result(masks.FAMILY_NAMES)
  clean, masked_input = result["clean"], result["masked_input"]
  assert clean["count"] == len(keys)
  # The ceiling: a clean face verifies against another photo of its person.
  assert clean["identity_other_photo_rate"] >= 0.8, clean
  assert clean["identity_same_photo_rate"] == 1.0 and clean["identity_same_photo_distance"] == 0
  for row in result.values():
    assert 0.0 < row["identity_other_photo_distance"] < 1.2
    assert row["undefined/identity_other_photo_rate"] == len(alone)  # No partner: NaN.
  assert masked_input["identity_same_photo_distance"] > 0.05
  assert masked_input["identity_other_photo_distance"] > clean["identity_other_photo_distance"]
  # Per example, the padding (index -1) has no values.
  padding = examples["index"] < 0
  assert np.all(np.isnan(per_example["clean"]["identity_same_photo_distance"][padding]))
  assert np.all(np.isfinite(per_example["clean"]["identity_same_photo_distance"][~padding]))

  # Worker processes give the same numbers as scoring inline.
  batch = batches[0]
  rows = {"clean": batch["clean"], "masked_input": batch["masked"]}
  with identity_pass.IdentityPass(verifier, workers=1) as pooled:
    pooled.add(batch["index"], rows, valid=batch["valid"], family=batch["family"])
    in_worker, _ = pooled.per_example()
  for row in rows:
    for metric, values in in_worker[row].items():
      np.testing.assert_allclose(values, per_example[row][metric][: len(values)], rtol=1e-6)


def test_verifier_needs_the_clean_row(lfw_test_split):
  prepared, config, batches, _ = lfw_test_split
  verifier = identity.CrossPhotoVerifier.from_prepared(prepared, config, "test")
  with pytest.raises(ValueError, match="clean"):
    verifier.score(prepared.splits["test"][0], {"model": batches[0]["masked"][0]})
