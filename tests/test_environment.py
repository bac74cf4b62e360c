"""The installed stack is the one the project needs: one OpenCV build, the dlib model files."""

import importlib.metadata
import os

import pytest


def _installed(name: str) -> bool:
  try:
    importlib.metadata.distribution(name)
  except importlib.metadata.PackageNotFoundError:
    return False
  return True


def test_exactly_one_opencv_build():
  # mediapipe requires opencv-contrib-python; a second build beside it (pulled in by another
  # package) would shadow its cv2 module with a different set of compiled features.
  builds = [
    name
    for name in (
      "opencv-python",
      "opencv-python-headless",
      "opencv-contrib-python",
      "opencv-contrib-python-headless",
    )
    if _installed(name)
  ]
  assert builds == ["opencv-contrib-python"], f"OpenCV builds installed: {builds}"
  import cv2

  assert hasattr(cv2, "xfeatures2d"), "cv2 is not the contrib build"


@pytest.mark.parametrize(
  "locator",
  [
    "pose_predictor_model_location",
    "face_recognition_model_location",
    "cnn_face_detector_model_location",
  ],
)
def test_dlib_model_files_ship_with_the_wheel(locator):
  import face_recognition_models

  path = getattr(face_recognition_models, locator)()
  assert os.path.getsize(path) > 100_000, path
