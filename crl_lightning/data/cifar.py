"""CIFAR-10 / CIFAR-100 DataModules over torchvision's datasets (python pickle batches), held in memory."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_integrity

from crl_lightning.data import transforms as T
from crl_lightning.data.base import ImageDataModule
from crl_lightning.data.datasets import TensorImageDataset, explain_download_failure

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule"]


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (50,000 train / 10,000 test, 32x32 RGB, 10 classes) in torchvision's layout.

    Expects ``<data_dir>/cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
    ``batches.meta``), as extracted from ``cifar-10-python.tar.gz``; torchvision reads it and checks every
    file's MD5. ``download=True`` fetches it in `prepare_data` (rank 0 only). The images are kept in memory
    as one uint8 (N, 3, 32, 32) tensor per split. Training uses the paper's pad-4 random crop + horizontal
    flip, per image (torchvision v2) or, with ``augment.on_device``, on whole uint8 batches on the device they
    are moved to (`crl_lightning.data.batch_transforms`, same distribution as the per-image pipeline).
    Validation runs on the test split (as the paper) unless ``val_split`` holds out part of train.

    Args:
        data_dir: folder that holds (or will hold) ``cifar-10-batches-py``.
        download: download the archive in `prepare_data` when missing.
        batch_size: per-process batch size (paper: 256).
        **kwargs: the other options of `ImageDataModule` (loader options, ``val_split``, ``augment``, ...).

    Raises:
        FileNotFoundError: at setup, when the files are missing and ``download`` is off; the message
            names the folder it looked in and how to get the data.
        ValueError: at setup, files that fail the MD5 integrity check (named in the message).
    """

    num_classes = 10
    dataset_cls: type[CIFAR10] = CIFAR10
    folder = "cifar-10-batches-py"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    stats = T.CIFAR10_STATS

    def __init__(
        self, data_dir: str | Path = "data", download: bool = False, batch_size: int = 256, **kwargs: Any
    ) -> None:
        super().__init__(data_dir, batch_size=batch_size, **kwargs)
        self.download = download

    def prepare_data(self) -> None:
        if self.download:
            with explain_download_failure(self.dataset_cls.__name__, self.url, self.data_dir):
                self.dataset_cls(str(self.data_dir), train=True, download=True)
                self.dataset_cls(str(self.data_dir), train=False, download=True)

    def _check_files(self) -> None:
        """Raise FileNotFoundError for missing files, ValueError naming the files whose MD5 is wrong."""
        folder = self.data_dir / self.folder
        cls = self.dataset_cls
        files = [*(f for f, _ in cls.train_list + cls.test_list), cls.meta["filename"]]
        md5 = {f: m for f, m in cls.train_list + cls.test_list} | {cls.meta["filename"]: cls.meta["md5"]}
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "nothing"
            raise FileNotFoundError(
                f"{cls.__name__}: expected the python-version batches in {folder}, missing {missing} "
                f"(found {found}); pass --data.download true, or download {self.url} and extract it into "
                f"{self.data_dir}"
            )
        corrupt = [f for f in files if not check_integrity(str(folder / f), md5[f])]
        if corrupt:
            raise ValueError(
                f"{cls.__name__}: {folder}: expected the official files, got {corrupt} failing the MD5 integrity "
                f"check (a truncated or corrupt download); delete {folder} and download {self.url} again"
            )

    def build_dataset(self, split: str) -> TensorImageDataset:
        if split not in ("train", "test"):
            raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
        self._check_files()
        dataset = self.dataset_cls(str(self.data_dir), train=split == "train", download=False)
        images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> NCHW
        return TensorImageDataset(images, self.targets(split, dataset))

    def targets(self, split: str, dataset: CIFAR10) -> list[int]:
        """The class of every image of ``split`` (torchvision's labels)."""
        return dataset.targets

    @property
    def classes(self) -> list[str]:
        """Class names in class-index order, from the dataset's meta file (empty before it exists)."""
        return self._meta_names(self.dataset_cls.meta["key"])

    def _meta_names(self, key: str) -> list[str]:
        meta = self.data_dir / self.folder / self.dataset_cls.meta["filename"]
        if not meta.is_file():
            return []
        with open(meta, "rb") as f:
            return list(pickle.load(f, encoding="latin1")[key])

    def train_transform(self) -> Callable:
        return T.cifar_train(self.stats)

    def eval_transform(self) -> Callable:
        return T.to_normalized_tensor(self.stats)

    def batch_augment(self) -> tuple[int, bool]:
        return 4, True


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (50,000 / 10,000): 100 fine classes, or their 20 coarse superclasses; ``cifar-100-python/``.

    With ``target_type="coarse"`` the labels are the files' ``coarse_labels`` (20 superclasses of exactly 5
    fine classes each, e.g. apple -> fruit_and_vegetables) and ``num_classes`` is 20. Otherwise the same
    arguments, augmentation and errors as `CIFAR10DataModule`.

    Args:
        data_dir: folder that holds (or will hold) ``cifar-100-python``.
        target_type: ``"fine"`` (100 classes, the paper's) or ``"coarse"`` (20 superclasses).
        **kwargs: the other options of `CIFAR10DataModule` (``download``, ``batch_size``, ...).

    Raises:
        ValueError: an unknown ``target_type``; at setup, see `CIFAR10DataModule`.
    """

    num_classes = 100
    dataset_cls = CIFAR100
    folder = "cifar-100-python"
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    stats = T.CIFAR100_STATS

    def __init__(
        self, data_dir: str | Path = "data", target_type: Literal["fine", "coarse"] = "fine", **kwargs: Any
    ) -> None:
        super().__init__(data_dir, **kwargs)
        if target_type not in ("fine", "coarse"):
            raise ValueError(f"target_type: expected 'fine' or 'coarse', got {target_type!r}")
        self.target_type = target_type
        self.num_classes = 20 if target_type == "coarse" else 100

    def targets(self, split: str, dataset: CIFAR10) -> list[int]:
        if self.target_type == "fine":
            return dataset.targets
        labels: list[int] = []
        for filename, _ in dataset.train_list if split == "train" else dataset.test_list:
            with open(self.data_dir / self.folder / filename, "rb") as f:
                labels += pickle.load(f, encoding="latin1")["coarse_labels"]
        return labels

    @property
    def classes(self) -> list[str]:
        return self._meta_names("coarse_label_names" if self.target_type == "coarse" else self.dataset_cls.meta["key"])
