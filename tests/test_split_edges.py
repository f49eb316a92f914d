"""Splits on their boundaries: unequal subject sizes in the size-balanced fallback, the switch between the
stratified and the fallback path, the val-fraction-to-folds rounding, and the limits of the argument checks.

Equal-size groups make any assignment of whole groups look balanced; here the subjects differ in size so
that only the documented rule (largest subject first into the fold with the fewest samples) gives the
expected fold sizes, which are worked out by hand in the docstrings.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from crl_lightning.data.splits import (
    check_subject_exclusive,
    class_balanced_subset,
    subject_kfold,
    subject_train_val_split,
)


def _subjects(sizes: list[int]) -> list[str]:
    """One group id per sample: subject ``s<i>`` repeated ``sizes[i]`` times, subjects interleaved by name."""
    return [f"s{i}" for i, size in enumerate(sizes) for _ in range(size)]


def _fold_sizes(folds) -> list[int]:
    return sorted(len(test) for _, test in folds)


#: 8 subjects of 5, 4, 3, 3, 2, 1, 1, 1 samples (20). Largest first into the emptiest fold (3 folds):
#: 5->A, 4->B, 3->C, 3->C (6), 2->B (6), 1->A (6), 1->A (7, first of the tied folds), 1->B (7): sizes 6, 7, 7.
#: Dealing the sorted subjects round robin gives 9, 7, 4; three subjects per fold in any order gives
#: other sizes for most orders; counting subjects instead of samples gives 3, 3, 2 subjects of any size.
UNEQUAL = [5, 4, 3, 3, 2, 1, 1, 1]


@pytest.mark.parametrize("seed", range(5))
def test_fallback_balances_unequal_subjects_by_sample_count(seed):
    """Fallback path (every class has 2 < 3 samples). Guards against an assignment that ignores group sizes
    (round robin, by group count, smallest first, or to the fullest fold): only the size-aware greedy rule gives
    folds of 6, 7 and 7 samples for every seed."""
    groups = _subjects(UNEQUAL)
    targets = [i // 2 for i in range(len(groups))]  # ten classes of 2 samples: no stratification possible
    folds = subject_kfold(targets, groups, n_splits=3, seed=seed)
    assert _fold_sizes(folds) == [6, 7, 7]
    assert sorted(np.concatenate([test for _, test in folds]).tolist()) == list(range(20))
    for train, test in folds:
        check_subject_exclusive(groups, train, test)
        assert len(train) + len(test) == 20 and np.all(np.diff(train) > 0) and train.dtype == np.int64
    # the largest subject is alone with the three single-sample subjects: fold {5, 1} is 6 or {5, 1, 1} is 7
    big = next(test for _, test in folds if 0 in test)
    assert sorted({groups[i] for i in big}) in (["s0", "s5"], ["s0", "s6"], ["s0", "s7"], ["s0", "s5", "s6"],
                                                ["s0", "s5", "s7"], ["s0", "s6", "s7"])


def test_fallback_two_folds_unequal_subjects():
    """Sizes 4, 3, 2, 1, 1, 1 into 2 folds: 4->A, 3->B, 2->B (5), 1->A (5), 1->A (6, first of the tied folds),
    1->B (6): 6 and 6. Round robin of the sorted subjects gives 7 and 5; by group count, e.g. {4, 3, 2} and
    {1, 1, 1}: 9 and 3. Guards against the fold loads counting groups, not samples."""
    groups = _subjects([4, 3, 2, 1, 1, 1])
    folds = subject_kfold(list(range(12)), groups, n_splits=2, seed=0)  # every class once
    assert _fold_sizes(folds) == [6, 6]
    fold_of = {groups[i]: k for k, (_, test) in enumerate(folds) for i in test}
    assert fold_of["s0"] != fold_of["s1"] and fold_of["s1"] == fold_of["s2"]  # 4 apart from 3; 2 joins the 3


def test_fallback_without_shuffle_is_size_ordered_and_deterministic():
    """``shuffle=False``: no seed is used, ties keep the group order, and the result is the greedy rule's."""
    groups = _subjects(UNEQUAL)
    targets = [i // 2 for i in range(20)]
    a = subject_kfold(targets, groups, n_splits=3, seed=0, shuffle=False)
    b = subject_kfold(targets, groups, n_splits=3, seed=99, shuffle=False)
    assert [t.tolist() for _, t in a] == [t.tolist() for _, t in b]
    assert [sorted({groups[i] for i in t}) for _, t in a] == [["s0", "s5", "s6"], ["s1", "s4", "s7"], ["s2", "s3"]]


def test_stratified_path_starts_at_n_splits_samples_of_a_class(caplog):
    """The fallback is taken only when *every* class has fewer than ``n_splits`` samples. With one class at
    exactly ``n_splits`` samples the stratified splitter runs and puts one of its 3 samples in each fold; with
    every class below it the fallback runs (and says so). Guards against ``<`` becoming ``<=`` and ``all`` becoming
    ``any``."""
    groups = [f"g{i}" for i in range(6)]
    with caplog.at_level(logging.INFO, logger="crl_lightning.data.splits"):
        folds = subject_kfold([0, 0, 0, 1, 2, 3], groups, n_splits=3, seed=0)  # class 0: exactly 3
    assert "balancing groups by size only" not in caplog.text
    assert [int(sum(i < 3 for i in test)) for _, test in folds] == [1, 1, 1]  # class 0 spread, one per fold
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="crl_lightning.data.splits"):
        subject_kfold([0, 0, 1, 1, 2, 3], groups, n_splits=3, seed=0)  # every class below 3
    assert [r.getMessage() for r in caplog.records] == [
        "subject_kfold: every class has fewer than 3 samples; balancing groups by size only"]


