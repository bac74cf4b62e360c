"""Tests for mask2face.baselines and the composite of mask2face.metrics: classical inpainting
with the true mask, and a prediction pasted into its input, on real masked faces."""

import jax
import numpy as np
import pytest
import scipy.ndimage

from mask2face import baselines, metrics
from mask2face.data import dlib_faces, images, pairs


@pytest.fixture(scope="module")
def real_batches(shared_data):
  """Evaluation-like batches of 6 real faces (3 UTKFace colour, 3 LFW gray) at 64 and 256 px."""
  photos = sorted((shared_data / "utkface").glob("*.jpg"))[:3]
  photos += sorted((shared_data / "lfw_gray").glob("*/*.jpg"))[:3]
  faces = []
  for path in photos:
    image = images.load_image(path)
    faces.append((image, dlib_faces.find_faces(image)[0].points))
  out = {}
  for size in (64, 256):
    options = pairs.PairOptions(image_size=size)
    made = [
      pairs.make_pair(image, points, np.random.default_rng(i), options, augment=False)
      for i, (image, points) in enumerate(faces)
    ]
    out[size] = {k: np.stack([p[k] for p in made]) for k in made[0]}
  return out


def _random_batch(seed, shape=(3, 40, 40, 3)):
  rng = np.random.default_rng(seed)
  masked = rng.uniform(size=shape).astype(np.float32)
  pred = rng.uniform(size=shape).astype(np.float32)
  mask = np.zeros(shape[:3] + (1,), np.float32)
  for i in range(shape[0]):
    y0, x0 = rng.integers(4, 20, size=2)
    mask[i, y0 : y0 + 12, x0 : x0 + 10] = 1.0
  mask[0, 0, 0] = 0.7  # A corner pixel: thresholded in, and dilation must stop at the edge.
  return pred, masked, mask


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("dilate_px", [0, 1, 3])
def test_composite_is_the_input_outside_the_dilated_mask(use_jit, dilate_px):
  pred, masked, mask = _random_batch(dilate_px)
  fn = metrics.composite
  if use_jit:
    fn = jax.jit(metrics.composite, static_argnums=3)
  out = np.asarray(fn(pred, masked, mask, dilate_px))
  # An independent dilation: scipy's, with the same square window.
  region = np.stack(
    [
      scipy.ndimage.binary_dilation(m[..., 0] > 0.5, np.ones((3, 3)), iterations=dilate_px)
      if dilate_px
      else m[..., 0] > 0.5
      for m in mask
    ]
  )[..., None]
  assert region.sum() > (mask > 0.5).sum() or dilate_px == 0
  outside = np.broadcast_to(~region, out.shape)
  # Bit for bit: not merely close.
  assert np.array_equal(out[outside].view(np.uint32), masked[outside].view(np.uint32))
  inside = np.broadcast_to(region, out.shape)
  assert np.array_equal(out[inside], pred[inside])


def test_default_dilation_scales_with_the_image():
  assert [metrics.default_dilate_px(s) for s in (32, 64, 128, 256, 512)] == [1, 1, 2, 4, 8]


def test_composited_metrics_score_the_composite():
  pred, masked, mask = _random_batch(1)
  clean = np.clip(masked + 0.05, 0, 1)
  batch = {"masked": masked, "clean": clean, "mask": mask}
  got = metrics.composited_metrics(pred, batch, dilate_px=2)
  want = metrics.image_metrics(metrics.composite(pred, masked, mask, 2), clean, mask)
  for name in metrics.METRIC_NAMES:
    np.testing.assert_array_equal(got[name], want[name])
  # Outside the mask the composite is the input, so whole-image scores move towards it.
  raw = metrics.image_metrics(pred, clean, mask)
  assert np.all(got["psnr"] > raw["psnr"])


@pytest.mark.parametrize("size", [64, 256])
def test_default_dilation_covers_the_painted_masks_blended_edge(real_batches, size):
  """The clean face composited into its masked input is the clean face, pixel for pixel: the
  dilated mask reaches every pixel the painted mask's blended edge touched."""
  batch = real_batches[size]
  out = metrics.composite(
    batch["clean"], batch["masked"], batch["mask"], metrics.default_dilate_px(size)
  )
  np.testing.assert_array_equal(np.asarray(out), batch["clean"])
  # Without the dilation the edge shows (so the test above can fail).
  undilated = np.asarray(metrics.composite(batch["clean"], batch["masked"], batch["mask"], 0))
  assert not np.array_equal(undilated, batch["clean"])


def test_inpainting_fills_masks_better_than_leaving_them(real_batches):
  batch = real_batches[64]
  images_ = baselines.comparison_images(batch, batch["masked"])
  rows = baselines.comparison_rows(batch, batch["masked"], images=images_)
  assert set(rows) == set(baselines.ROW_NAMES)
  masked_input = jax.device_get(metrics.baseline_metrics(batch))
  for method in baselines.METHODS:
    assert set(rows[method]) == set(metrics.METRIC_NAMES)
    assert rows[method]["masked_psnr"].shape == (6,)
    gain = rows[method]["masked_psnr"] - masked_input["masked_psnr"]
    # Measured: +4.5 dB on average; a face or two may lose a little.
    assert gain.mean() > 2.0 and (gain > 0).sum() >= 4, (method, gain)
    assert np.all(rows[method]["masked_l1"] < masked_input["masked_l1"] + 0.01)
    # Only the pixels under the mask change, bit for bit.
    outside = np.broadcast_to(batch["mask"] < 0.5, batch["masked"].shape)
    assert np.array_equal(images_[method][outside], batch["masked"][outside])
  # The masked input as the "prediction" composites back to itself.
  np.testing.assert_array_equal(images_["model_composited"], batch["masked"])
  np.testing.assert_allclose(
    rows["model_composited"]["masked_psnr"], masked_input["masked_psnr"], rtol=1e-6
  )
  assert not np.allclose(images_["telea"], images_["navier_stokes"])


def test_inpaint_rejects_bad_input():
  pred, masked, mask = _random_batch(0)
  with pytest.raises(ValueError, match="unknown inpainting method"):
    baselines.inpaint(masked, mask, "photoshop")
  with pytest.raises(ValueError, match="does not match"):
    baselines.inpaint(masked, mask[:, :20], "telea")
  # [B, H, W] masks work too, and give the same result as [B, H, W, 1].
  np.testing.assert_array_equal(
    baselines.inpaint(masked, mask[..., 0]), baselines.inpaint(masked, mask)
  )
