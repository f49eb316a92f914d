"""`DigitsDataModule`: scikit-learn's handwritten digits, real data that ships inside the wheel."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from crl_lightning.data import transforms as T
from crl_lightning.data.base import ImageDataModule
from crl_lightning.data.datasets import TensorImageDataset

__all__ = ["DigitsDataModule"]

#: The digits' pixels are 0..16; times 15 they are exact uint8 values 0..240.
PIXEL_SCALE = 15


class DigitsDataModule(ImageDataModule):
    """The UCI/scikit-learn optical digits: 1,797 real 8x8 grey images of 10 classes (0..9).

    No download, no files: the data ships with scikit-learn. A seeded stratified split holds out
    ``test_split`` of the images for test and ``val_split`` of the rest for validation (defaults give
    1,293 / 144 / 360). The images are held as uint8 (N, 1, 8, 8) tensors (pixels 0..16 times 15) and
    standardised with the training split's mean and std (no augmentation), per image or, with
    ``augment.on_device``, on whole batches on the device.

    Args:
        batch_size: samples per batch.
        val_split: fraction of the non-test images held out for validation.
        test_split: fraction of all images held out for test.
        **kwargs: the other options of `ImageDataModule` (``seed``, the seed of both splits; ``num_workers``,
            0 is fastest for this in-memory data; ``augment``, ...); not ``data_dir`` (there are no files).

    Raises:
        ValueError: ``test_split`` outside (0, 1), or any base-class argument error.
    """

    num_classes = 10
    in_chans = 1
    #: Class names: the digits themselves.
    classes = [str(d) for d in range(10)]

    def __init__(self, batch_size: int = 64, val_split: float = 0.1, test_split: float = 0.2, **kwargs: Any) -> None:
        super().__init__(".", batch_size=batch_size, val_split=val_split, **kwargs)
        if not 0.0 < test_split < 1.0:
            raise ValueError(f"test_split: expected a fraction in (0, 1), got {test_split}")
        self.test_split = test_split
        self._splits: dict[str, TensorImageDataset] | None = None

    def build_dataset(self, split: str) -> TensorImageDataset:
        if self._splits is None:
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split

            digits = load_digits()
            images = torch.from_numpy((digits.images * PIXEL_SCALE).astype(np.uint8)[:, None])  # (1797, 1, 8, 8)
            targets = digits.target.astype(np.int64)
            train_idx, test_idx = train_test_split(
                np.arange(len(targets)), test_size=self.test_split, random_state=self.seed, stratify=targets
            )
            train = images[train_idx].double() / 255.0
            if self.stats is None:  # else restored from a checkpoint (`load_state_dict`): what it was trained with
                self.stats = ((train.mean().item(),), (train.std(unbiased=False).item(),))
            self._splits = {
                "train": TensorImageDataset(images[train_idx], targets[train_idx].tolist()),
                "test": TensorImageDataset(images[test_idx], targets[test_idx].tolist()),
            }
        if split not in self._splits:
            raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
        return self._splits[split]

    def input_size(self) -> tuple[int, int]:
        """8x8: the digits' native size, which the network is trained at."""
        return 8, 8

    def train_transform(self) -> Callable:
        return T.to_normalized_tensor(self.normalization())

    def eval_transform(self) -> Callable:
        return T.to_normalized_tensor(self.normalization())