def test_as_many_groups_as_folds_is_allowed():
    """``n_groups == n_splits`` is the smallest valid input (one subject per fold); one fewer is refused. Guards
    against the check moving by one."""
    groups = _subjects([3, 2, 1])
    folds = subject_kfold([0, 1, 2, 3, 4, 5], groups, n_splits=3, seed=0)
    assert _fold_sizes(folds) == [1, 2, 3]
    with pytest.raises(ValueError, match=r"expected at least 4 distinct groups \(subjects\), got 3"):
        subject_kfold([0, 1, 2, 3, 4, 5], groups, n_splits=4)


@pytest.mark.parametrize(("fraction", "n_val_groups"), [(0.5, 4), (0.25, 2), (0.125, 1), (0.3, 3), (0.4, 4), (0.35, 3)])
def test_train_val_split_folds_from_the_fraction(fraction, n_val_groups):
    """8 equal subjects: the validation part is one fold of ``max(2, round(1 / fraction))``: 0.5 -> 2 folds (4
    subjects), 0.25 -> 4 (2), 0.125 -> 8 (1), 0.3 -> 3 (8 / 3: 2 or 3 subjects, here 3), 0.4 -> round(2.5) = 2
    (4 subjects), 0.35 -> round(2.86) = 3 (truncation would give 2). Guards against ``1 / fraction`` truncated
    or the fold count off by one."""
    groups = _subjects([3] * 8)
    targets = [i % 3 for i in range(24)]
    train, val = subject_train_val_split(targets, groups, fraction, seed=0)
    assert len({groups[i] for i in val}) == n_val_groups and len(val) == 3 * n_val_groups
    assert sorted([*train, *val]) == list(range(24))


@pytest.mark.parametrize("fraction", [0.0, 0.5000001, -0.1, 1.0])
def test_train_val_split_fraction_bounds(fraction):
    """``(0, 0.5]``: 0.5 is allowed (above), 0 and anything above 0.5 are not."""
    with pytest.raises(ValueError, match=r"val_fraction: expected a fraction in \(0, 0\.5\]"):
        subject_train_val_split([0, 1, 0, 1], ["a", "b", "c", "d"], fraction)


def test_class_balanced_subset_at_the_class_size():
    """``per_class`` equal to a class's size takes all of it; one more is refused naming the class and count;
    ``per_class = 0`` is refused. Guards against ``<`` becoming ``<=`` in either check."""
    targets = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert class_balanced_subset(targets, 2, seed=0, indices=[0, 1, 3, 4, 5, 6]) == [0, 1, 3, 4, 5, 6]
    chosen = class_balanced_subset(targets, 2, seed=3)
    assert len(chosen) == 6 and chosen == sorted(chosen)
    assert sorted(np.bincount(np.asarray(targets)[chosen]).tolist()) == [2, 2, 2]
    with pytest.raises(ValueError, match="expected at least 3 samples of class 1, got 2"):
        class_balanced_subset(targets, 3, seed=0)
    with pytest.raises(ValueError, match="per_class: expected >= 1, got 0"):
        class_balanced_subset(targets, 0, seed=0)
    assert class_balanced_subset(targets, 1, seed=0, indices=[8, 2, 4]) == [2, 4, 8]  # drawn only from indices


def test_check_subject_exclusive_lists_at_most_ten():
    """Ten shared subjects are listed in full, eleven end in `` ...``: guards against ``> 10`` becoming ``>= 10``."""
    ten = [f"u{i:02d}" for i in range(10)]
    with pytest.raises(ValueError, match=r"got 10: \[.*'u09'\]$"):
        check_subject_exclusive(ten + ten, range(10), range(10, 20))
    eleven = [f"u{i:02d}" for i in range(11)]
    with pytest.raises(ValueError, match=r"got 11: \[.*'u09'\] \.\.\.$"):
        check_subject_exclusive(eleven + eleven, range(11), range(11, 22), ("train", "val"))


def _greedy_reference(sizes: list[int], n_splits: int) -> list[set[int]]:
    """The documented rule in plain Python: subjects by size, largest first, ties in subject order (a stable sort),
    each into the fold with the fewest samples (the first such fold on a tie)."""
    load, folds = [0] * n_splits, [set() for _ in range(n_splits)]
    for g in sorted(range(len(sizes)), key=lambda g: -sizes[g]):
        k = min(range(n_splits), key=lambda k: load[k])
        folds[k].add(g)
        load[k] += sizes[g]
    return folds


