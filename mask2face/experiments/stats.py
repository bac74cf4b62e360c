"""Seed statistics for result tables: a 95% interval per figure, Welch's test between rows.

Every figure of a grid is a mean over seeds (runs that differ only in `config.seed`), so it
carries that spread: `summarize` gives mean, sample std, n and the half-width of the 95%
t interval (mean ± t_{0.975, n-1} · std / √n). `welch` tests whether two rows' means differ
from their summaries alone (Welch's unequal-variance t-test, two-sided), and `mark_best` uses
it to mark the rows of a table that differ significantly from its best row. With 3 seeds a
difference must be large to count: that is the point.
"""

import math
from collections.abc import Collection, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
# A difference from the best row is marked when Welch's two-sided p-value is below this.
ALPHA = 0.05


def summarize(values: Iterable[float]) -> dict[str, float]:
  """{'mean', 'std', 'n', 'ci95'} of the finite values (std and ci95 NaN below two values)."""
  x = np.asarray([v for v in values if v is not None], np.float64)
  x = x[np.isfinite(x)]
  n = len(x)
  if n == 0:
    return {"mean": math.nan, "std": math.nan, "n": 0.0, "ci95": math.nan}
  mean = float(x.mean())
  if n < 2:
    return {"mean": mean, "std": math.nan, "n": 1.0, "ci95": math.nan}
  std = float(x.std(ddof=1))
  t = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1))
  return {"mean": mean, "std": std, "n": float(n), "ci95": t * std / math.sqrt(n)}


def welch(mean1, std1, n1, mean2, std2, n2) -> tuple[float, float, float]:
  """Welch's t-test from two samples' means, sample stds and sizes: (t, df, two-sided p).

  NaN when either side has fewer than two values. Both spreads zero (e.g. a baseline that is
  the same in every run): p is 0 if the means differ, 1 if they are equal.
  """
  if not (n1 >= 2 and n2 >= 2) or not all(np.isfinite([mean1, std1, mean2, std2])):
    return math.nan, math.nan, math.nan
  v1, v2 = std1**2 / n1, std2**2 / n2
  if v1 + v2 == 0:
    return (math.inf if mean1 != mean2 else 0.0), math.inf, (0.0 if mean1 != mean2 else 1.0)
  t = (mean1 - mean2) / math.sqrt(v1 + v2)
  # Welch-Satterthwaite degrees of freedom.
  df = (v1 + v2) ** 2 / (v1**2 / (n1 - 1) + v2**2 / (n2 - 1))
  p = 2.0 * float(scipy_stats.t.sf(abs(t), df))
  return float(t), float(df), p


def mark_best(
  table: pd.DataFrame,
  metrics: Sequence[str],
  *,
  lower_is_better: Collection[str] = (),
  within: Sequence[str] = (),
) -> pd.DataFrame:
  """Adds `<metric>_best` (the best row of the column) and `<metric>_p` (Welch's p against it).

  Reads `<metric>_mean`, `_std` and `_n`. The best row has the highest mean (the lowest for
  `lower_is_better` metrics) among the rows that are no ceiling (`output == 'ceiling'`), per
  group of the `within` columns (e.g. per family). `_p` is NaN for the best row itself and
  where either side has under two values.
  """
  table = table.copy()
  groups = [table.index]
  if within:
    groups = [frame.index for _, frame in table.groupby(list(within), sort=False)]
  for metric in metrics:
    mean = f"{metric}_mean"
    table[f"{metric}_best"] = False
    table[f"{metric}_p"] = np.nan
    if mean not in table:
      continue
    for index in groups:
      part = table.loc[index]
      ceiling = part["output"].eq("ceiling") if "output" in part else False
      contenders = part[~ceiling & np.isfinite(part[mean].astype(float))]
      if contenders.empty:
        continue
      values = contenders[mean].astype(float)
      best = values.idxmin() if metric in lower_is_better else values.idxmax()
      table.loc[best, f"{metric}_best"] = True
      b = table.loc[best]
      for i in contenders.index.drop(best):
        r = table.loc[i]
        _, _, p = welch(
          b[mean],
          b[f"{metric}_std"],
          b[f"{metric}_n"],
          r[mean],
          r[f"{metric}_std"],
          r[f"{metric}_n"],
        )
        table.loc[i, f"{metric}_p"] = p
  return table
