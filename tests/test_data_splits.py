"""Splits: subject-exclusive k-fold and train/val (crl_lightning.data.splits), stratified to within one sample
of exact on a skewed data set with a rare class; the seeded stratified val split of `ImageDataModule`."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from torch.utils.data import Dataset

from crl_lightning.data.base import ImageDataModule
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


def test_kfold_is_seeded():
    targets, groups = _data(n_groups=40, per_group=5, n_classes=2, seed=1)
    a = subject_kfold(targets, groups, 4, seed=7)
    b = subject_kfold(targets, groups, 4, seed=7)
    c = subject_kfold(targets, groups, 4, seed=8)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, c, strict=True))


def _skewed():
    """Single-class subjects, classes of 103 / 31 / 7 samples (class 2 rare): (targets, groups).

    Per class: 43 / 11 / 7 subjects with one image and 30 / 10 / 0 with two, named in random order (so
    that dealing subjects out in name order is not stratified by accident). Whole subjects can be dealt
    out so that every split holds its share of every class to within one sample; a split that ignores
    the classes (size-balanced groups, `GroupKFold`) leaves folds without the rare class or several
    samples off elsewhere.
    """
    names = iter(f"s{i:03d}" for i in np.random.default_rng(0).permutation(101))  # ids not in class order
    subjects = [(c, size, next(names)) for c, (singles, pairs) in {0: (43, 30), 1: (11, 10), 2: (7, 0)}.items()
                for size, count in ((1, singles), (2, pairs)) for _ in range(count)]
    targets, groups = [], []
    for c, size, name in sorted(subjects, key=lambda s: s[2]):
        targets += [c] * size
        groups += [name] * size
    return targets, groups


def _assert_within_one_of_exact(targets, part, fraction):
    counts = np.bincount(np.asarray(targets)[part], minlength=3)
    exact = np.bincount(targets) * fraction
    assert np.all(np.abs(counts - exact) < 1), f"class counts {counts.tolist()}, exact {exact.tolist()}"


@pytest.mark.parametrize("seed", range(4))
def test_kfold_class_counts_within_one_sample_of_exact(seed):
    targets, groups = _skewed()
    assert np.bincount(targets).tolist() == [103, 31, 7] and len(set(groups)) == 101
    folds = subject_kfold(targets, groups, n_splits=5, seed=seed)
    for train, test in folds:
        _assert_within_one_of_exact(targets, test, 1 / 5)  # e.g. the rare class: 1 or 2 of 7 (exact 1.4)
        check_subject_exclusive(groups, train, test)
    assert sorted(np.concatenate([test for _, test in folds]).tolist()) == list(range(141))


@pytest.mark.parametrize(("fraction", "seed"), [(0.2, 0), (0.2, 1), (0.1, 0), (0.1, 3)])
def test_train_val_split_class_counts_within_one_sample_of_exact(fraction, seed):
    targets, groups = _skewed()
    train, val = subject_train_val_split(targets, groups, fraction, seed=seed)
    _assert_within_one_of_exact(targets, val, fraction)
    check_subject_exclusive(groups, train, val, ("train", "val"))
    assert sorted([*train, *val]) == list(range(141))


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


# ----- the seeded val split of ImageDataModule (datasets without their own validation split) -------
class _Targets(Dataset):
    def __init__(self, targets):
        self.targets = list(targets)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return i, self.targets[i]


class _ListedModule(ImageDataModule):
    """A DataModule whose train split is ``targets`` (sample ``i`` is ``(i, targets[i])``)."""

    num_classes = 5

    def __init__(self, targets, **kwargs):
        super().__init__(**kwargs)
        self.targets = targets

    def build_dataset(self, split):
        return _Targets(self.targets if split == "train" else [0, 1])


#: 200 samples: class 0 common, class 4 rare (3 samples); exact val shares at 0.2 are 24 / 10 / 4 / 1.4 / 0.6.
SKEWED = [0] * 120 + [1] * 50 + [2] * 20 + [3] * 7 + [4] * 3


@pytest.mark.parametrize("seed", range(4))
def test_datamodule_val_split_is_stratified_within_one_sample(seed):
    dm = _ListedModule(SKEWED, val_split=0.2, seed=seed)
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert len(val) == 40 and len(train) == 160
    assert sorted([i for i, _ in train] + [i for i, _ in val]) == list(range(200))  # a partition
    counts = np.bincount(val.targets, minlength=5)
    exact = np.bincount(SKEWED) * 0.2
    assert np.all(np.abs(counts - exact) < 1), f"val class counts {counts.tolist()}, exact {exact.tolist()}"
    assert val.targets == [SKEWED[i] for i, _ in val]


def test_datamodule_val_split_is_seeded():
    def val_of(seed):
        dm = _ListedModule(SKEWED, val_split=0.2, seed=seed)
        dm.setup("fit")
        return [i for i, _ in dm.datasets["val"]]

    assert val_of(3) == val_of(3) and val_of(3) != val_of(4)
