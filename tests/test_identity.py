"""Tests for mask2face.identity: dlib face-descriptor similarity between predictions and targets."""

import numpy as np
import pytest
from PIL import Image

from mask2face import identity
from mask2face.data import dlib_faces


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
