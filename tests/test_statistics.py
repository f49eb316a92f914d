"""`crl_lightning.statistics` at its edges: n = 0, 1, 2, all-equal differences, zeros and ties in Wilcoxon.

References are closed forms written here: the t quantile and the t-test p-value for 1 and 2 degrees of
freedom (Cauchy and the df=2 t distribution have elementary CDFs), and Wilcoxon p-values by enumerating
every sign assignment of the ranks.
"""

from __future__ import annotations

import itertools
import math

import pytest

from crl_lightning.statistics import paired_comparison, summarize

#: t_{0.975, 1} = tan(0.475 pi) (Cauchy quantile); t_{0.975, 2} = (2p - 1) / sqrt(2 p (1 - p)), p = 0.975.
T975_DF1 = math.tan(math.pi * 0.475)
T975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)


def t_pvalue_df1(t: float) -> float:
    """Two-sided p-value of Student's t with one degree of freedom (Cauchy): 1 - 2 atan(|t|) / pi."""
    return 1 - 2 * math.atan(abs(t)) / math.pi


def t_pvalue_df2(t: float) -> float:
    """Two-sided p-value of Student's t with two degrees of freedom: 1 - |t| / sqrt(2 + t^2)."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


def average_ranks(values: list[float]) -> list[float]:
    """Ranks 1..n of ``values`` (ascending), ties sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def wilcoxon_enumerated(diffs: list[float]) -> float:
    """Two-sided signed-rank p-value: zeros dropped (Wilcox), every sign assignment of the (average) ranks."""
    nonzero = [d for d in diffs if d != 0]
    ranks = average_ranks([abs(d) for d in nonzero])
    r_plus = sum(r for r, d in zip(ranks, nonzero, strict=True) if d > 0)
    sums = [sum(r for r, s in zip(ranks, signs, strict=True) if s) for signs in
            itertools.product((False, True), repeat=len(ranks))]
    low = sum(s <= r_plus + 1e-9 for s in sums) / len(sums)
    high = sum(s >= r_plus - 1e-9 for s in sums) / len(sums)
    return min(1.0, 2 * min(low, high))


# ----- summarize ----------------------------------------------------------------------------------------
def test_summarize_edges_n0_n1_n2():
    """Guards against ``n > 1`` becoming ``n >= 1`` (stdev of one value raises) or ``ddof=0`` (population std)."""
    assert summarize([]) == {"n": 0, "mean": None, "std": None}
    assert summarize([7.5]) == {"n": 1, "mean": 7.5, "std": None}
    two = summarize([1.0, 4.0])
    assert two["n"] == 2 and two["mean"] == 2.5
    assert two["std"] == pytest.approx(3 / math.sqrt(2))  # ddof=1: sqrt(((1.5)^2 * 2) / 1); ddof=0 gives 1.5
    assert summarize([2.0, 2.0, 2.0])["std"] == 0.0


# ----- paired_comparison --------------------------------------------------------------------------------
def test_paired_n0_and_n1_return_counts_only():
    """Guards against the ``n < 2`` early return moving (a CI or a test on one pair) and against the counts
    ``lower``/``higher``/``ties`` swapping their comparisons."""
    assert paired_comparison([], []) == {
        "n": 0, "mean_diff": None, "std_diff": None, "ci_low": None, "ci_high": None, "t": None,
        "t_pvalue": None, "wilcoxon_pvalue": None, "lower": 0, "higher": 0, "ties": 0}
    one = paired_comparison([3.0], [1.0])
    assert one == {"n": 1, "mean_diff": -2.0, "std_diff": None, "ci_low": None, "ci_high": None, "t": None,
                   "t_pvalue": None, "wilcoxon_pvalue": None, "lower": 1, "higher": 0, "ties": 0}
    assert paired_comparison([3.0], [3.0])["ties"] == 1 and paired_comparison([3.0], [5.0])["higher"] == 1


def test_paired_n2_closed_form_ci_t_and_wilcoxon():
    """n = 2 (df = 1): diffs 1 and 3. Guards against a wrong t quantile (``(1 + c) / 2`` vs ``c``), a wrong
    ``sqrt(n)``/df, the ``other - base`` direction (the sign of ``t``) and the Wilcoxon arguments."""
    result = paired_comparison([10.0, 20.0], [11.0, 23.0])  # other - base = 1, 3
    sd = math.sqrt(2.0)  # sample sd of 1, 3
    half = T975_DF1 * sd / math.sqrt(2)
    assert result["n"] == 2 and result["mean_diff"] == 2.0 and result["std_diff"] == pytest.approx(sd)
    assert result["ci_low"] == pytest.approx(2.0 - half, rel=1e-9)
    assert result["ci_high"] == pytest.approx(2.0 + half, rel=1e-9)
    t = 2.0 / (sd / math.sqrt(2))  # mean / (sd / sqrt(n)) = 2
    assert result["t"] == pytest.approx(t) and result["t"] > 0
    assert result["t_pvalue"] == pytest.approx(t_pvalue_df1(t), rel=1e-9)
    assert result["wilcoxon_pvalue"] == pytest.approx(0.5)  # both positive: 2 * 1/4
    assert (result["lower"], result["higher"], result["ties"]) == (0, 2, 0)
    reverse = paired_comparison([11.0, 23.0], [10.0, 20.0])
    assert reverse["t"] == pytest.approx(-t) and reverse["ci_high"] == pytest.approx(-2.0 + half, rel=1e-9)
    small = paired_comparison([0.0, 0.0], [0.1, 0.3])  # the same t with sd = 0.14 < 1: t is defined for any sd > 0
    assert small["t"] == pytest.approx(t) and small["t_pvalue"] == pytest.approx(t_pvalue_df1(t), rel=1e-9)


