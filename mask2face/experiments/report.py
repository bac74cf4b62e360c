"""Result tables of a grid: every `results.json` under a root, grouped over seeds.

  python -m mask2face.experiments.report --root=/runs/arch [--out=/runs/arch/report]

writes `summary.csv` / `summary.md`, `families.csv` / `families.md` (the masked-region
metrics per mask family) and `runs.csv` (one row per run). Each configuration has two rows,
its prediction composited into the input (the prediction inside the slightly dilated mask,
the input outside: the headline, what `mask2face.predict` shows) and its raw prediction, and
the tables start with the rows every model is compared with: the clean photo (the identity
ceiling), the masked input, OpenCV's Telea and Navier-Stokes inpainting. Every figure is the
mean over seeds ± the half-width of its 95% interval (`stats.summarize`); the best row of each
column is in bold and rows that differ from it significantly (Welch's t-test, p < 0.05) are
marked `*`. The notebook `notebooks/results.ipynb` uses the same functions, plus
`load_curves` and `eval_images` for training curves and image grids.

A results.json holds the model's raw row as `test`, the masked input's as `baseline`, and
the other rows under `rows` ({row name: metrics}); identity metrics of `model` or
`masked_input` found under `rows` join those rows.
"""

import json
import os
import pathlib
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from absl import app, flags, logging

from mask2face import atomic, cli
from mask2face.experiments import stats

# A configuration's rows: results.json row name -> the `output` column.
MODEL_ROWS = {"model_composited": "composited", "model": "raw"}
# The rows every configuration is compared with, in table order: row name -> label.
BASELINE_ROWS = {
  "clean": "clean photo (ceiling)",
  "masked_input": "masked input",
  "telea": "OpenCV Telea",
  "navier_stokes": "OpenCV Navier-Stokes",
}
# Rows that are no contender for the best of a column (the clean photo is its own target).
CEILING_ROWS = ("clean",)
BASELINE = BASELINE_ROWS["masked_input"]
# Table columns, in order, with how many decimals they are shown with.
METRICS = {
  "masked_psnr": 2,
  "masked_ssim": 4,
  "masked_l1": 4,
  "psnr": 2,
  "ssim": 4,
  "l1": 4,
  # Verification against another photo of the person (mask2face.identity): the one that says
  # whether unmasking gives the face back; then against the test photo itself.
  "identity_other_photo_rate": 3,
  "identity_other_photo_distance": 3,
  "identity_same_photo_rate": 3,
  "identity_same_photo_distance": 3,
  "identity_similarity": 3,
}
LOWER_IS_BETTER = frozenset(
  {"masked_l1", "l1", "identity_other_photo_distance", "identity_same_photo_distance"}
)
FAMILY_METRICS = ("masked_psnr", "masked_ssim", "masked_l1")
STAT_SUFFIXES = ("mean", "std", "ci95", "n", "p", "best")
LEGEND = (
  "Mean over seeds ± half-width of the 95% interval (t distribution). Bold: the best row of "
  f"the column; *: differs from it significantly (Welch's t-test, p < {stats.ALPHA}). "
  "`composited`: the prediction inside the slightly dilated mask, the input outside; `raw`: "
  "the prediction as it is.\n"
)
_SEED_DIR = re.compile(r"^seed=(-?\d+)$")


def find_results(root: str | os.PathLike) -> list[pathlib.Path]:
  """Every results.json under `root`, sorted."""
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f"{root}: no such results folder")
  return sorted(root.rglob("results.json"))


def _read_json(path: pathlib.Path) -> dict:
  try:
    data = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: unreadable JSON ({e})") from e
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
  return data


def _run_identity(root: pathlib.Path, workdir: pathlib.Path) -> tuple[str, str, int | None]:
  """(run, group, seed): from the runner's point.json, else from the folder names."""
  run = workdir.relative_to(root).as_posix() if workdir != root else workdir.name
  point_file = workdir / "point.json"
  if point_file.is_file():
    try:
      point = _read_json(point_file)
      return run, str(point["group"]), int(point["seed"])
    except (ValueError, KeyError, TypeError) as e:
      logging.warning("%s: ignored (%s); naming the run by its folder", point_file, e)
  parts = run.split("/")
  match = _SEED_DIR.match(parts[-1])
  if match and len(parts) > 1:
    return run, "/".join(parts[:-1]), int(match.group(1))
  return run, run, None


