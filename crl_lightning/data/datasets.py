"""Datasets, image loading and collate functions shared by the DataModules of `crl_lightning.data`."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence, Sized
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, cast

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, default_collate, get_worker_info
from torchvision.datasets.folder import IMG_EXTENSIONS

__all__ = [
    "BadImagePolicy",
    "CorruptImageError",
    "ImageFileDataset",
    "TensorImageDataset",
    "TransformedSubset",
    "UnlabelledImageDataset",
    "check_bad_images",
    "check_files_exist",
    "collate_batched",
    "dataset_targets",
    "explain_download_failure",
    "is_image_file",
    "list_image_files",
    "load_rgb_image",
    "skip_none_collate",
]

log = logging.getLogger(__name__)

#: What an `ImageFileDataset` does with an image file it cannot decode.
BadImagePolicy = Literal["raise", "skip"]


def check_bad_images(policy: str) -> BadImagePolicy:
    """``policy`` when it is a `BadImagePolicy` (``"raise"`` or ``"skip"``).

    Raises:
        ValueError: any other value; the message names ``bad_images``.
    """
    if policy not in ("raise", "skip"):
        raise ValueError(f"bad_images: expected 'raise' or 'skip', got {policy!r}")
    return policy  # type: ignore[return-value]


def check_files_exist(paths: Sequence[Path], what: str, hint: str) -> None:
    """Raise naming the missing files when any of ``paths`` is not a file.

    Args:
        paths: the files a dataset lists.
        what: the files, for the message, e.g. ``"Adience: face images"``.
        hint: appended to the message: the expected layout or how to get the data.

    Raises:
        FileNotFoundError: ``{what}: {k} of {n} are missing, e.g. [the first three]; {hint}``.
    """
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{what}: {len(missing)} of {len(paths)} are missing, e.g. {missing[:3]}; {hint}")


class TransformedSubset(Dataset):
    """A view of ``dataset`` restricted to ``indices`` with ``transform`` applied to the image.

    Args:
        dataset: returns ``(image, target)`` pairs, untransformed.
        indices: positions to keep (all when ``None``).
        transform: callable applied to the image, or ``None``.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int] | None = None, transform: Callable | None = None):
        self.dataset, self.transform = dataset, transform
        self.indices = list(range(len(cast(Sized, dataset)))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, Any] | None:
        sample = self.dataset[self.indices[i]]
        if sample is None:  # an unreadable image that the dataset skipped (see `ImageFileDataset`)
            return None
        image, target = sample
        return (self.transform(image) if self.transform is not None else image), target

    @property
    def targets(self) -> list[int] | None:
        targets = dataset_targets(self.dataset)
        return None if targets is None else [int(targets[i]) for i in self.indices]

    @property
    def batched(self) -> bool:
        """True when a batch is fetched as one tensor slice (no per-image transform, a `TensorImageDataset`)."""
        return self.transform is None and isinstance(self.dataset, TensorImageDataset)

    def __getitems__(self, positions: list[int]) -> Any:
        """A DataLoader batch: ``(images, targets)`` tensors when `batched`, else the list of samples."""
        if self.batched:
            return cast(TensorImageDataset, self.dataset).__getitems__([self.indices[i] for i in positions])
        return [self[i] for i in positions]


def dataset_targets(dataset: Dataset) -> Sequence[int] | None:
    """The integer class of every sample, from a ``targets`` (torchvision) or ``labels`` (SVHN) attribute."""
    for name in ("targets", "labels"):
        values = getattr(dataset, name, None)
        if values is not None:
            return values
    return None


class CorruptImageError(RuntimeError):
    """An image file exists but cannot be decoded (truncated, corrupt, or not an image); names the file."""


def load_rgb_image(path: str | Path) -> Image.Image:
    """Fully decode the image at ``path`` and return it as an RGB PIL image.

    Grayscale (``L``), palette, RGBA and CMYK files are converted to RGB (3 channels, uint8).
    The file is decoded completely, so a truncated JPEG fails here rather than later.

    Args:
        path: image file.

    Returns:
        The image, mode ``"RGB"``, size (W, H) as stored.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorruptImageError: the file cannot be decoded; the message names the file and the cause.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"image file not found: {path}") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptImageError(
            f"cannot decode image {path} ({type(err).__name__}: {err}); the file is truncated or corrupt: "
            "replace it, or pass bad_images='skip' (--data.bad_images skip) to skip and count such files"
        ) from err


def collate_batched(batch: Any) -> Any:
    """``collate_fn`` for datasets whose ``__getitems__`` returns the batch already stacked (a tuple of tensors)."""
    return batch if isinstance(batch, tuple) else default_collate(batch)


def skip_none_collate(batch: list[Any]) -> Any:
    """`default_collate` of the samples that are not ``None`` (images skipped under ``bad_images='skip'``).

    Raises:
        CorruptImageError: every sample of the batch was skipped.
    """
    kept = [sample for sample in batch if sample is not None]
    if not kept:
        raise CorruptImageError(
            f"all {len(batch)} images of a batch were unreadable and skipped (bad_images='skip'); "
            "see the logged warnings for the files"
        )
    return default_collate(kept)


#: Slots of the shared skip counter: slot 0 is the main process, worker w uses slot 1 + w % (slots - 1).
_SKIP_SLOTS = 256


class ImageFileDataset(Dataset):
    """Images read from files, with integer targets and an explicit policy for unreadable files.

    ``dataset[i]`` is ``(PIL RGB image, int target)``. With ``bad_images="raise"`` an undecodable file
    raises `CorruptImageError` naming it (in a DataLoader worker it is re-raised in the main process
    with the same type and message). With ``"skip"`` it logs a warning naming the file, counts the skip
    in a shared-memory counter (visible across DataLoader workers, `num_skipped`) and returns ``None``,
    which `TransformedSubset` passes through and `skip_none_collate` drops. A skipped file is counted
    each time it is read (once per epoch). Missing files always raise ``FileNotFoundError``.

    Subclasses may override `load_image` (e.g. to crop a bounding box).

    Args:
        paths: one image file per sample.
        targets: one integer class per sample.
        bad_images: ``"raise"`` or ``"skip"``.

    Raises:
        ValueError: ``paths`` and ``targets`` differ in length, or an unknown ``bad_images``.
    """

    def __init__(
        self, paths: Sequence[str | Path], targets: Sequence[int], bad_images: BadImagePolicy = "raise"
    ) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"targets: expected one per path ({len(paths)}), got {len(targets)}")
        self.paths = [str(p) for p in paths]
        self.targets = [int(t) for t in targets]
        self.bad_images = check_bad_images(bad_images)
        self._skipped = torch.zeros(_SKIP_SLOTS, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.paths)

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of sample ``index`` (see `load_rgb_image` for the errors)."""
        return load_rgb_image(self.paths[index])

    def __getitem__(self, index: int) -> tuple[Image.Image, int] | None:
        try:
            image = self.load_image(index)
        except CorruptImageError as err:
            if self.bad_images == "raise":
                raise
            worker = get_worker_info()
            self._skipped[0 if worker is None else 1 + worker.id % (_SKIP_SLOTS - 1)] += 1
            cause = err.__cause__ if err.__cause__ is not None else err
            log.warning("skipped unreadable image %s (%s: %s; bad_images='skip')",
                        self.paths[index], type(cause).__name__, cause)
            return None
        return image, self.targets[index]

    @property
    def num_skipped(self) -> int:
        """Reads skipped so far under ``bad_images="skip"``, summed over all processes."""
        return int(self._skipped.sum())


