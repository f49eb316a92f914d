"""Summary statistics over seeds and paired tests between criteria (scipy), for ``crl study``."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

__all__ = ["mean_std_text", "paired_comparison", "summarize"]


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (``ddof=1``) of ``values``.

    Args:
        values: one number per seed (e.g. test top-1 error in percent).

    Returns:
        ``{"n", "mean", "std"}``; ``std`` is ``None`` for fewer than 2 values, ``mean`` for none.
    """
    n = len(values)
    return {
        "n": n,
        "mean": statistics.fmean(values) if n else None,
        "std": statistics.stdev(values) if n > 1 else None,
    }


def mean_std_text(values: Sequence[float], digits: int) -> str:
    """``"mean ± std"`` of ``values`` (sample std, ``ddof=1``) with ``digits`` decimals; only the mean for one value.

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("values: expected at least one value, got none")
    s = summarize(values)
    return f"{s['mean']:.{digits}f}" + (f" ± {s['std']:.{digits}f}" if s["std"] is not None else "")


def paired_comparison(base: Sequence[float], other: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Paired differences ``other - base`` (same seeds, same order): mean, CI, paired t-test, Wilcoxon test.

    The confidence interval is the t interval of the mean difference,
    ``mean +- t_{(1+confidence)/2, n-1} * sd / sqrt(n)``; the t-test is `scipy.stats.ttest_rel` and the
    Wilcoxon signed-rank test `scipy.stats.wilcoxon` (two-sided; exact for small n without ties or zeros).
    When every difference is 0 both p-values are 1. When the differences are all equal but not 0, the
    t statistic is undefined and its p-value ``None``.

    Args:
        base: the reference criterion's values, one per seed.
        other: the compared criterion's values for the same seeds.
        confidence: level of the interval, in (0, 1).

    Returns:
        ``{"n", "mean_diff", "std_diff", "ci_low", "ci_high", "t", "t_pvalue", "wilcoxon_pvalue",
        "lower", "higher", "ties"}``: ``lower`` counts the seeds where ``other < base``. Statistics that
        need two or more pairs are ``None`` for fewer.

    Raises:
        ValueError: ``base`` and ``other`` differ in length, or ``confidence`` is outside (0, 1).
    """
    from scipy import stats

    if len(base) != len(other):
        raise ValueError(f"other: expected one value per base value ({len(base)}), got {len(other)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a level in (0, 1), got {confidence}")
    diffs = [o - b for b, o in zip(base, other, strict=True)]
    n = len(diffs)
    result: dict[str, Any] = {
        "n": n, "mean_diff": statistics.fmean(diffs) if n else None, "std_diff": None, "ci_low": None,
        "ci_high": None, "t": None, "t_pvalue": None, "wilcoxon_pvalue": None,
        "lower": sum(d < 0 for d in diffs), "higher": sum(d > 0 for d in diffs), "ties": sum(d == 0 for d in diffs),
    }
    if n < 2:
        return result
    sd = statistics.stdev(diffs)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    result.update(std_diff=sd, ci_low=result["mean_diff"] - half, ci_high=result["mean_diff"] + half)
    if all(d == 0 for d in diffs):
        result.update(t=0.0, t_pvalue=1.0, wilcoxon_pvalue=1.0)
        return result
    if sd > 0:
        test = stats.ttest_rel(other, base)
        result.update(t=float(test.statistic), t_pvalue=float(test.pvalue))
    result["wilcoxon_pvalue"] = float(stats.wilcoxon(other, base).pvalue)
    return result