def result_rows(result: Mapping) -> dict[str, dict]:
  """{row name: metrics} of one results.json: `test` is `model`, `baseline` `masked_input`.

  A training run's results.json names those two rows `test` and `baseline`; an evaluation's
  (`mask2face.evaluate`) holds every row under `rows`. Both read alike.
  """
  rows = {
    "model": dict(result.get("test") or {}),
    "masked_input": dict(result.get("baseline") or {}),
  }
  for name, values in (result.get("rows") or {}).items():
    if isinstance(values, Mapping):
      # mask2face.evaluation names the masked input's row 'baseline'.
      name = "masked_input" if name == "baseline" else str(name)
      rows.setdefault(name, {}).update(values)
  return rows


def load_runs(root: str | os.PathLike) -> pd.DataFrame:
  """One row per results.json under `root`.

  Columns: run (its workdir relative to root), group (the configuration: the run without its
  seed), seed, config_name, architecture, num_params, img_per_sec, steps, wall_secs,
  device_kind, git_commit, and every metric of every row as `<row>/<metric>`
  (`model/masked_psnr`, `model_composited/family/n95/masked_psnr`, `telea/psnr`, ...).
  Unreadable files are logged, skipped and listed in `df.attrs['bad_files']`.
  """
  root = pathlib.Path(root).expanduser()
  rows, bad = [], []
  for path in find_results(root):
    try:
      result = _read_json(path)
      if not isinstance(result.get("test") or (result.get("rows") or {}).get("model"), dict):
        raise ValueError(f"{path}: no 'test' metrics")
    except ValueError as e:
      logging.warning("Skipping %s", e)
      bad.append(str(path))
      continue
    run, group, seed = _run_identity(root, path.parent)
    row = {
      "run": run,
      "group": group,
      "seed": seed,
      "config_name": result.get("config_name"),
      "architecture": result.get("architecture"),
      "num_params": result.get("num_params"),
      "img_per_sec": result.get("img_per_sec"),
      "steps": result.get("steps"),
      "wall_secs": result.get("wall_secs"),
      "device_kind": result.get("device_kind"),
      "git_commit": result.get("git_commit"),
    }
    for name, values in result_rows(result).items():
      row.update({f"{name}/{k}": _number(v) for k, v in values.items()})
    rows.append(row)
  if bad:
    logging.warning("%d results.json file(s) could not be read: %s", len(bad), ", ".join(bad))
  runs = pd.DataFrame(rows)
  runs.attrs["bad_files"] = bad
  return runs


def _number(value) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    return float("nan")


def _entries(runs: pd.DataFrame) -> list[dict]:
  """Every table row's identity and runs: the baselines (pooled over every run: the same
  test images and masks for every run of one data setup), then each configuration's two."""
  out = [
    {
      "configuration": label,
      "output": "ceiling" if name in CEILING_ROWS else "baseline",
      "architecture": "-",
      "frame": runs,
      "row": name,
    }
    for name, label in BASELINE_ROWS.items()
  ]
  for group, frame in runs.groupby("group", sort=True):
    for name, output in MODEL_ROWS.items():
      arch = frame["architecture"].iloc[0]
      out.append(
        {
          "configuration": group,
          "output": output,
          "architecture": arch,
          "frame": frame,
          "row": name,
        }
      )
  return out


def _summaries(frame: pd.DataFrame, columns: Mapping[str, str]) -> dict[str, float] | None:
  """`<metric>_mean/_std/_ci95/_n` for {frame column: metric}; None when nothing is there."""
  out, found = {}, False
  for column, metric in columns.items():
    values = frame[column].astype(float) if column in frame else pd.Series(dtype=float)
    summary = stats.summarize(values)
    found |= summary["n"] > 0
    out.update({f"{metric}_{k}": summary[k] for k in ("mean", "std", "ci95", "n")})
  return out if found else None


def summary_table(runs: pd.DataFrame, metrics: Sequence[str] = tuple(METRICS)) -> pd.DataFrame:
  """Baseline rows first, then each configuration's composited and raw rows.

  Columns: configuration, output (`ceiling`, `baseline`, `composited`, `raw`), architecture,
  seeds, num_params, img_per_sec, and per metric `<metric>_mean`, `_std`, `_ci95` (95%
  interval half-width), `_n`, `_best`, `_p` (see `stats.mark_best`). Configurations are sorted by
  composited masked PSNR (else raw), best first; rows without any metric are left out.
  """
  rows = []
  for entry in _entries(runs):
    frame, name = entry["frame"], entry["row"]
    summaries = _summaries(frame, {f"{name}/{m}": m for m in metrics})
    if summaries is None:
      continue
    is_model = entry["output"] in MODEL_ROWS.values()
    count = frame[[c for c in frame if c.startswith(f"{name}/")]].notna().any(axis=1).sum()
    rows.append(
      {
        "configuration": entry["configuration"],
        "output": entry["output"],
        "architecture": entry["architecture"],
        "seeds": int(count),
        "num_params": _number(frame["num_params"].iloc[0]) if is_model else 0.0,
        "img_per_sec": float(frame["img_per_sec"].astype(float).mean()) if is_model else np.nan,
        **summaries,
      }
    )
  table = pd.DataFrame(rows)
  if table.empty:
    return table
  table = _sort_models(table, "masked_psnr_mean")
  return stats.mark_best(table, metrics, lower_is_better=LOWER_IS_BETTER)


