"""`DigitsDataModule`: scikit-learn's handwritten digits, real data that ships inside the wheel."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import Dataset, TensorDataset

from crl_lightning.data.base import ImageDataModule

__all__ = ["DigitsDataModule"]


class _Digits(TensorDataset):
    """(1, 8, 8) float32 images standardised with the training mean/std, int64 targets."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        super().__init__(images, targets)
        self.targets = targets.tolist()


class DigitsDataModule(ImageDataModule):
    """The UCI/scikit-learn optical digits: 1,797 real 8x8 grey images of 10 classes (0..9).

    No download, no files: the data ships with scikit-learn. A seeded stratified split holds out
    ``test_split`` of the images for test and ``val_split`` of the rest for validation (defaults give
    1,293 / 144 / 360). Pixels (0..16) are standardised with the training split's mean and std.

    Args:
        batch_size: samples per batch.
        num_workers: DataLoader workers (0 is fastest for this in-memory data).
        pin_memory: pin host memory.
        persistent_workers: keep workers alive between epochs.
        seed: seed of both splits.
        val_split: fraction of the non-test images held out for validation.
        test_split: fraction of all images held out for test.

    Raises:
        ValueError: ``test_split`` outside (0, 1), or any base-class argument error.
    """

    num_classes = 10
    in_chans = 1

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        val_split: float = 0.1,
        test_split: float = 0.2,
    ) -> None:
        super().__init__(".", batch_size, num_workers, pin_memory, persistent_workers, seed, val_split)
        if not 0.0 < test_split < 1.0:
            raise ValueError(f"test_split: expected a fraction in (0, 1), got {test_split}")
        self.test_split = test_split
        self._splits: dict[str, Dataset] | None = None

    def build_dataset(self, split: str) -> Dataset:
        if self._splits is None:
            digits = load_digits()
            images = digits.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8)
            targets = digits.target.astype(np.int64)
            train_idx, test_idx = train_test_split(
                np.arange(len(targets)), test_size=self.test_split, random_state=self.seed, stratify=targets
            )
            mean, std = images[train_idx].mean(), images[train_idx].std()
            x = torch.from_numpy((images - mean) / std)
            y = torch.from_numpy(targets)
            self._splits = {"train": _Digits(x[train_idx], y[train_idx]), "test": _Digits(x[test_idx], y[test_idx])}
        if split not in self._splits:
            raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
        return self._splits[split]
