"""Synthetic grid results (results.json with every row) for the report and notebook tests."""

import json
import pathlib

import numpy as np

FAMILIES = ("surgical", "n95")


def _metrics(rng, shift):
  values = {
    "psnr": 20 + shift + rng.normal(),
    "ssim": 0.6 + rng.uniform(0, 0.1),
    "l1": 0.05 + rng.uniform(0, 0.01),
    "masked_psnr": 15 + shift + rng.normal(),
    "masked_ssim": 0.3 + rng.uniform(0, 0.1),
    "masked_l1": 0.1 + rng.uniform(0, 0.01),
    "count": 10.0,
  }
  for i, family in enumerate(FAMILIES):
    values[f"family/{family}/masked_psnr"] = values["masked_psnr"] + i
    values[f"family/{family}/masked_ssim"] = values["masked_ssim"]
    values[f"family/{family}/masked_l1"] = values["masked_l1"]
    values[f"family/{family}/count"] = 5.0
  return values


def write_results(root: pathlib.Path):
  """Two configurations x 3 seeds of synthetic results.json with every row, one unreadable.

  Returns:
    (root, {group: [{'raw': metrics, 'composited': metrics} per seed]}, the masked-input
    metrics, Telea's metrics).
  """
  rng = np.random.default_rng(0)
  expected = {}
  baseline = {k: v - 3 for k, v in _metrics(np.random.default_rng(99), 0).items()}
  telea = {k: v - 1 for k, v in _metrics(np.random.default_rng(98), 0).items()}
  for group, arch, shift in [("unet/default", "unet", 0.0), ("resnet_unet/default", "resnet", 2)]:
    for seed in range(3):
      workdir = root / group / f"seed={seed}"
      workdir.mkdir(parents=True)
      test = _metrics(rng, shift)
      test["identity_similarity"] = 0.9 + 0.01 * seed
      composited = _metrics(rng, shift + 0.5)
      result = {
        "config_name": arch,
        "architecture": arch,
        "num_params": 1000 + int(shift),
        "img_per_sec": 10.0 + seed,
        "test": test,
        "baseline": baseline,
        "rows": {
          "model_composited": composited,
          "telea": telea,
          "clean": {"identity_other_photo_rate": 0.96},
          "model": {"identity_other_photo_rate": 0.6 + 0.05 * seed + 0.1 * shift},
          "masked_input": {"identity_other_photo_rate": 0.62},
        },
        "steps": 10,
      }
      (workdir / "results.json").write_text(json.dumps(result))
      if arch == "unet":  # The other group is named from its folders.
        (workdir / "point.json").write_text(json.dumps({"group": group, "seed": seed}))
      expected.setdefault(group, []).append({"raw": test, "composited": composited})
      (workdir / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "train_loss": 1.0 / s}) for s in (1, 2)) + "\n"
      )
  bad = root / "broken" / "seed=0"
  bad.mkdir(parents=True)
  (bad / "results.json").write_text("{not json")
  return root, expected, baseline, telea
