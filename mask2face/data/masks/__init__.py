"""Painting synthetic face masks onto photos from their 68 dlib landmarks.

`MaskPainter` picks a family (by name, by weight or uniformly at random), paints it, and
returns the masked photo, the binary mask (the pixels it covers: anti-aliased alpha >= 0.5)
and the family name. A grayscale photo (R == G == B) gets a grayscale mask. Procedural families are drawn from the landmarks (procedural.py);
`mtf_*` families place MaskTheFace templates and need a template folder (templates.py).

  painter = MaskPainter(families="all", templates_dir="path/to/masktheface")
  painted = painter.paint(image, points68, np.random.default_rng(seed))
"""

from typing import NamedTuple

import numpy as np

from mask2face.data.masks import procedural, render, templates
from mask2face.data.masks.geometry import FaceGeometry

PROCEDURAL_FAMILIES = tuple(procedural.FAMILIES)
TEMPLATE_FAMILIES = tuple(templates.TEMPLATE_FAMILIES.values())
# Every family, in a fixed order: the index is the `family` id in batches. Append only.
FAMILY_NAMES: tuple[str, ...] = PROCEDURAL_FAMILIES + TEMPLATE_FAMILIES


class Painted(NamedTuple):
  """One painted example."""

  image: np.ndarray  # uint8 (H, W, 3) RGB, the photo with the mask.
  mask: np.ndarray  # bool (H, W), the pixels the mask covers.
  family: str


def _split(text: str) -> list[str]:
  return [p.strip() for p in str(text).split(",") if p.strip()]


class MaskPainter:
  """Paints masks of the chosen families; picklable (templates reload lazily in workers)."""

  def __init__(self, families="all", weights=None, templates_dir=None):
    """Chooses the families to draw from.

    Args:
      families: 'all' (every procedural family, plus every template family found in
        `templates_dir`), or a sequence (or comma-separated string) of FAMILY_NAMES.
      weights: None for uniform, or one non-negative weight per family, in that order.
      templates_dir: a MaskTheFace template folder, or None / '' for none.

    Raises:
      ValueError: unknown family names (the message lists the valid ones), `mtf_*` families
        without a template folder or missing from it, or bad weights.
      templates.TemplateError: an unusable template folder (names the file).
    """
    self.library = templates.TemplateLibrary(templates_dir) if templates_dir else None
    available = PROCEDURAL_FAMILIES + (self.library.families if self.library else ())
    if isinstance(families, str) and families.strip() == "all":
      names = list(available)
    else:
      names = _split(families) if isinstance(families, str) else list(families)
      if not names:
        raise ValueError("no mask families given; valid names: " + ", ".join(FAMILY_NAMES))
      unknown = [n for n in names if n not in FAMILY_NAMES]
      if unknown:
        raise ValueError(
          f"unknown mask families {unknown}; valid names: {', '.join(FAMILY_NAMES)} or 'all'"
        )
      for n in names:
        if n in TEMPLATE_FAMILIES and self.library is None:
          raise ValueError(f"mask family {n!r} needs a MaskTheFace templates_dir")
        if n not in available:
          raise ValueError(
            f"mask family {n!r} has no template in {self.library.root}; "
            f"available: {', '.join(available)}"
          )
    self.families: tuple[str, ...] = tuple(names)
    if weights is None or (isinstance(weights, str) and not weights.strip()):
      probs = np.full(len(names), 1.0 / len(names))
    else:
      if isinstance(weights, str):
        try:
          weights = [float(w) for w in _split(weights)]
        except ValueError:
          raise ValueError(f"mask weights must be numbers, got {weights!r}") from None
      probs = np.asarray(weights, dtype=np.float64)
      if probs.shape != (len(names),):
        raise ValueError(
          f"got {probs.size} mask weights for {len(names)} families {list(self.families)}"
        )
      if not np.all(np.isfinite(probs)) or np.any(probs < 0) or probs.sum() <= 0:
        raise ValueError(f"mask weights must be non-negative with a positive sum: {weights}")
      probs = probs / probs.sum()
    self.probabilities = probs

  @classmethod
  def from_config(cls, data_config) -> "MaskPainter":
    """Builds a painter from `config.data` (mask_families, mask_weights, templates_dir)."""
    return cls(
      families=data_config.mask_families,
      weights=data_config.mask_weights or None,
      templates_dir=data_config.templates_dir or None,
    )

  def paint(self, image, points, rng: np.random.Generator, family: str | None = None) -> Painted:
    """Paints one mask on a copy of `image` (uint8 HxWx3 RGB) at landmarks `points` (68, 2).

    The family is `family` when given, otherwise drawn from `rng` with the painter's
    weights; everything random comes from `rng`, so its state fixes the result. On a
    grayscale photo (every pixel R == G == B) the mask is painted in gray (its luma).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
      raise ValueError(
        f"image must be uint8 (H, W, 3) RGB, got {image.dtype} with shape {image.shape}"
      )
    if family is None:
      family = self.families[int(rng.choice(len(self.families), p=self.probabilities))]
    elif family not in FAMILY_NAMES:
      raise ValueError(f"unknown mask family {family!r}; valid names: {', '.join(FAMILY_NAMES)}")
    geom = FaceGeometry.from_points(points)
    if family in procedural.FAMILIES:
      out, mask = procedural.FAMILIES[family](geom, image, rng)
    else:
      if self.library is None or family not in self.library.families:
        raise ValueError(f"mask family {family!r} needs a MaskTheFace templates_dir holding it")
      out, mask = templates.paint_template(self.library, family, geom, image, rng)
    if is_grayscale(image):
      # A coloured mask on a gray photo is found by its colour alone. Luma of a gray pixel is
      # that pixel, so only the mask (and its blended edge) changes.
      out = np.repeat(render.gray(out)[..., None], 3, axis=2)
    return Painted(out, mask, family)


def is_grayscale(image: np.ndarray) -> bool:
  """Whether every pixel of an RGB image has R == G == B (e.g. LFW's grayscale copy)."""
  return bool(
    np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
  )


__all__ = [
  "FAMILY_NAMES",
  "MaskPainter",
  "Painted",
  "PROCEDURAL_FAMILIES",
  "TEMPLATE_FAMILIES",
  "is_grayscale",
]
