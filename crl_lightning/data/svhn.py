"""SVHN cropped digits: the ``*_32x32.mat`` files, labels 0..9, no augmentation (paper Sec. IV-A-1)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from crl_lightning.data import transforms as T
from crl_lightning.data.base import ImageDataModule, explain_download_failure

__all__ = ["SVHN", "SVHNDataModule", "SVHN_FILES", "read_svhn_mat"]

log = logging.getLogger(__name__)

#: split -> (file name, official number of images).
SVHN_FILES: dict[str, tuple[str, int]] = {
    "train": ("train_32x32.mat", 73_257),
    "test": ("test_32x32.mat", 26_032),
    "extra": ("extra_32x32.mat", 531_131),
}
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"


def read_svhn_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one SVHN ``.mat`` file (MATLAB v5, as distributed).

    The file holds ``X``: (32, 32, 3, N) uint8 and ``y``: (N, 1) labels 1..10, where 10 is the digit 0.

    Args:
        path: the ``.mat`` file.

    Returns:
        ``(images, labels)``: images (N, 32, 32, 3) uint8 (HWC, C-contiguous), labels (N,) int64 in 0..9.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable MATLAB v5 file, or ``X``/``y`` have the wrong keys,
            shape, dtype or label range (the message says expected vs got).
    """
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SVHN: expected the file {path}, found none")
    try:
        mat = loadmat(path)
    except Exception as err:  # scipy raises ValueError, IndexError, MatReadError... on a bad file
        msg = f"SVHN: cannot read {path} as a MATLAB v5 .mat file ({err}); re-download it"
        raise ValueError(msg) from err
    missing = {"X", "y"} - set(mat)
    if missing:
        found = sorted(k for k in mat if not k.startswith("_"))
        raise ValueError(f"SVHN: {path}: expected the variables X and y, got {found}")
    x, y = mat["X"], mat["y"]
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise ValueError(f"SVHN: {path}: X: expected (32, 32, 3, N) uint8, got {x.shape} {x.dtype}")
    n = x.shape[3]
    if y.size != n or (y.ndim == 2 and y.shape[1] != 1) or y.ndim > 2:
        raise ValueError(f"SVHN: {path}: y: expected ({n}, 1) to match X, got {y.shape}")
    labels = y.reshape(-1).astype(np.int64)
    bad = (labels < 1) | (labels > 10)
    if bad.any():
        raise ValueError(
            f"SVHN: {path}: y: expected labels in 1..10 (10 = digit 0), got "
            f"{sorted(set(labels[bad].tolist()))[:10]} in {int(bad.sum())} rows"
        )
    labels[labels == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), labels


class SVHN(Dataset):
    """SVHN cropped digits from ``<root>/{train,test,extra}_32x32.mat``, one or more splits concatenated.

    ``dataset[i]`` is ``(PIL RGB 32x32 image, int label in 0..9)``.

    Args:
        root: folder holding the ``.mat`` files (torchvision's SVHN layout).
        splits: names among ``"train"``, ``"test"``, ``"extra"``, concatenated in this order.

    Raises:
        ValueError: an unknown split name, or a malformed file (see `read_svhn_mat`).
        FileNotFoundError: a file is missing; the message names it and where to get it.
    """

    def __init__(self, root: str | Path, splits: Sequence[str] = ("train",)) -> None:
        unknown = [s for s in splits if s not in SVHN_FILES]
        if unknown or not splits:
            raise ValueError(f"splits: expected a non-empty subset of {list(SVHN_FILES)}, got {list(splits)}")
        root = Path(root)
        images, labels = [], []
        for split in splits:
            name, official = SVHN_FILES[split]
            path = root / name
            if not path.is_file():
                raise FileNotFoundError(
                    f"SVHN: expected {path} (split {split!r}); pass --data.download true, or download "
                    f"{SVHN_URL}{name} into {root}"
                )
            x, y = read_svhn_mat(path)
            if len(y) != official:
                log.info("SVHN %s: %d images (the official file has %d)", name, len(y), official)
            images.append(x)
            labels.append(y)
        self.images = images[0] if len(images) == 1 else np.concatenate(images)
        self.labels = labels[0] if len(labels) == 1 else np.concatenate(labels)
        self.splits = tuple(splits)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[index]), int(self.labels[index])

    @property
    def targets(self) -> list[int]:
        """Label (0..9) of every sample."""
        return self.labels.tolist()


class SVHNDataModule(ImageDataModule):
    """SVHN: 73,257 train (+ 531,131 extra = 604,388) / 26,032 test 32x32 digits, 10 classes (0..9).

    Reads the ``.mat`` files of the "cropped digits" format from ``data_dir`` (torchvision's layout:
    ``train_32x32.mat``, ``test_32x32.mat``, ``extra_32x32.mat``). As in the paper (Sec. IV-A-1) training
    uses all training data (``use_extra=True``) without augmentation: train and eval images are only
    scaled to [0, 1] and normalised (`transforms.SVHN_STATS`). The label 10 of the files becomes 0.

    Args:
        data_dir: folder with the ``.mat`` files.
        use_extra: train on train + extra (604,388 images, the paper's setting) instead of train only.
        download: download missing files in `prepare_data` (rank 0, through torchvision).
        batch_size: per-process batch size (paper: 64).
        num_workers: DataLoader workers.
        pin_memory: pin host memory.
        persistent_workers: keep workers alive between epochs.
        seed: seed of the optional validation split.
        val_split: fraction of the training images held out for validation (stratified); 0 validates
            on test, as the paper reports test curves.

    Raises:
        FileNotFoundError: at setup, a ``.mat`` file is missing and ``download`` is off.
        ValueError: a file is malformed (see `read_svhn_mat`).
    """

    num_classes = 10

    def __init__(
        self,
        data_dir: str | Path = "data/svhn",
        use_extra: bool = True,
        download: bool = False,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        val_split: float = 0.0,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, pin_memory, persistent_workers, seed, val_split)
        self.use_extra, self.download = use_extra, download

    def _splits(self, split: str) -> tuple[str, ...]:
        if split == "train":
            return ("train", "extra") if self.use_extra else ("train",)
        if split == "test":
            return ("test",)
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")

    def prepare_data(self) -> None:
        if self.download:
            from torchvision.datasets import SVHN as TorchvisionSVHN

            for name in self._splits("train") + self._splits("test"):
                if not (self.data_dir / SVHN_FILES[name][0]).is_file():
                    with explain_download_failure("SVHN", f"{SVHN_URL}{SVHN_FILES[name][0]}", self.data_dir):
                        TorchvisionSVHN(str(self.data_dir), split=name, download=True)

    def build_dataset(self, split: str) -> Dataset:
        return SVHN(self.data_dir, self._splits(split))

    def train_transform(self) -> Callable:
        return T.to_normalized_tensor(T.SVHN_STATS)

    def eval_transform(self) -> Callable:
        return T.to_normalized_tensor(T.SVHN_STATS)
