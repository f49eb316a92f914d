"""`crl_lightning.statistics`: summaries, the paired tests at their edges (n = 0, 1, 2, all-equal differences, zeros
and ties in Wilcoxon), Holm's correction and the paired-t power, minimum detectable difference and seeds needed.

References are closed forms written here: the t quantile and the t-test p-value for 1 and 2 degrees of
freedom (Cauchy and the df=2 t distribution have elementary CDFs), Wilcoxon p-values by enumerating
every sign assignment of the ranks, hand-sorted Holm products, published power tables and a simulation.
"""

from __future__ import annotations

import itertools
import math

import pytest

from crl_lightning.statistics import (
    holm_adjust,
    mean_std_text,
    min_detectable_difference,
    paired_comparison,
    paired_t_power,
    seeds_needed,
    summarize,
)

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


def test_mean_std_text_digits_one_value_and_none():
    """Guards against the std being printed for one value (it is undefined), the digits being ignored for either
    number, a population std, and an empty list giving ``"nan"`` or a ``TypeError`` instead of the message."""
    assert mean_std_text([1.0, 2.0, 4.0], 2) == "2.33 ± 1.53"  # mean 7/3, sample std sqrt(7/3) = 1.5275
    assert mean_std_text([1.0, 3.0], 3) == "2.000 ± 1.414"  # ddof=1: sqrt(2); ddof=0 would give 1.000
    assert mean_std_text([5.0], 1) == "5.0"
    with pytest.raises(ValueError, match=r"^values: expected at least one value, got none$"):
        mean_std_text([], 2)


# ----- paired_comparison --------------------------------------------------------------------------------
def test_paired_comparison_against_hand_computed_values():
    base = [1.0, 2.0, 3.0, 4.0, 5.0]
    other = [1.5, 1.9, 3.6, 4.2, 5.3]  # differences 0.5, -0.1, 0.6, 0.2, 0.3
    c = paired_comparison(base, other)
    sd = math.sqrt(0.075)  # sum of squared deviations from 0.3 is 0.30, over n - 1 = 4
    assert c["n"] == 5 and c["mean_diff"] == pytest.approx(0.3) and c["std_diff"] == pytest.approx(sd)
    assert c["t"] == pytest.approx(0.3 / (sd / math.sqrt(5)))  # 2.4495
    assert c["t_pvalue"] == pytest.approx(0.07048, abs=5e-5)  # two-sided, 4 degrees of freedom
    half = 2.7764451 * sd / math.sqrt(5)  # t_{0.975, 4}
    assert (c["ci_low"], c["ci_high"]) == (pytest.approx(0.3 - half), pytest.approx(0.3 + half))
    # Wilcoxon: ranks of |d| 1..5, negative rank sum 1; P(W <= 1) = 2/32 one-sided, 0.125 two-sided
    assert c["wilcoxon_pvalue"] == pytest.approx(0.125)
    assert (c["lower"], c["higher"], c["ties"]) == (1, 4, 0)


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
    two = paired_comparison([1.0, 2.0], [2.0, 3.0])  # the same at n = 2
    assert two["t_pvalue"] is None and two["std_diff"] == 0.0 and two["wilcoxon_pvalue"] == pytest.approx(0.5)


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


# ----- Holm ---------------------------------------------------------------------------------------------
def test_holm_against_hand_computed_values():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> max(0.06, 0.04) = 0.06
    adjusted = holm_adjust([0.01, 0.04, 0.03, 0.005, None])
    assert adjusted[:4] == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06), pytest.approx(0.02)]
    assert adjusted[4] is None
    assert holm_adjust([0.4, 0.3]) == [pytest.approx(0.6), pytest.approx(0.6)]  # 0.3 x 2, then max(0.6, 0.4)
    assert holm_adjust([0.9, 0.8, 0.7]) == [1.0, 1.0, 1.0]  # capped at 1
    assert holm_adjust([]) == []


# ----- power ---------------------------------------------------------------------------------------------
def test_power_against_tables_and_a_simulation():
    import numpy as np
    from scipy import stats

    # Cohen (1988) / G*Power, paired t, two-sided alpha 0.05: d_z = 1 has power 0.803 with 10 pairs, so 10
    # pairs are the fewest for 80 %; d_z = 0.1 needs 787 pairs (G*Power 3.1), d_z = 0.5 needs 34
    assert paired_t_power(1.0, 10) == pytest.approx(0.8031, abs=5e-4)
    assert (seeds_needed(1.0, 1.0), seeds_needed(-0.5, 1.0), seeds_needed(0.1, 1.0)) == (10, 34, 787)
    assert seeds_needed(0.01, 1.0) is None and seeds_needed(0.0, 1.0) is None  # > 1000
    # the minimum detectable difference, by simulation: with 5 pairs of SD 2, the paired t-test rejects a true
    # difference of mdd in 80 % of 40,000 draws (binomial SE 0.2 %; tolerance 1 %)
    mdd = min_detectable_difference(2.0, 5)
    assert paired_t_power(mdd / 2.0, 5) == pytest.approx(0.8, abs=1e-8)
    diffs = np.random.default_rng(0).normal(mdd, 2.0, size=(40_000, 5))
    t = diffs.mean(axis=1) / (diffs.std(axis=1, ddof=1) / np.sqrt(5))
    assert np.mean(np.abs(t) > stats.t.ppf(0.975, 4)) == pytest.approx(0.8, abs=0.01)