def _sort_models(table: pd.DataFrame, key: str) -> pd.DataFrame:
  """Baselines in their order, then configurations by `key` of their composited row (else raw),
  best first, each configuration's rows together (composited first)."""
  is_model = table["output"].isin(list(MODEL_ROWS.values()))
  models = table[is_model]
  if key in table and not models.empty:
    order = list(MODEL_ROWS.values())
    score = {}
    for config, frame in models.groupby("configuration", sort=False):
      by_output = dict(zip(frame["output"], frame[key].astype(float)))
      values = [by_output[o] for o in order if np.isfinite(by_output.get(o, np.nan))]
      score[config] = values[0] if values else -np.inf
    rank = models["configuration"].map(score)
    within = models["output"].map({o: i for i, o in enumerate(order)})
    models = models.assign(_rank=-rank, _within=within).sort_values(
      ["_rank", "configuration", "_within"], kind="stable"
    )
    models = models.drop(columns=["_rank", "_within"])
  return pd.concat([table[~is_model], models], ignore_index=True)


def family_table(runs: pd.DataFrame, metrics: Sequence[str] = FAMILY_METRICS) -> pd.DataFrame:
  """One row per (table row, mask family): baselines first, `_best`/`_p` within each family."""
  families = sorted(
    {c.split("/")[2] for c in runs.columns if c.count("/") == 3 and c.split("/")[1] == "family"}
  )
  rows = []
  for entry in _entries(runs):
    frame, name = entry["frame"], entry["row"]
    for family in families:
      columns = {f"{name}/family/{family}/{m}": m for m in metrics}
      summaries = _summaries(frame, columns)
      if summaries is None:
        continue
      count = f"{name}/family/{family}/count"
      rows.append(
        {
          "configuration": entry["configuration"],
          "output": entry["output"],
          "family": family,
          "examples": float(frame[count].mean()) if count in frame else np.nan,
          **summaries,
        }
      )
  table = pd.DataFrame(rows)
  if table.empty:
    return table
  return stats.mark_best(table, metrics, lower_is_better=LOWER_IS_BETTER, within=("family",))


