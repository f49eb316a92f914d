"""Seeded splits: class-balanced subsets, and subject-exclusive (grouped) k-fold and train/val splits.

`class_balanced_subset` draws the same number of samples from every class (a smaller training set
that keeps the class balance, e.g. for a CPU study).

A *group* is whatever must not straddle two splits: the person photographed (Adience ``user_id``),
a patient, a recording session. All functions take one group id and one integer class per sample,
keep every group whole, stratify the class balance as far as whole groups allow
(scikit-learn's `StratifiedGroupKFold`), are seeded, and verify the result with
`check_subject_exclusive`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Sequence

import numpy as np

__all__ = ["check_subject_exclusive", "class_balanced_subset", "subject_kfold", "subject_train_val_split"]

log = logging.getLogger(__name__)


def class_balanced_subset(
    targets: Sequence[int], per_class: int, seed: int, indices: Sequence[int] | None = None
) -> list[int]:
    """A seeded subset with exactly ``per_class`` samples of every class, drawn without replacement.

    Args:
        targets: the integer class of every sample of the full dataset.
        per_class: samples to keep per class, ``>= 1``.
        seed: seed of the draw (numpy ``default_rng``); the same seed gives the same subset.
        indices: the positions to draw from (e.g. what a validation split left); ``None``: all.

    Returns:
        The chosen positions (into ``targets``), sorted.

    Raises:
        ValueError: ``per_class < 1``, or a class present among ``indices`` has fewer than ``per_class``
            samples there (the message names the class and its count).
    """
    if per_class < 1:
        raise ValueError(f"per_class: expected >= 1, got {per_class}")
    pool = np.arange(len(targets)) if indices is None else np.asarray(indices, dtype=np.int64)
    labels = np.asarray(targets)[pool]
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = pool[labels == cls]
        if len(members) < per_class:
            raise ValueError(
                f"train_per_class: expected at least {per_class} samples of class {int(cls)}, got {len(members)}"
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return sorted(np.concatenate(chosen).tolist())


def _check_inputs(targets: Sequence[int], groups: Sequence[Hashable], n_splits: int, what: str) -> int:
    if len(targets) != len(groups):
        raise ValueError(f"groups: expected one group id per target ({len(targets)}), got {len(groups)}")
    if n_splits < 2:
        raise ValueError(f"n_splits: expected >= 2, got {n_splits}")
    n_groups = len(set(groups))
    if n_groups < n_splits:
        raise ValueError(f"{what}: expected at least {n_splits} distinct groups (subjects), got {n_groups}")
    return n_groups


def check_subject_exclusive(
    groups: Sequence[Hashable],
    first: Sequence[int] | np.ndarray,
    second: Sequence[int] | np.ndarray,
    names: tuple[str, str] = ("train", "test"),
) -> None:
    """Raise if a group id occurs both among the samples ``first`` and among ``second``.

    Args:
        groups: group id of every sample.
        first: sample indices of one split.
        second: sample indices of the other split.
        names: the two splits' names, for the message.

    Raises:
        ValueError: a group is in both splits; the message names up to 10 of them and their count.
    """
    shared = {groups[i] for i in first} & {groups[i] for i in second}
    if shared:
        listed = sorted(map(str, shared))
        raise ValueError(
            f"subject leak: expected no subject (group id) in both {names[0]} and {names[1]}, "
            f"got {len(shared)}: {listed[:10]}{' ...' if len(listed) > 10 else ''}"
        )


def subject_kfold(
    targets: Sequence[int], groups: Sequence[Hashable], n_splits: int = 5, seed: int = 0, shuffle: bool = True
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Subject-exclusive, class-stratified k-fold split (scikit-learn `StratifiedGroupKFold`).

    Each group lands in exactly one test fold; the folds' class distributions are kept as close to
    the overall one as whole groups allow. Deterministic for a given ``seed``. When every class has
    fewer samples than ``n_splits`` (tiny data), stratification is impossible and the groups are
    balanced by size only (largest first into the smallest fold, random tie order), as `GroupKFold`.

    Args:
        targets: (N,) integer class of every sample.
        groups: (N,) group (subject) id of every sample.
        n_splits: number of folds k, ``2 <= k <= number of groups``.
        seed: random state of the shuffle (unused when ``shuffle`` is false).
        shuffle: shuffle groups before assigning them to folds.

    Returns:
        k pairs ``(train_idx, test_idx)`` of sorted int64 index arrays; the test folds partition ``0..N-1``.

    Raises:
        ValueError: lengths differ, ``n_splits < 2``, or fewer groups than folds.

    Example:
        >>> folds = subject_kfold([0, 1, 0, 1, 0, 1], ["a", "a", "b", "b", "c", "c"], n_splits=3)
        >>> sorted(len(test) for _, test in folds)
        [2, 2, 2]
    """
    _check_inputs(targets, groups, n_splits, "subject_kfold")
    y = np.asarray(targets)
    group_codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
    if np.all(np.unique(y, return_counts=True)[1] < n_splits):
        log.info("subject_kfold: every class has fewer than %d samples; balancing groups by size only", n_splits)
        splits = _group_kfold(group_codes, n_splits, seed if shuffle else None)
    else:
        from sklearn.model_selection import StratifiedGroupKFold

        splitter = StratifiedGroupKFold(n_splits, shuffle=shuffle, random_state=seed if shuffle else None)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*least populated class.*")
            splits = list(splitter.split(np.zeros(len(y)), y, group_codes))
    folds = []
    for train_idx, test_idx in splits:
        check_subject_exclusive(groups, train_idx, test_idx, ("train", "test"))
        folds.append((np.sort(train_idx).astype(np.int64), np.sort(test_idx).astype(np.int64)))
    return folds


