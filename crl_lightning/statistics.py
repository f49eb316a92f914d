"""Summary statistics over seeds, paired tests between criteria, Holm's correction and paired-t power (scipy)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

__all__ = [
    "MIN_PAIRS_FOR_TEST",
    "holm_adjust",
    "mean_std_text",
    "min_detectable_difference",
    "paired_comparison",
    "paired_t_power",
    "seeds_needed",
    "summarize",
]

#: Fewer pairs than this and no paired test is meaningful (with 2 pairs the t interval is +-12.7 sd).
MIN_PAIRS_FOR_TEST = 3
#: `seeds_needed` looks no further than this many seeds.
MAX_SEEDS_NEEDED = 1000


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


def holm_adjust(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error control under any dependence); ``None`` stays ``None``.

    With the m given p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of the i-th is
    ``max_{j <= i} min(1, (m - j + 1) * p_(j))`` (Holm, 1979); m counts the p-values that are not ``None``.
    Rejecting where the adjusted value is below alpha is Holm's procedure at level alpha.

    Returns:
        The adjusted p-values in the input order.
    """
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(present)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def paired_t_power(effect: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at level ``alpha`` with ``n`` pairs for a standardised effect.

    ``effect`` is the true mean difference over the standard deviation of the differences (Cohen's d_z).
    The t statistic then follows a noncentral t with ``n - 1`` degrees of freedom and noncentrality
    ``effect * sqrt(n)`` (`scipy.stats.nct`); the power is ``P(|T| > t_{1 - alpha/2, n-1})``.

    Raises:
        ValueError: ``n < 2``.
    """
    from scipy import stats

    if n < 2:
        raise ValueError(f"n: expected at least 2 pairs, got {n}")
    df, nc = n - 1, abs(effect) * math.sqrt(n)
    crit = stats.t.ppf(1 - alpha / 2, df)
    upper, lower = float(stats.nct.sf(crit, df, nc)), float(stats.nct.cdf(-crit, df, nc))
    # scipy returns nan for a tail far beyond the noncentrality (its value is then 0, or 1 for the upper one)
    upper = (1.0 if nc > crit else 0.0) if math.isnan(upper) else upper
    return min(1.0, upper + (0.0 if math.isnan(lower) else lower))


def min_detectable_difference(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true mean difference the paired t-test detects with probability ``power`` (same unit as ``sd``).

    Solves ``paired_t_power(delta / sd, n, alpha) = power`` for ``delta`` (`scipy.optimize.brentq`).

    Args:
        sd: standard deviation of the paired differences (e.g. the observed one), >= 0.
        n: number of pairs, >= 2.
        power: wanted power, in (alpha, 1).
        alpha: two-sided level.

    Raises:
        ValueError: ``n < 2``, ``sd < 0`` or ``power`` outside (alpha, 1).
    """
    from scipy.optimize import brentq

    if sd < 0:
        raise ValueError(f"sd: expected >= 0, got {sd}")
    if not alpha < power < 1:
        raise ValueError(f"power: expected a value in ({alpha}, 1), got {power}")
    if n < 2:
        raise ValueError(f"n: expected at least 2 pairs, got {n}")
    high = 1.0
    while paired_t_power(high, n, alpha) < power:
        high *= 2
    return sd * brentq(lambda d: paired_t_power(d, n, alpha) - power, 0.0, high, xtol=1e-10)


def seeds_needed(mean_diff: float, sd: float, power: float = 0.8, alpha: float = 0.05) -> int | None:
    """The fewest pairs (seeds) for which the paired t-test detects ``mean_diff`` with probability ``power``.

    Takes ``mean_diff`` and ``sd`` (of the differences) as the true values. Returns ``None`` when more than
    `MAX_SEEDS_NEEDED` would be needed (also for a zero difference), and 2 for ``sd == 0`` with a non-zero
    difference (any difference is then certain).
    """
    if mean_diff == 0:
        return None
    if sd == 0:
        return 2
    effect = abs(mean_diff) / sd
    if paired_t_power(effect, MAX_SEEDS_NEEDED, alpha) < power:
        return None
    low, high = 1, MAX_SEEDS_NEEDED  # power(low) < power <= power(high), power increasing in n
    while high - low > 1:
        mid = (low + high) // 2
        if mid >= 2 and paired_t_power(effect, mid, alpha) >= power:
            high = mid
        else:
            low = mid
    return high
