"""Tests for the result tables (mask2face.experiments.report, .stats) on synthetic results.json:
rows, 95% intervals and significance marks against hand-computed and scipy values."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import synthetic_results

from mask2face.experiments import report, stats


@pytest.fixture
def results_root(tmp_path):
  return synthetic_results.write_results(tmp_path / "grid")


def test_summarize_gives_the_t_interval():
  # Hand-computed: [1, 2, 3] has mean 2, std 1; t(0.975, 2) = 4.302653 -> half-width 2.484138.
  s = stats.summarize([1.0, 2.0, 3.0, float("nan")])
  assert s["n"] == 3 and s["mean"] == 2.0 and s["std"] == 1.0
  np.testing.assert_allclose(s["ci95"], 4.302653 / np.sqrt(3), rtol=1e-6)
  values = np.random.default_rng(0).normal(size=5)
  low, high = scipy.stats.t.interval(0.95, 4, loc=values.mean(), scale=scipy.stats.sem(values))
  np.testing.assert_allclose(stats.summarize(values)["ci95"], (high - low) / 2, rtol=1e-12)
  assert np.isnan(stats.summarize([5.0])["ci95"]) and stats.summarize([])["n"] == 0


def test_welch_matches_hand_values_and_scipy():
  # Hand-computed: [1, 2, 3] vs [4, 5, 6]: t = -3 / sqrt(2/3) = -3.674235, df = 4, p = 0.0213116.
  t, df, p = stats.welch(2.0, 1.0, 3, 5.0, 1.0, 3)
  np.testing.assert_allclose([t, df, p], [-3.674235, 4.0, 0.0213116], rtol=1e-5)
  rng = np.random.default_rng(1)
  a, b = rng.normal(0, 1, size=4), rng.normal(1, 3, size=6)
  want = scipy.stats.ttest_ind(a, b, equal_var=False)
  t, df, p = stats.welch(a.mean(), a.std(ddof=1), 4, b.mean(), b.std(ddof=1), 6)
  np.testing.assert_allclose([t, df, p], [want.statistic, want.df, want.pvalue], rtol=1e-10)
  # A row without spread (a baseline) against one with spread: a one-sample test.
  _, df, p = stats.welch(0.0, 0.0, 5, b.mean(), b.std(ddof=1), 6)
  np.testing.assert_allclose(df, 5)
  np.testing.assert_allclose(p, scipy.stats.ttest_1samp(b, 0.0).pvalue, rtol=1e-10)
  assert stats.welch(1.0, 0.0, 3, 1.0, 0.0, 3)[2] == 1.0
  assert stats.welch(1.0, 0.0, 3, 2.0, 0.0, 3)[2] == 0.0
  assert np.isnan(stats.welch(1.0, np.nan, 1, 2.0, 1.0, 3)[2])


def test_mark_best_marks_significant_differences_from_the_best_row():
  table = pd.DataFrame(
    {
      "configuration": ["ceiling", "a", "b", "c", "d"],
      "output": ["ceiling", "raw", "raw", "raw", "raw"],
      "psnr_mean": [99.0, 20.0, 19.9, 15.0, 30.0],
      "psnr_std": [0.0, 0.5, 0.5, 0.5, np.nan],
      "psnr_n": [3, 3, 3, 3, 1],
      "l1_mean": [0.0, 0.10, 0.30, 0.11, 0.2],
      "l1_std": [0.0, 0.01, 0.01, 0.05, np.nan],
      "l1_n": [3, 3, 3, 3, 1],
    }
  )
  out = stats.mark_best(table, ["psnr", "l1"], lower_is_better={"l1"})
  # The ceiling is no contender; d (one seed, highest mean) is the best but cannot be tested.
  assert out["psnr_best"].tolist() == [False, False, False, False, True]
  assert out["psnr_p"].isna().all()
  assert out["l1_best"].tolist() == [False, True, False, False, False]
  p = out["l1_p"]
  np.testing.assert_allclose(p[2], stats.welch(0.10, 0.01, 3, 0.30, 0.01, 3)[2])
  assert p[2] < stats.ALPHA < p[3] and np.isnan(p[1]) and np.isnan(p[4])


def test_report_rows_intervals_marks_and_files(results_root, tmp_path):
  root, expected, baseline, telea = results_root
  runs = report.load_runs(root)
  assert len(runs) == 6 and len(runs.attrs["bad_files"]) == 1
  assert set(runs["group"]) == set(expected)
  assert {"model/masked_psnr", "model_composited/masked_psnr", "telea/psnr"} <= set(runs)
  assert "masked_input/family/n95/masked_psnr" in runs
  summary = report.summary_table(runs)
  labels = list(zip(summary["configuration"], summary["output"]))
  # Baselines first (Navier-Stokes has no results here), then the better configuration first,
  # its composited row (the headline) before its raw row.
  assert labels == [
    ("clean photo (ceiling)", "ceiling"),
    (report.BASELINE, "baseline"),
    ("OpenCV Telea", "baseline"),
    ("resnet_unet/default", "composited"),
    ("resnet_unet/default", "raw"),
    ("unet/default", "composited"),
    ("unet/default", "raw"),
  ]
  rows = summary.set_index(["configuration", "output"])
  for group, tests in expected.items():
    for output in ("composited", "raw"):
      row = rows.loc[(group, output)]
      assert row["seeds"] == 3
      for metric in ("masked_psnr", "psnr", "ssim", "l1"):
        values = np.array([t[output][metric] for t in tests])
        np.testing.assert_allclose(row[f"{metric}_mean"], values.mean(), rtol=1e-12)
        np.testing.assert_allclose(row[f"{metric}_std"], values.std(ddof=1), rtol=1e-12)
        half = scipy.stats.t.ppf(0.975, 2) * values.std(ddof=1) / np.sqrt(3)
        np.testing.assert_allclose(row[f"{metric}_ci95"], half, rtol=1e-10)
  base = rows.loc[(report.BASELINE, "baseline")]
  np.testing.assert_allclose(base["masked_psnr_mean"], baseline["masked_psnr"])
  np.testing.assert_allclose(base["masked_psnr_ci95"], 0.0, atol=1e-12)
  assert base["seeds"] == 6  # Pooled over every run.
  np.testing.assert_allclose(
    rows.loc[("OpenCV Telea", "baseline"), "psnr_mean"], telea["psnr"], rtol=1e-12
  )
  identity = rows["identity_other_photo_rate_mean"]
  np.testing.assert_allclose(identity[("clean photo (ceiling)", "ceiling")], 0.96)
  np.testing.assert_allclose(identity[(report.BASELINE, "baseline")], 0.62)
  np.testing.assert_allclose(identity[("resnet_unet/default", "raw")], 0.85)
  # The best row of each column, against the rows' own Welch p-values (the clean photo, the
  # identity ceiling, is no contender).
  assert rows["identity_other_photo_rate_best"].sum() == 1
  assert rows.loc[("resnet_unet/default", "raw"), "identity_other_photo_rate_best"]
  best_label = rows["masked_psnr_mean"].drop(("clean photo (ceiling)", "ceiling")).idxmax()
  assert best_label[0] == "resnet_unet/default"
  assert rows["masked_psnr_best"].tolist() == [label == best_label for label in rows.index]
  worst = rows.loc[(report.BASELINE, "baseline")]
  best = rows.loc[best_label]
  _, _, p = stats.welch(
    *best[["masked_psnr_mean", "masked_psnr_std", "masked_psnr_n"]],
    *worst[["masked_psnr_mean", "masked_psnr_std", "masked_psnr_n"]],
  )
  np.testing.assert_allclose(worst["masked_psnr_p"], p)
  assert p < stats.ALPHA

  families = report.family_table(runs)
  assert set(families["family"]) == set(synthetic_results.FAMILIES)
  assert set(families["configuration"]) == {report.BASELINE, "OpenCV Telea", *expected}
  row = families.set_index(["configuration", "output", "family"]).loc[
    ("unet/default", "raw", "n95")
  ]
  want = np.array([t["raw"]["family/n95/masked_psnr"] for t in expected["unet/default"]])
  np.testing.assert_allclose(row["masked_psnr_mean"], want.mean())
  np.testing.assert_allclose(row["masked_psnr_std"], want.std(ddof=1))
  assert families.groupby("family")["masked_psnr_best"].sum().tolist() == [1, 1]

  out = tmp_path / "tables"
  written = report.write_report(root, out)
  assert set(written) == {"runs.csv", "summary.csv", "summary.md", "families.csv", "families.md"}
  csv = pd.read_csv(out / "summary.csv")
  np.testing.assert_allclose(csv["masked_psnr_mean"], summary["masked_psnr_mean"])
  markdown = (out / "summary.md").read_text()
  table_lines = [line for line in markdown.splitlines() if line.startswith("|")]
  assert len(table_lines) == 2 + len(summary)  # Header, rule, one line per row.
  assert "95% interval" in markdown and "Welch" in markdown
  mean, half = best[["masked_psnr_mean", "masked_psnr_ci95"]]
  assert f"**{mean:.2f} ± {half:.2f}**" in markdown
  mean, half = worst[["masked_psnr_mean", "masked_psnr_ci95"]]
  assert f"{mean:.2f} ± {half:.2f} *" in markdown
  assert "identity_other_photo_rate" in markdown and "navier" not in markdown.lower()
  assert "n95" in (out / "families.md").read_text()


def test_report_reads_results_without_extra_rows(results_root):
  """A results.json from before the comparison rows: the raw and masked-input rows only."""
  root, expected, _, _ = results_root
  for path in root.rglob("results.json"):
    try:
      result = json.loads(path.read_text())
    except ValueError:
      continue
    del result["rows"]
    path.write_text(json.dumps(result))
  summary = report.summary_table(report.load_runs(root))
  assert list(summary["output"]) == ["baseline", "raw", "raw"]
  assert summary["configuration"].iloc[0] == report.BASELINE
  markdown = report.to_markdown(report.format_table(summary))
  assert "identity_similarity" in markdown and "identity_other_photo_rate" not in markdown


def test_report_curves_images_and_cli(results_root, tmp_path):
  root, expected, _, _ = results_root
  curves = report.load_curves(root)
  assert len(curves) == 12 and set(curves["group"]) == set(expected)
  image = root / "unet/default/seed=1/images"
  image.mkdir()
  (image / "eval_0000005.png").write_bytes(b"png")
  (image / "eval_0000010.png").write_bytes(b"png")
  assert report.eval_images(root) == {"unet/default": str(image / "eval_0000010.png")}

  out = subprocess.run(
    [sys.executable, "-m", "mask2face.experiments.report", f"--root={root}"],
    capture_output=True,
    text=True,
    check=True,
    timeout=120,
  )
  assert report.BASELINE in out.stdout and "OpenCV Telea" in out.stdout
  assert "Welch" in out.stdout and (root / "summary.csv").exists()
  with pytest.raises(FileNotFoundError, match="no such results folder"):
    report.load_runs(tmp_path / "nowhere")
