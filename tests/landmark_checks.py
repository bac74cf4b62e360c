"""Shared checks for the landmark tests: anatomical sanity, and a subset view of a source."""

import numpy as np

from mask2face.data import landmarks


def assert_anatomical(face: landmarks.FaceLandmarks):
  """Eyes above the nose tip above the mouth above the chin; eyes inside the face box."""
  p = face.points
  assert p.shape == (68, 2) and p.dtype == np.float32
  eyes_y = p[36:48, 1].mean()
  nose_y, mouth_y, chin_y = p[33, 1], p[48:68, 1].mean(), p[8, 1]
  assert eyes_y < nose_y < mouth_y < chin_y, (eyes_y, nose_y, mouth_y, chin_y)
  assert p[36:42, 0].mean() < p[42:48, 0].mean()  # Subject's right eye on the image's left.
  x0, y0, x1, y1 = face.box
  eyes = p[36:48]
  assert np.all((eyes[:, 0] >= x0) & (eyes[:, 0] <= x1) & (eyes[:, 1] >= y0) & (eyes[:, 1] <= y1))
  assert landmarks.plausible_landmarks(p, face.image_size)


class SubsetSource:
  """A picklable view of some records of another source (the test's deterministic sample)."""

  def __init__(self, base, keys, fail_after=None):
    self.base = base
    self.name = f"{base.name}[subset]"
    wanted = set(keys)
    self.records = [r for r in base.records if r.key in wanted]
    self.fail_after = fail_after  # Raise KeyboardInterrupt on this load, to simulate a kill.
    self.loaded = []

  def __len__(self):
    return len(self.records)

  def fingerprint(self, key):
    return self.base.fingerprint(key)

  def load(self, key):
    if self.fail_after is not None and len(self.loaded) >= self.fail_after:
      raise KeyboardInterrupt
    self.loaded.append(key)
    return self.base.load(key)