def format_table(table: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
  """Metric columns as 'mean ± ci95' strings (bold: best; *: differs from it), rest readable.

  Metrics without any value in the table are left out.
  """
  if metrics is None:
    metrics = [m for m in (*METRICS, *FAMILY_METRICS) if f"{m}_mean" in table]
    metrics = list(dict.fromkeys(metrics))
  metrics = [m for m in metrics if np.isfinite(table[f"{m}_mean"].astype(float)).any()]
  stat_columns = {f"{m}_{k}" for m in METRICS for k in STAT_SUFFIXES}
  out = pd.DataFrame(index=table.index)
  for column in table.columns:
    if column in stat_columns:
      continue
    values = table[column]
    if column == "num_params":
      out["params"] = [f"{int(v):,}" if v and np.isfinite(v) else "-" for v in values]
    elif column == "img_per_sec":
      out["img/s"] = [f"{v:.1f}" if np.isfinite(v) else "-" for v in values.astype(float)]
    elif column == "examples":
      out[column] = [f"{v:.0f}" if np.isfinite(v) else "-" for v in values.astype(float)]
    else:
      out[column] = values
  for metric in metrics:
    digits = METRICS.get(metric, 4)
    cells = []
    for _, row in table.iterrows():
      cell = _plus_minus(row[f"{metric}_mean"], row[f"{metric}_ci95"], digits)
      if row.get(f"{metric}_best", False):
        cell = f"**{cell}**"
      elif row.get(f"{metric}_p", np.nan) < stats.ALPHA:
        cell += " *"
      cells.append(cell)
    out[metric] = cells
  return out


def _plus_minus(mean: float, half_width: float, digits: int) -> str:
  if not np.isfinite(mean):
    return "-"
  if not np.isfinite(half_width):
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {half_width:.{digits}f}"


def to_markdown(table: pd.DataFrame) -> str:
  """A GitHub-flavoured Markdown table (pandas' own needs the optional `tabulate`)."""

  def cell(value) -> str:
    return str(value).replace("|", "\\|")

  lines = [
    "| " + " | ".join(cell(c) for c in table.columns) + " |",
    "|" + "|".join("---" for _ in table.columns) + "|",
  ]
  for row in table.itertuples(index=False):
    lines.append("| " + " | ".join(cell(v) for v in row) + " |")
  return "\n".join(lines) + "\n"


def load_curves(root: str | os.PathLike) -> pd.DataFrame:
  """Every run's metrics.jsonl in one long frame: run, group, seed, step, and the scalars.

  Train and eval lines of the same step stay separate rows (their columns are NaN where the
  other kind logged); unreadable lines are skipped with a warning naming the file and line.
  """
  root = pathlib.Path(root).expanduser()
  frames = []
  for path in sorted(root.rglob("metrics.jsonl")):
    run, group, seed = _run_identity(root, path.parent)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if not line.strip():
        continue
      try:
        records.append(json.loads(line))
      except ValueError as e:
        logging.warning("%s:%d: skipped an unreadable line (%s)", path, number, e)
    if records:
      frame = pd.DataFrame(records)
      frame.insert(0, "seed", seed)
      frame.insert(0, "group", group)
      frame.insert(0, "run", run)
      frames.append(frame)
  return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def eval_images(root: str | os.PathLike, runs: pd.DataFrame | None = None) -> dict[str, str]:
  """{configuration: the latest validation grid PNG of its lowest seed} (masked | pred | target)."""
  root = pathlib.Path(root).expanduser()
  runs = load_runs(root) if runs is None else runs
  out = {}
  for group, frame in runs.sort_values(["group", "seed"]).groupby("group", sort=True):
    for run in frame["run"]:
      pngs = sorted((root / run / "images").glob("eval_*.png"))
      if pngs:
        out[group] = str(pngs[-1])
        break
  return out


REPORT_FILES = ("runs.csv", "summary.csv", "summary.md", "families.csv", "families.md")


def write_report(
  root: str | os.PathLike, out: str | os.PathLike | None = None, *, overwrite: bool = False
) -> dict[str, str]:
  """Writes the CSV and Markdown tables of `root` into `out` (default: `root`).

  Returns:
    {'summary.csv': path, ...}: every file written.

  Raises:
    ValueError: no readable results.json under `root`.
    cli.UserError: tables already in `out` and `overwrite` is False.
  """
  root = pathlib.Path(root).expanduser()
  out = pathlib.Path(out).expanduser() if out else root
  cli.refuse_existing([out / name for name in REPORT_FILES], overwrite=overwrite)
  runs = load_runs(root)
  if runs.empty:
    raise cli.UserError(f"{root}: no readable results.json found")
  out.mkdir(parents=True, exist_ok=True)
  summary = summary_table(runs)
  families = family_table(runs)
  written = {}
  for name, text in {
    "runs.csv": runs.to_csv(index=False),
    "summary.csv": summary.to_csv(index=False),
    "summary.md": to_markdown(format_table(summary)) + "\n" + LEGEND,
    "families.csv": families.to_csv(index=False),
    "families.md": to_markdown(format_table(families)) + "\n" + LEGEND
    if not families.empty
    else "",
  }.items():
    atomic.write_text(out / name, text)
    written[name] = str(out / name)
  logging.info(
    "%d runs in %d configurations from %s; tables in %s",
    len(runs),
    runs["group"].nunique(),
    root,
    out,
  )
  return written


def define_flags() -> None:
  """The CLI's flags (defined only when run as a program, so importing this module is free)."""
  flags.DEFINE_string("root", None, "A grid root (searched recursively for results.json).")
  flags.DEFINE_string("out", None, "Where the tables go (default: --root).")
  flags.DEFINE_bool("overwrite", False, "Replace the tables of an earlier report.")
  flags.mark_flags_as_required(["root"])


@cli.one_line_errors
def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  try:
    written = write_report(flags.FLAGS.root, flags.FLAGS.out, overwrite=flags.FLAGS.overwrite)
  except FileNotFoundError as e:  # No such --root.
    raise cli.UserError(str(e)) from e
  cli.emit(pathlib.Path(written["summary.md"]).read_text())
  cli.emit("Wrote " + ", ".join(written.values()))


if __name__ == "__main__":
  define_flags()
  app.run(main)