def test_power_at_zero_effect_is_alpha_and_symmetric_in_the_sign():
    """With no true difference the two-sided test rejects at exactly its level: the power is ``alpha``, for any
    ``alpha`` and n; the power of a two-sided test is the same for an effect and its negative. Guards against
    ``alpha`` being ignored (or one-sided: ``1 - alpha``) and a lower tail left out (``alpha / 2``)."""
    for n in (2, 5, 30):
        assert paired_t_power(0.0, n) == pytest.approx(0.05, abs=1e-12)
        assert paired_t_power(0.0, n, alpha=0.01) == pytest.approx(0.01, abs=1e-12)
    assert paired_t_power(-0.7, 12) == paired_t_power(0.7, 12)
    assert paired_t_power(1.0, 10, alpha=0.01) < paired_t_power(1.0, 10)


def test_power_of_an_effect_far_beyond_the_critical_value_is_one(monkeypatch):
    """A huge effect has power 1. Some scipy versions give NaN for a noncentral-t tail far from the noncentrality
    (1.17 does not): NaN is read as the tail's limit, 1 for the upper tail when the noncentrality is past the
    critical value and 0 otherwise, and 0 for the lower tail, never a NaN power. Guards against the NaN branches
    being swapped or dropped and against a signed noncentrality (a negative effect would then get power 0 there),
    simulated by making scipy's tails NaN."""
    from scipy import stats

    for effect, n in ((60.0, 10), (200.0, 3), (-60.0, 10)):
        assert paired_t_power(effect, n) == 1.0
    monkeypatch.setattr(stats.nct, "sf", lambda *args: math.nan)
    monkeypatch.setattr(stats.nct, "cdf", lambda *args: math.nan)
    assert paired_t_power(60.0, 10) == 1.0  # noncentrality 190 > t_{0.975, 9} = 2.26
    assert paired_t_power(-60.0, 10) == 1.0
    assert paired_t_power(0.1, 10) == 0.0  # noncentrality 0.32 < 2.26
    monkeypatch.setattr(stats.nct, "cdf", lambda *args: 1e-3)  # a lower tail beside a NaN upper one
    assert paired_t_power(60.0, 10) == 1.0  # capped: a power never exceeds 1
    assert paired_t_power(0.1, 10) == 1e-3


def test_power_functions_refuse_what_they_cannot_answer():
    """The messages name the argument, the expected range and what was got."""
    with pytest.raises(ValueError, match=r"^n: expected at least 2 pairs, got 1$"):
        paired_t_power(1.0, 1)
    with pytest.raises(ValueError, match=r"^n: expected at least 2 pairs, got 1$"):
        min_detectable_difference(1.0, 1)
    with pytest.raises(ValueError, match=r"^sd: expected >= 0, got -0.5$"):
        min_detectable_difference(-0.5, 5)
    for power in (0.05, 0.01, 1.0):
        with pytest.raises(ValueError, match=rf"^power: expected a value in \(0.05, 1\), got {power}$"):
            min_detectable_difference(1.0, 5, power=power)


def test_min_detectable_difference_scales_with_sd_and_follows_power_and_alpha():
    """The mdd is ``sd`` times the effect of the wanted power: 0 for sd 0, linear in sd, and at other power and
    alpha it is where `paired_t_power` reaches that power; 2 pairs are enough to ask. n = 3 needs an effect above
    2 (above 4 at alpha 0.01), so the search's upper end is doubled. Guards against power or alpha not reaching
    the solver or the search for its interval (an interval without the root: brentq raises), a fixed interval and
    ``n < 2`` becoming ``n <= 2``."""
    assert min_detectable_difference(0.0, 5) == 0.0
    assert min_detectable_difference(3.0, 7) == pytest.approx(3 * min_detectable_difference(1.0, 7), rel=1e-9)
    for sd, n, power, alpha in ((1.0, 8, 0.9, 0.01), (0.5, 3, 0.8, 0.05), (2.0, 20, 0.5, 0.10), (1.0, 3, 0.8, 0.01),
                                (1.0, 2, 0.8, 0.05)):
        mdd = min_detectable_difference(sd, n, power=power, alpha=alpha)
        assert paired_t_power(mdd / sd, n, alpha=alpha) == pytest.approx(power, abs=1e-8)
    assert min_detectable_difference(1.0, 3) > 2.0


def test_seeds_needed_is_the_fewest_pairs_that_reach_the_power():
    """The answer r has power >= the wanted one and r - 1 pairs do not (or r = 2, the fewest a test allows); a
    difference with sd 0 is certain at 2 pairs; beyond 1,000 pairs there is no answer. Guards against an
    off-by-one in the bisection (``low = 2`` or ``mid > 2``: 2 is never returned), power or alpha not reaching the
    search (also at its 1,000-pair limit), and an effect other than ``mean_diff / sd``."""
    assert seeds_needed(100.0, 1.0) == 2
    assert seeds_needed(0.3, 0.0) == 2 and seeds_needed(-0.3, 0.0) == 2
    for mean_diff, sd, power, alpha in ((1.0, 1.0, 0.9, 0.01), (2.0, 1.0, 0.8, 0.05), (0.4, 1.0, 0.95, 0.05)):
        r = seeds_needed(mean_diff, sd, power=power, alpha=alpha)
        assert r is not None and r > 2
        assert paired_t_power(mean_diff / sd, r, alpha) >= power > paired_t_power(mean_diff / sd, r - 1, alpha)
    assert seeds_needed(1.0, 1.0, power=0.9, alpha=0.01) > seeds_needed(1.0, 1.0)
    assert seeds_needed(0.05, 1.0) is None  # about 3,140 pairs (0.1 needs 787: test_power_against_tables_...)
    assert seeds_needed(0.1, 1.0, power=0.9) is None  # about 1,050 pairs; 1,000 give power 0.885
    assert seeds_needed(1.0, 2.0) == seeds_needed(0.5, 1.0) == 34  # the effect is mean_diff / sd
    assert seeds_needed(0.1, 1.0, alpha=0.01) is None  # about 1,170 pairs at alpha 0.01
