"""Installs mask2face: `pip install -e ".[dev]"` gives the library, its CLIs and the test tools."""

import setuptools

# Everything the library needs at run time. One OpenCV build only: mediapipe requires
# opencv-contrib-python, so nothing here may pull opencv-python(-headless) beside it.
INSTALL_REQUIRES = [
  "absl-py",
  "array-record",
  "chex",
  "clu",
  "dlib-bin",
  "dm-pix",
  "etils[epath]",
  "face-recognition-models",
  "flax>=0.12",
  "grain>=0.2.12",
  # tfds 4.9.10 imports importlib_resources on Python 3.11 without declaring it.
  "importlib_resources",
  "jax>=0.8",
  "matplotlib",
  "mediapipe>=0.10.20",
  "ml-collections",
  "numpy",
  "opencv-contrib-python",
  "optax",
  "orbax-checkpoint",
  "pandas",
  "pillow",
  "tensorboard",
  "tensorflow-cpu",
  "tensorflow-datasets>=4.9.8",
  "tqdm",
]

EXTRAS_REQUIRE = {
  "dev": [
    "ipykernel",
    "nbclient",
    "nbformat",
    "pytest",
    "pytest-xdist",
    "ruff",
    "scikit-image",
  ],
}

setuptools.setup(
  name="mask2face",
  version="0.1.0",
  description="Shows the face beneath a face mask: JAX/Flax inpainting research code.",
  packages=setuptools.find_packages(include=["mask2face", "mask2face.*"]),
  # Bundled models (mask2face/pretrained/<name>.npz + .json, see mask2face/bundled.py).
  package_data={"mask2face": ["pretrained/*.npz", "pretrained/*.json"]},
  python_requires=">=3.11",
  install_requires=INSTALL_REQUIRES,
  extras_require=EXTRAS_REQUIRE,
)