def test_paired_n3_other_confidence_level():
    """n = 3 (df = 2) at 95 % and 80 %: guards against the confidence argument being ignored or the df being n."""
    base, other = [0.0, 0.0, 0.0], [1.0, 2.0, 6.0]  # diffs 1, 2, 6: mean 3, sd sqrt(7)
    result = paired_comparison(base, other)
    se = math.sqrt(7.0) / math.sqrt(3)
    assert result["ci_high"] - result["ci_low"] == pytest.approx(2 * T975_DF2 * se, rel=1e-9)
    assert result["t_pvalue"] == pytest.approx(t_pvalue_df2(3.0 / se), rel=1e-9)
    assert result["wilcoxon_pvalue"] == pytest.approx(wilcoxon_enumerated([1.0, 2.0, 6.0]))  # 0.25
    p = 0.9  # 80 % interval: t_{0.9, 2}
    t90 = (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    eighty = paired_comparison(base, other, confidence=0.8)
    assert eighty["ci_high"] - eighty["ci_low"] == pytest.approx(2 * t90 * se, rel=1e-9)


def test_paired_all_zero_differences():
    """Every difference 0: both p-values 1, t = 0, a zero-width CI at 0. Guards against the all-zero branch being
    skipped (scipy's t-test gives NaN there) or its values changed."""
    result = paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert result["t"] == 0.0 and result["t_pvalue"] == 1.0 and result["wilcoxon_pvalue"] == 1.0
    assert result["std_diff"] == 0.0 and result["ci_low"] == 0.0 and result["ci_high"] == 0.0
    assert (result["lower"], result["higher"], result["ties"]) == (0, 0, 3)


def test_paired_all_equal_nonzero_differences():
    """Every difference 0.5: the t statistic is undefined (sd = 0), so ``t`` and ``t_pvalue`` stay None, while
    Wilcoxon still gives its exact p (all 3 positive: 2 / 8). Guards against ``sd > 0`` becoming ``sd >= 0``
    (a NaN t) and against the all-zero branch catching equal non-zero differences (p = 1)."""
    result = paired_comparison([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert result["t"] is None and result["t_pvalue"] is None
    assert result["std_diff"] == 0.0 and result["ci_low"] == result["ci_high"] == 0.5
    assert result["wilcoxon_pvalue"] == pytest.approx(0.25)
    assert (result["lower"], result["higher"], result["ties"]) == (0, 3, 0)


def test_paired_wilcoxon_with_zeros_and_ties():
    """Zeros and tied |differences|: zeros are counted as ties and dropped by Wilcoxon; tied magnitudes share
    their average rank. Reference: every sign assignment of the average ranks (scipy's permutation test for
    small n with ties or zeros). Guards against zeros counted as lower/higher and against a Wilcoxon on the
    wrong pairs (p changes)."""
    pytest.importorskip("scipy", minversion="1.17")  # the version this tie handling was checked with
    base = [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]
    other = [6.0, 7.0, 5.0, 2.0, 8.0, 5.0]  # diffs 1, 2, 0, -3, 3, 0: two zeros, |3| tied
    result = paired_comparison(base, other)
    assert (result["lower"], result["higher"], result["ties"]) == (1, 3, 2)
    assert average_ranks([1.0, 2.0, 3.0, 3.0]) == [1.0, 2.0, 3.5, 3.5]
    assert result["wilcoxon_pvalue"] == pytest.approx(wilcoxon_enumerated([1, 2, 0, -3, 3, 0]))
    assert result["wilcoxon_pvalue"] == pytest.approx(0.75)  # ranks 1, 2, 3.5, 3.5; R- = 3.5: 6 of 16 below


@pytest.mark.parametrize("confidence", [0.0, 1.0, -0.5, 1.5])
def test_paired_confidence_bounds_are_open(confidence):
    """Guards against ``0 < confidence < 1`` becoming ``<=`` (a level of 0 or 1 has no finite interval)."""
    with pytest.raises(ValueError, match=rf"confidence: expected a level in \(0, 1\), got {confidence}"):
        paired_comparison([1.0, 2.0], [1.0, 3.0], confidence=confidence)


def test_paired_length_mismatch():
    with pytest.raises(ValueError, match=r"other: expected one value per base value \(2\), got 3"):
        paired_comparison([1.0, 2.0], [1.0, 2.0, 3.0])
