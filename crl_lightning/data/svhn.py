"""SVHN cropped digits: the ``*_32x32.mat`` files (read by torchvision), labels 0..9, no augmentation (paper IV-A-1)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torchvision.datasets import SVHN as TorchvisionSVHN

from crl_lightning.data import transforms as T
from crl_lightning.data.base import ImageDataModule
from crl_lightning.data.datasets import TensorImageDataset, explain_download_failure

__all__ = ["SVHNDataModule", "load_svhn"]

log = logging.getLogger(__name__)

SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"


def load_svhn(root: str | Path, split: str) -> TensorImageDataset:
    """One SVHN split from ``<root>/<split>_32x32.mat``, read by `torchvision.datasets.SVHN`.

    torchvision checks the file's MD5 against the official one, reads ``X`` (32, 32, 3, N) and ``y`` (N, 1),
    and maps the label 10 (the digit 0) to 0.

    Args:
        root: folder holding the ``.mat`` files (torchvision's SVHN layout).
        split: ``"train"``, ``"test"`` or ``"extra"``.

    Returns:
        uint8 (N, 3, 32, 32) images and int labels in 0..9.

    Raises:
        FileNotFoundError: the file is missing; the message names it and where to get it.
        ValueError: an unknown split, a file that fails the integrity check (truncated, corrupt, or not the
            official file: the message names it), or labels outside 1..10 in the file.
    """
    if split not in TorchvisionSVHN.split_list:
        raise ValueError(f"split: expected one of {list(TorchvisionSVHN.split_list)}, got {split!r}")
    path = Path(root) / TorchvisionSVHN.split_list[split][1]
    if not path.is_file():
        raise FileNotFoundError(
            f"SVHN: expected {path} (split {split!r}); pass --data.download true, or download "
            f"{SVHN_URL}{path.name} into {root}"
        )
    try:
        dataset = TorchvisionSVHN(str(root), split=split)
    except RuntimeError as err:
        raise ValueError(
            f"SVHN: {path} ({path.stat().st_size:,} bytes) fails torchvision's MD5 integrity check: the file is "
            f"truncated, corrupt or not the official one; delete it and download {SVHN_URL}{path.name} again"
        ) from err
    labels = torch.from_numpy(dataset.labels.reshape(-1))
    if labels.numel() != dataset.data.shape[0] or not bool(((labels >= 0) & (labels <= 9)).all()):
        raise ValueError(f"SVHN: {path}: y: expected one label in 1..10 per image (10 = digit 0), got "
                         f"{labels.numel()} labels for {dataset.data.shape[0]} images, values "
                         f"{labels.unique()[:12].tolist()}")
    return TensorImageDataset(torch.from_numpy(dataset.data), labels.tolist())


class SVHNDataModule(ImageDataModule):
    """SVHN: 73,257 train (+ 531,131 extra = 604,388) / 26,032 test 32x32 digits, 10 classes (0..9).

    Reads the ``.mat`` files of the "cropped digits" format from ``data_dir`` (torchvision's layout:
    ``train_32x32.mat``, ``test_32x32.mat``, ``extra_32x32.mat``) with `torchvision.datasets.SVHN`, and keeps
    them in memory as uint8 tensors (train + extra concatenated: 1.9 GB). As in the paper (Sec. IV-A-1)
    training uses all training data (``use_extra=True``) without augmentation: train and eval images are
    only scaled to [0, 1] and normalised (`transforms.SVHN_STATS`). The label 10 of the files becomes 0.

    Args:
        data_dir: folder with the ``.mat`` files.
        use_extra: train on train + extra (604,388 images, the paper's setting) instead of train only.
        download: download missing files in `prepare_data` (rank 0, through torchvision).
        batch_size: per-process batch size (paper: 64).
        **kwargs: the other options of `ImageDataModule` (loader options, ``val_split``: 0 validates on test, as
            the paper reports test curves; ``augment``: with ``on_device`` the uint8 batches are normalised on
            the device they are moved to).

    Raises:
        FileNotFoundError: at setup, a ``.mat`` file is missing and ``download`` is off.
        ValueError: a file fails the integrity check or holds labels outside 1..10 (see `load_svhn`).
    """

    num_classes = 10
    #: Class names: the digits themselves (the files' label 10 is the digit 0).
    classes = [str(d) for d in range(10)]
    stats = T.SVHN_STATS

    def __init__(
        self,
        data_dir: str | Path = "data/svhn",
        use_extra: bool = True,
        download: bool = False,
        batch_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir, batch_size=batch_size, **kwargs)
        self.use_extra, self.download = use_extra, download

    def _splits(self, split: str) -> tuple[str, ...]:
        if split == "train":
            return ("train", "extra") if self.use_extra else ("train",)
        if split == "test":
            return ("test",)
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")

    def prepare_data(self) -> None:
        if self.download:
            for name in self._splits("train") + self._splits("test"):
                filename = TorchvisionSVHN.split_list[name][1]
                if not (self.data_dir / filename).is_file():
                    with explain_download_failure("SVHN", f"{SVHN_URL}{filename}", self.data_dir):
                        TorchvisionSVHN(str(self.data_dir), split=name, download=True)

    def build_dataset(self, split: str) -> TensorImageDataset:
        parts = [load_svhn(self.data_dir, name) for name in self._splits(split)]
        if len(parts) == 1:
            return parts[0]
        return TensorImageDataset(torch.cat([p.images for p in parts]), [t for p in parts for t in p.targets])

    def train_transform(self) -> Callable:
        return T.to_normalized_tensor(self.stats)

    def eval_transform(self) -> Callable:
        return T.to_normalized_tensor(self.stats)
