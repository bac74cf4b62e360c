"""Result tables of a grid: every `results.json` under a root, grouped over seeds.

  python -m mask2face.experiments.report --root=/runs/arch [--out=/runs/arch/report]

writes `summary.csv` / `summary.md` (one row per configuration: mean and std over seeds of the
whole-image and masked-region PSNR/SSIM/L1 and identity similarity, parameters, img/s, plus the
masked input itself as the baseline row), `families.csv` / `families.md` (the same per mask
family) and `runs.csv` (one row per run). The notebook `notebooks/results.ipynb` uses the same
functions, plus `load_curves` and `eval_images` for training curves and image grids.
"""

import json
import os
import pathlib
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
from absl import app, flags, logging

from mask2face import atomic, cli

BASELINE = "masked input (baseline)"
# Table columns, in order, with how many decimals they are shown with.
METRICS = {
  "masked_psnr": 2,
  "masked_ssim": 4,
  "masked_l1": 4,
  "psnr": 2,
  "ssim": 4,
  "l1": 4,
  "identity_similarity": 3,
}
FAMILY_METRICS = ("masked_psnr", "masked_ssim", "masked_l1")
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


def load_runs(root: str | os.PathLike) -> pd.DataFrame:
  """One row per results.json under `root`.

  Columns: run (its workdir relative to root), group (the configuration: the run without its
  seed), seed, config_name, architecture, num_params, img_per_sec, steps, wall_secs,
  device_kind, git_commit, every test metric by name (`masked_psnr`, `family/<f>/<m>`, ...) and
  the masked-input baseline's as `baseline/<name>`. Unreadable files are logged, skipped and
  listed in `df.attrs['bad_files']`.
  """
  root = pathlib.Path(root).expanduser()
  rows, bad = [], []
  for path in find_results(root):
    try:
      result = _read_json(path)
      if not isinstance(result.get("test"), dict):
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
    row.update({k: _number(v) for k, v in result["test"].items()})
    row.update({f"baseline/{k}": _number(v) for k, v in (result.get("baseline") or {}).items()})
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


def _mean_std(frame: pd.DataFrame, columns: Sequence[str]) -> dict[str, float]:
  out = {}
  for name in columns:
    values = frame[name].astype(float) if name in frame else pd.Series(dtype=float)
    values = values.dropna()
    out[f"{name}_mean"] = float(values.mean()) if len(values) else np.nan
    # Sample std over seeds (ddof=1); undefined with a single seed.
    out[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else np.nan
  return out


def summary_table(runs: pd.DataFrame, metrics: Sequence[str] = tuple(METRICS)) -> pd.DataFrame:
  """One row per configuration (seeds grouped) plus the baseline row first.

  Columns: configuration, architecture, seeds, num_params, img_per_sec, and `<metric>_mean`,
  `<metric>_std` for each metric. Models are sorted by masked PSNR, best first.
  """
  rows = []
  for group, frame in runs.groupby("group", sort=True):
    row = {
      "configuration": group,
      "architecture": frame["architecture"].iloc[0],
      "seeds": len(frame),
      "num_params": _number(frame["num_params"].iloc[0]),
      "img_per_sec": float(frame["img_per_sec"].astype(float).mean()),
    }
    row.update(_mean_std(frame, metrics))
    rows.append(row)
  models = pd.DataFrame(rows)
  if not models.empty and "masked_psnr_mean" in models:
    models = models.sort_values("masked_psnr_mean", ascending=False, kind="stable")
  # The masked input scored as a prediction: the same test images and masks for every run of
  # one data setup, so its spread over runs is ~0 there (a spread says the data differed).
  present = {f"baseline/{m}": m for m in metrics if f"baseline/{m}" in runs}
  base = runs[list(present)].rename(columns=present)
  baseline = {
    "configuration": BASELINE,
    "architecture": "-",
    "seeds": len(runs),
    "num_params": 0.0,
    "img_per_sec": np.nan,
  }
  baseline.update(_mean_std(base, metrics))
  return pd.concat([pd.DataFrame([baseline]), models], ignore_index=True)


def family_table(runs: pd.DataFrame, metrics: Sequence[str] = FAMILY_METRICS) -> pd.DataFrame:
  """One row per (configuration, mask family), baseline first: mean and std over seeds."""
  families = sorted(
    {c.split("/")[1] for c in runs.columns if c.startswith("family/") and c.count("/") == 2}
  )
  rows = []
  sources = [(BASELINE, runs, "baseline/")] + [
    (group, frame, "") for group, frame in runs.groupby("group", sort=True)
  ]
  for group, frame, prefix in sources:
    for family in families:
      columns = {f"{prefix}family/{family}/{m}": m for m in metrics}
      columns = {c: m for c, m in columns.items() if c in frame}
      if not columns:
        continue
      row = {"configuration": group, "family": family}
      count = f"{prefix}family/{family}/count"
      row["examples"] = float(frame[count].mean()) if count in frame else np.nan
      row.update(_mean_std(frame[list(columns)].rename(columns=columns), metrics))
      rows.append(row)
  return pd.DataFrame(rows)


def format_table(table: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
  """`<metric>_mean`/`_std` pairs as 'mean ± std' strings, counts and rates readable."""
  if metrics is None:
    metrics = [m for m in METRICS if f"{m}_mean" in table] + [
      m for m in FAMILY_METRICS if f"{m}_mean" in table and m not in METRICS
    ]
  out = pd.DataFrame(index=table.index)
  for column in table.columns:
    if column.endswith(("_mean", "_std")):
      continue
    values = table[column]
    if column == "num_params":
      out["params"] = [f"{int(v):,}" if v and np.isfinite(v) else "-" for v in values]
    elif column == "img_per_sec":
      out["img/s"] = [f"{v:.1f}" if np.isfinite(v) else "-" for v in values.astype(float)]
    else:
      out[column] = values
  for metric in metrics:
    digits = METRICS.get(metric, 4)
    out[metric] = [
      _plus_minus(m, s, digits) for m, s in zip(table[f"{metric}_mean"], table[f"{metric}_std"])
    ]
  return out


def _plus_minus(mean: float, std: float, digits: int) -> str:
  if not np.isfinite(mean):
    return "-"
  if not np.isfinite(std):
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


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
    "summary.md": to_markdown(format_table(summary)),
    "families.csv": families.to_csv(index=False),
    "families.md": to_markdown(format_table(families)) if not families.empty else "",
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