def is_image_file(path: str) -> bool:
    """True for a file name or path with an image extension (`IMG_EXTENSIONS`) that is not hidden (``._x.jpg``)."""
    name = os.path.basename(path)
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def list_image_files(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (sub-folders included; `is_image_file`), sorted by path.

    Raises:
        FileNotFoundError: ``folder`` is not a folder.
        ValueError: it holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"predict_dir: expected a folder of images, got {folder} (no such folder)")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p.name))
    if not paths:
        raise ValueError(f"predict_dir: expected image files ({', '.join(IMG_EXTENSIONS)}) in {folder}, got none")
    return paths


class UnlabelledImageDataset(ImageFileDataset):
    """Image files without classes: ``dataset[i]`` is ``(image, -1)``, a PIL image in mode `mode`.

    Args:
        paths: one image file per sample.
        mode: PIL mode the images are converted to: ``"RGB"``, or ``"L"`` for one-channel models.
        bad_images: ``"raise"`` or ``"skip"`` undecodable files (see `ImageFileDataset`).

    Raises:
        ValueError: a mode other than ``"RGB"`` and ``"L"``, or an unknown ``bad_images``.
    """

    def __init__(self, paths: Sequence[str | Path], mode: str = "RGB", bad_images: BadImagePolicy = "raise") -> None:
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode: expected 'RGB' or 'L', got {mode!r}")
        super().__init__(paths, [-1] * len(paths), bad_images)
        self.mode = mode

    def load_image(self, index: int) -> Image.Image:
        """The image of sample ``index`` in `mode` (see `load_rgb_image` for the errors)."""
        return super().load_image(index).convert(self.mode)


class TensorImageDataset(Dataset):
    """Images held in memory as one uint8 (N, C, H, W) tensor, with integer targets.

    ``dataset[i]`` is ``(images[i], targets[i])``: a uint8 (C, H, W) tensor (a view, not a copy) and an int,
    which torchvision's v2 transforms take as they take a PIL image.

    Args:
        images: (N, C, H, W) uint8 tensor.
        targets: N integer classes.
        paths: the file each image was decoded from, if any (kept for reports and predictions).
        num_skipped: unreadable files left out when the tensor was built (``bad_images="skip"``).

    Raises:
        ValueError: ``images`` is not a 4-D uint8 tensor, or ``targets`` has another length.
    """

    def __init__(
        self, images: Tensor, targets: Sequence[int], paths: Sequence[str] | None = None, num_skipped: int = 0
    ) -> None:
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images: expected a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if len(targets) != images.shape[0]:
            raise ValueError(f"targets: expected one per image ({images.shape[0]}), got {len(targets)}")
        self.images = images
        self.targets = [int(t) for t in targets]
        self._target_tensor = torch.tensor(self.targets, dtype=torch.long)
        self.paths = None if paths is None else [str(p) for p in paths]
        self.num_skipped = num_skipped

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], self.targets[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        """A whole batch as one slice: uint8 (B, C, H, W) images and int64 (B,) targets (see `collate_batched`)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self._target_tensor[index]


@contextmanager
def explain_download_failure(name: str, url: str, data_dir: Path) -> Iterator[None]:
    """Turn a failed download (any ``OSError``: no network, HTTP error) into a clear ``FileNotFoundError``.

    Args:
        name: dataset name for the message.
        url: what to fetch by hand.
        data_dir: where to put it.

    Raises:
        FileNotFoundError: the download inside the ``with`` block failed; the message says what to do.
    """
    try:
        yield
    except OSError as err:
        raise FileNotFoundError(
            f"{name}: the download failed ({type(err).__name__}: {err}); fetch {url} by hand and put it in {data_dir}"
        ) from err
