"""Statistics of the evidence study: mean +- sd over seeds, and paired per-case comparisons with a baseline.

The paired unit is the test case: each case's metric is first averaged over the seeds both variants share, then
the variant's and the baseline's values are compared by the Wilcoxon signed-rank test (two-sided, zero differences
dropped, scipy's exact distribution for small samples) with two effect sizes: the mean paired difference
(variant minus baseline) and the matched-pairs rank-biserial correlation ``(R+ - R-) / (R+ + R-)`` over the ranks
of the non-zero absolute differences (+1: the variant is higher on every case, -1: lower on every case).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["paired_comparison", "rank_biserial", "seed_summary"]


def seed_summary(per_seed_means: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one seed) of per-seed values, NaNs ignored."""
    values = np.asarray([v for v in per_seed_means if v is not None and math.isfinite(v)], dtype=np.float64)
    if values.size == 0:
        return {"mean": math.nan, "std": math.nan, "n_seeds": 0}
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "n_seeds": int(values.size)}


def rank_biserial(differences: Sequence[float]) -> float:
    """Matched-pairs rank-biserial correlation of paired differences (zeros dropped); NaN when all are zero."""
    from scipy.stats import rankdata

    d = np.asarray(differences, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return math.nan
    ranks = rankdata(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def paired_comparison(variant: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Wilcoxon signed-rank p-value, mean paired difference and rank-biserial correlation of two paired samples
    (pairs with a NaN are dropped; p is NaN when no difference is non-zero)."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(variant, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    result = {"n_pairs": int(d.size), "mean_diff": float(d.mean()) if d.size else math.nan}
    result["rank_biserial"] = rank_biserial(d)
    result["p_value"] = float(wilcoxon(d).pvalue) if np.any(d != 0) else math.nan
    return result
