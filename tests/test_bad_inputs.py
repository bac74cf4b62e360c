"""A landmarking job over a folder of awkward files: each handled or skipped with a reason."""

import json

import numpy as np
import pytest
from bad_inputs import EXPECTED, make_bad_inputs
from PIL import Image

from mask2face.data import landmark_cache, landmarks
from mask2face.data.images import ImageError, load_image
from mask2face.data.sources import get_source


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory, grace_hopper):
  face = np.asarray(Image.fromarray(grace_hopper).resize((256, 300)))
  folder = tmp_path_factory.mktemp("bad_inputs")
  return folder, make_bad_inputs(folder, face)


@pytest.fixture(scope="module")
def job(bad_folder, tmp_path_factory):
  folder, _ = bad_folder
  out = tmp_path_factory.mktemp("cache") / "landmarks.json"
  table = landmark_cache.compute_cache(get_source(str(folder)), out, progress=False)
  return table, json.loads(landmark_cache.report_path(out).read_text())


def test_every_file_gets_the_expected_outcome(bad_folder, job):
  _, paths = bad_folder
  table, report = job
  for case, path in paths.items():
    key = path.name
    if EXPECTED[case] == "face":
      assert key in table, (case, report["problems"].get(key))
    else:
      assert key not in table
      assert report["problems"][key]["status"] == EXPECTED[case], case


def test_summary_counts_each_outcome(job):
  table, report = job
  summary = report["summary"]
  expected_faces = sum(e == "face" for e in EXPECTED.values())
  assert summary["total"] == len(EXPECTED)
  assert summary["unreadable"] == sum(e == "unreadable" for e in EXPECTED.values())
  assert summary["no_face"] == 1
  assert summary["with_landmarks"] == expected_faces == len(table)
  assert table.summary == summary


def test_reasons_name_the_file(job):
  _, report = job
  for key, problem in report["problems"].items():
    assert key in problem["reason"], problem
  assert "empty" in report["problems"]["empty.jpg"]["reason"]
  assert "no face" in report["problems"]["no_face.png"]["reason"]


def test_faces_in_odd_files_are_upright_and_in_image_pixels(bad_folder, job):
  _, paths = bad_folder
  table, _ = job
  for case in ("gray", "rgba", "png16", "exif_rotated", "huge"):
    face = table[paths[case].name]
    image = load_image(paths[case])
    assert face.image_size == image.shape[:2], case
    # Eyes above mouth: wrong for a sideways face, i.e. if EXIF orientation were ignored.
    assert face.points[36:48, 1].mean() < face.points[48:68, 1].mean(), case
    assert landmarks.plausible_landmarks(face.points, face.image_size), case
  huge = table[paths["huge"].name]
  # The face was pasted at (3000, 2500), 2000 px tall: the points come back in 8000 px pixels.
  assert huge.points[:, 0].min() > 3000 and huge.points[:, 0].max() < 5000
  assert huge.points[:, 1].min() > 2500 and huge.points[:, 1].max() < 4500


def test_loader_and_detector_agree_with_expectations(bad_folder):
  _, paths = bad_folder
  for case, path in paths.items():
    if EXPECTED[case] == "unreadable":
      with pytest.raises(ImageError, match=path.name):
        load_image(path)
    else:
      assert load_image(path, max_side=512).dtype == np.uint8