def test_fallback_without_shuffle_keeps_tied_subjects_in_order():
    """20 subjects of 1 to 3 samples (many ties), ``shuffle=False``: the folds are the greedy rule's with ties kept in
    subject order. Guards against an unstable sort (numpy's default quicksort reorders ties from about 17 items on)
    and against the shuffle being applied without a seed."""
    sizes = np.random.default_rng(0).integers(1, 4, 20).tolist()
    groups = [f"s{g:02d}" for g, size in enumerate(sizes) for _ in range(size)]  # ids sort like the subject index
    folds = subject_kfold(list(range(len(groups))), groups, n_splits=4, shuffle=False)
    got = [{int(groups[i][1:]) for i in test} for _, test in folds]
    assert got == _greedy_reference(sizes, 4)


def test_fallback_is_seeded():
    """The fallback shuffles tied subjects with ``seed``: the same seed gives the same folds, another seed other folds
    (of the same sizes). Guards against the seed being ignored (an unseeded shuffle) or the shuffle being skipped."""
    sizes = [2] * 6 + [1] * 6
    groups = [f"s{g:02d}" for g, size in enumerate(sizes) for _ in range(size)]
    targets = list(range(len(groups)))

    def tests(seed):
        return [t.tolist() for _, t in subject_kfold(targets, groups, n_splits=3, seed=seed)]

    assert tests(1) == tests(1) and tests(2) == tests(2)
    assert len({str(tests(s)) for s in range(6)}) > 1
    assert all(_fold_sizes(subject_kfold(targets, groups, 3, seed=s)) == [6, 6, 6] for s in range(6))
    unshuffled = [t.tolist() for _, t in subject_kfold(targets, groups, n_splits=3, seed=0, shuffle=False)]
    assert unshuffled != tests(0) or unshuffled != tests(1)  # a seeded shuffle, not the plain order


def test_train_val_split_seed_is_passed_on_and_the_first_fold_is_validation():
    """The validation part is the first fold of the seeded k-fold split (the documented contract), the default seed
    is 0, the seed is used (5 and 5 agree, seeds 0..5 do not all agree), and a too-small input names the call.
    Guards against the seed being dropped or replaced (an unseeded split), another fold being returned and the
    error naming nothing."""
    targets, groups = [i % 3 for i in range(60)], [f"u{i // 3:02d}" for i in range(60)]  # 20 subjects of 3
    train, val = subject_train_val_split(targets, groups, 0.25, seed=5)
    first_train, first_test = subject_kfold(targets, groups, n_splits=4, seed=5)[0]
    assert val.tolist() == first_test.tolist() and train.tolist() == first_train.tolist()
    assert subject_train_val_split(targets, groups, 0.25, seed=5)[1].tolist() == val.tolist()
    assert subject_train_val_split(targets, groups, 0.25)[1].tolist() == subject_train_val_split(
        targets, groups, 0.25, seed=0)[1].tolist()
    assert len({str(subject_train_val_split(targets, groups, 0.25, seed=s)[1].tolist()) for s in range(6)}) > 1
    with pytest.raises(ValueError, match=r"^subject_train_val_split\(val_fraction=0.25\): expected at least 4"):
        subject_train_val_split([0, 1, 0], ["a", "b", "c"], 0.25)


def test_class_balanced_subset_is_seeded():
    """The same seed draws the same subset, other seeds draw others: guards against an unseeded generator."""
    targets = [i % 4 for i in range(400)]
    assert class_balanced_subset(targets, 10, seed=7) == class_balanced_subset(targets, 10, seed=7)
    assert len({str(class_balanced_subset(targets, 10, seed=s)) for s in range(4)}) == 4


def test_subject_kfold_defaults_are_five_folds_and_seed_0():
    """Guards against other defaults for ``n_splits`` (5) and ``seed`` (0): the Adience protocol is five folds,
    and a default seed other than 0 would change every fold of a config that does not set one."""
    targets = [i % 2 for i in range(40)]
    groups = [f"s{i // 2}" for i in range(40)]  # 20 subjects of 2 images
    folds = subject_kfold(targets, groups)
    assert len(folds) == 5
    seeded = subject_kfold(targets, groups, n_splits=5, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, seeded, strict=True))
    other = subject_kfold(targets, groups, n_splits=5, seed=1)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(folds, other, strict=True))


def test_subject_kfold_keeps_scikit_learns_small_class_warning_from_the_user(recwarn):
    """Guards against dropping the filter: with a class of fewer samples than folds (but another class with
    enough, so the stratified splitter runs) scikit-learn warns "The least populated class in y has only 2
    members", which says nothing the user can act on here."""
    targets = [0] * 10 + [1] * 2
    groups = [f"s{i}" for i in range(12)]
    subject_kfold(targets, groups, n_splits=3, seed=0)
    assert [str(w.message) for w in recwarn if "least populated" in str(w.message)] == []


def test_subject_kfold_errors_name_the_function():
    """Guards against the group-count error losing the name of the split that raised it."""
    with pytest.raises(ValueError, match=r"^subject_kfold: expected at least 3 distinct groups \(subjects\), got 2$"):
        subject_kfold([0, 1, 0, 1], ["a", "a", "b", "b"], n_splits=3)
