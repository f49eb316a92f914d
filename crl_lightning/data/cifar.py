"""CIFAR-10 / CIFAR-100 DataModules over torchvision's datasets (python pickle batches)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100

from crl_lightning.data import transforms as T
from crl_lightning.data.base import ImageDataModule, explain_download_failure

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule"]


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (50,000 train / 10,000 test, 32x32 RGB, 10 classes) in torchvision's layout.

    Expects ``<data_dir>/cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
    ``batches.meta``), as extracted from ``cifar-10-python.tar.gz``. ``download=True`` fetches it in
    `prepare_data` (rank 0 only). Training uses the paper's pad-4 random crop + horizontal flip.

    Args:
        data_dir: folder that holds (or will hold) ``cifar-10-batches-py``.
        download: download the archive in `prepare_data` when missing.
        batch_size: per-process batch size (paper: 256).
        num_workers: DataLoader workers.
        pin_memory: pin host memory.
        persistent_workers: keep workers alive between epochs.
        seed: seed of the optional val split.
        val_split: fraction of train held out for validation; 0 validates on test (as the paper).

    Raises:
        FileNotFoundError: at setup, when the files are missing and ``download`` is off; the message
            names the folder it looked in and how to get the data.
    """

    num_classes = 10
    dataset_cls: type[CIFAR10] = CIFAR10
    folder = "cifar-10-batches-py"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    stats = T.CIFAR10_STATS

    def __init__(
        self,
        data_dir: str | Path = "data",
        download: bool = False,
        batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        val_split: float = 0.0,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, pin_memory, persistent_workers, seed, val_split)
        self.download = download

    def prepare_data(self) -> None:
        if self.download:
            with explain_download_failure(self.dataset_cls.__name__, self.url, self.data_dir):
                self.dataset_cls(str(self.data_dir), train=True, download=True)
                self.dataset_cls(str(self.data_dir), train=False, download=True)

    def build_dataset(self, split: str) -> Dataset:
        if split not in ("train", "test"):
            raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
        folder = self.data_dir / self.folder
        try:
            return self.dataset_cls(str(self.data_dir), train=split == "train", download=False)
        except RuntimeError as err:
            found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "nothing"
            raise FileNotFoundError(
                f"{self.dataset_cls.__name__}: expected the python-version batches in {folder} "
                f"(found {found}); pass --data.download true, or download {self.url} and extract it "
                f"into {self.data_dir}"
            ) from err

    def train_transform(self) -> Callable:
        return T.cifar_train(self.stats)

    def eval_transform(self) -> Callable:
        return T.to_normalized_tensor(self.stats)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (50,000 / 10,000, 100 fine classes); expects ``<data_dir>/cifar-100-python/``.

    Same arguments, augmentation and errors as `CIFAR10DataModule`.
    """

    num_classes = 100
    dataset_cls = CIFAR100
    folder = "cifar-100-python"
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    stats = T.CIFAR100_STATS
