"""Subject-exclusive k-fold and train/val splits (crl_lightning.data.splits)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from crl_lightning.data.splits import check_subject_exclusive, subject_kfold, subject_train_val_split


def _data(n_groups=30, per_group=6, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    groups = [f"user{g}" for g in range(n_groups) for _ in range(per_group)]
    targets = rng.integers(0, n_classes, len(groups)).tolist()
    return targets, groups


def test_kfold_partitions_and_is_subject_exclusive():
    targets, groups = _data()
    folds = subject_kfold(targets, groups, n_splits=5, seed=0)
    assert len(folds) == 5
    tests = np.concatenate([test for _, test in folds])
    assert sorted(tests.tolist()) == list(range(180))
    for train, test in folds:
        assert len(train) + len(test) == 180
        assert not {groups[i] for i in train} & {groups[i] for i in test}
        assert len({groups[i] for i in test}) == 6  # 30 equal groups over 5 folds
        assert train.dtype == np.int64 and np.all(np.diff(test) > 0)


def test_kfold_is_seeded_and_stratified():
    targets, groups = _data(n_groups=40, per_group=5, n_classes=2, seed=1)
    a = subject_kfold(targets, groups, 4, seed=7)
    b = subject_kfold(targets, groups, 4, seed=7)
    c = subject_kfold(targets, groups, 4, seed=8)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, c, strict=True))
    overall = np.mean(targets)
    for _, test in a:
        assert abs(np.mean(np.asarray(targets)[test]) - overall) < 0.15


def test_kfold_tiny_classes_fall_back_to_size_balanced_groups():
    targets = list(range(8)) * 2  # every class has 2 < 5 samples: no stratification possible
    groups = [f"g{i // 2}" for i in range(16)]
    folds = subject_kfold(targets, groups, n_splits=4, seed=0)
    assert sorted(len(test) for _, test in folds) == [4, 4, 4, 4]
    for train, test in folds:
        check_subject_exclusive(groups, train, test)


def test_train_val_split_fraction_by_subject():
    targets, groups = _data(n_groups=40, per_group=5)
    train, val = subject_train_val_split(targets, groups, 0.1, seed=0)
    assert len(train) + len(val) == 200 and not set(train) & set(val)
    assert not {groups[i] for i in train} & {groups[i] for i in val}
    assert len({groups[i] for i in val}) == 4 and len(val) == 20


def test_check_subject_exclusive_raises_naming_the_subjects():
    groups = ["a", "a", "b", "c"]
    check_subject_exclusive(groups, [0, 1], [2, 3])
    with pytest.raises(ValueError, match=r"both train and test, got 1: \['a'\]"):
        check_subject_exclusive(groups, [0, 2], [1, 3])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: subject_kfold([0, 1], ["a"], 2), r"expected one group id per target \(2\), got 1"),
        (lambda: subject_kfold([0, 1, 0], ["a", "b", "b"], 3), r"expected at least 3 distinct groups .* got 2"),
        (lambda: subject_kfold([0, 1], ["a", "b"], 1), r"n_splits: expected >= 2, got 1"),
        (lambda: subject_train_val_split([0, 1], ["a", "b"], 0.7), r"val_fraction: expected a fraction in \(0, 0\.5\]"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_counter_of_folds_per_group_is_one():
    targets, groups = _data(n_groups=12, per_group=3)
    folds = subject_kfold(targets, groups, 3, seed=2)
    fold_of = {}
    for k, (_, test) in enumerate(folds):
        for i in test:
            fold_of.setdefault(groups[i], set()).add(k)
    assert Counter(len(v) for v in fold_of.values()) == {1: 12}
