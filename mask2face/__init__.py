"""mask2face: show the face beneath a face mask (JAX/Flax).

`from mask2face import Unmasker` gives the photo-to-photo API (mask2face/unmasker.py); it is
imported lazily so that `import mask2face.models` does not pull in OpenCV and MediaPipe.
"""


def __getattr__(name):
  if name == "Unmasker":
    from mask2face.unmasker import Unmasker

    return Unmasker
  raise AttributeError(f"module 'mask2face' has no attribute {name!r}")