def _group_kfold(group_codes: np.ndarray, n_splits: int, seed: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Unstratified group k-fold: each group, largest first, goes to the fold with the fewest samples."""
    sizes = np.bincount(group_codes)
    order = np.arange(len(sizes))
    if seed is not None:
        order = np.random.default_rng(seed).permutation(order)
    order = order[np.argsort(-sizes[order], kind="stable")]
    fold_of_group = np.empty(len(sizes), dtype=np.int64)
    load = np.zeros(n_splits, dtype=np.int64)
    for g in order:
        k = int(np.argmin(load))
        fold_of_group[g] = k
        load[k] += sizes[g]
    fold = fold_of_group[group_codes]
    return [(np.flatnonzero(fold != k), np.flatnonzero(fold == k)) for k in range(n_splits)]


def subject_train_val_split(
    targets: Sequence[int], groups: Sequence[Hashable], val_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole subjects for validation: about ``val_fraction`` of the samples, class-stratified.

    The validation part is the first fold of a ``round(1 / val_fraction)``-fold `subject_kfold`, so it
    holds roughly ``1 / round(1 / val_fraction)`` of the samples (exactly that only when groups are
    equal in size).

    Args:
        targets: (N,) integer class of every sample.
        groups: (N,) group (subject) id of every sample.
        val_fraction: wanted fraction in ``(0, 0.5]``.
        seed: random state.

    Returns:
        ``(train_idx, val_idx)``, sorted int64 index arrays with no group in common.

    Raises:
        ValueError: ``val_fraction`` outside ``(0, 0.5]``, or fewer groups than ``round(1 / val_fraction)``.
    """
    if not 0.0 < val_fraction <= 0.5:
        raise ValueError(f"val_fraction: expected a fraction in (0, 0.5], got {val_fraction}")
    n_splits = max(2, round(1.0 / val_fraction))
    _check_inputs(targets, groups, n_splits, f"subject_train_val_split(val_fraction={val_fraction})")
    return subject_kfold(targets, groups, n_splits=n_splits, seed=seed)[0]
