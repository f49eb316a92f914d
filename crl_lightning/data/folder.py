"""`ImageFolderDataModule`: any ``root/{train,[val],test}/<class>/<image>`` tree (torchvision's ImageFolder layout)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import v2

from crl_lightning.data import transforms as T
from crl_lightning.data.base import ImageDataModule
from crl_lightning.data.datasets import (
    CorruptImageError,
    ImageFileDataset,
    TensorImageDataset,
    TransformedSubset,
    is_image_file,
)
from crl_lightning.data.splits import class_balanced_subset

__all__ = ["ImageFolderDataModule", "Preset", "channel_stats", "decode_to_tensor", "list_image_folder"]

log = logging.getLogger(__name__)

#: Fewer validation images of a class than this (from ``val_split``) get a warning.
MIN_VAL_PER_CLASS = 10

#: Transform presets of `ImageFolderDataModule`.
Preset = Literal["cifar", "imagenet"]


def list_image_folder(
    folder: str | Path, class_to_idx: dict[str, int] | None = None, name: str = "ImageFolder", howto: str = ""
) -> tuple[list[str], list[int], list[str]]:
    """Image paths, class indices and class names of a ``<folder>/<class>/<image>`` tree.

    Classes are the sorted sub-folder names (torchvision's `find_classes`), files are listed by torchvision's
    `make_dataset` (extensions `torchvision.datasets.folder.IMG_EXTENSIONS`, hidden files skipped; sorted by
    class, then path; sub-folders followed).

    Args:
        folder: the split folder, e.g. ``root/train``.
        class_to_idx: the class index of every known class folder (those of the train split); the folder's
            classes must be among them (a subset is fine). ``None``: the folder's own sorted classes.
        name: the dataset's name, for messages.
        howto: appended to the message when the folder is missing (how to get the data).

    Returns:
        ``(paths, targets, classes)``: ``classes`` are the folder's class names, sorted.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: no class folder, a class folder that is not a known class, or one without images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{name}: expected the folder {folder} (<class>/<image> inside), found none"
                                + (f". {howto}" if howto else ""))
    try:
        classes, own_index = find_classes(str(folder))
    except FileNotFoundError as err:
        raise ValueError(f"{name}: {folder}: expected class sub-folders, got none") from err
    if class_to_idx is None:
        class_to_idx = own_index
    unknown = [c for c in classes if c not in class_to_idx]
    if unknown:
        raise ValueError(f"{name}: {folder}: expected class folders among the {len(class_to_idx)} training "
                         f"classes, got {len(unknown)} unknown ones, e.g. {unknown[:5]}")
    samples = make_dataset(str(folder), {c: class_to_idx[c] for c in classes}, is_valid_file=is_image_file,
                           allow_empty=True)
    empty = sorted(set(classes) - {Path(p).relative_to(folder).parts[0] for p, _ in samples})
    if empty:
        raise ValueError(f"{name}: {folder / empty[0]}: expected image files ({', '.join(IMG_EXTENSIONS)}), "
                         f"got none ({len(empty)} such class folders)")
    return [p for p, _ in samples], [t for _, t in samples], classes


#: Decoded splits of this process, so that the runs of one ``crl study`` decode each split once.
_DECODED: dict[tuple, tuple[torch.Tensor, list[int], int]] = {}
_DECODED_MAX = 4


def _decode_all(dataset: ImageFileDataset) -> tuple[torch.Tensor, list[int], int]:
    """(uint8 (M, 3, H, W) images, positions of the M readable files, number skipped) of every file; cached."""
    key = (type(dataset).__qualname__, tuple(dataset.paths), dataset.bad_images)
    if key in _DECODED:
        return _DECODED[key]
    images: list[np.ndarray] = []
    kept: list[int] = []
    for i in range(len(dataset)):
        try:
            image = np.asarray(dataset.load_image(i))
        except CorruptImageError as err:
            if dataset.bad_images == "raise":
                raise
            log.warning("skipped unreadable image %s (%s; bad_images='skip')", dataset.paths[i], err.__cause__)
            continue
        if images and image.shape != images[0].shape:
            first = dataset.paths[kept[0]]
            raise ValueError(
                f"in_memory: expected every image to have one size, got {images[0].shape[1]}x{images[0].shape[0]} "
                f"({first}) and {image.shape[1]}x{image.shape[0]} ({dataset.paths[i]}); set in_memory: false"
            )
        images.append(image)
        kept.append(i)
    if not images:
        raise ValueError(f"in_memory: expected at least one readable image, got none of {len(dataset)}")
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    while len(_DECODED) >= _DECODED_MAX:
        _DECODED.pop(next(iter(_DECODED)))
    _DECODED[key] = (tensor, kept, len(dataset) - len(kept))
    return _DECODED[key]


def decode_to_tensor(dataset: ImageFileDataset, indices: Sequence[int] | None = None) -> TensorImageDataset:
    """The images of ``dataset`` (at ``indices``) as one uint8 (N, 3, H, W) tensor, decoded once per process.

    Every file of ``dataset`` is decoded (with its ``load_image``, so to RGB) the first time, and kept for
    later calls with the same files (the last few splits), so the runs of a study decode once. Unreadable
    files follow the dataset's ``bad_images`` policy: ``"raise"`` raises `CorruptImageError` naming the
    file; ``"skip"`` leaves the sample out, logs it and counts it in ``num_skipped``.

    Args:
        dataset: image files with targets.
        indices: positions to keep (all when ``None``).

    Returns:
        The images and targets of the kept samples, in order, with the ``paths`` of their files.

    Raises:
        ValueError: the images differ in size (an in-memory tensor needs one size); the message names two files.
        CorruptImageError: an unreadable file under ``bad_images="raise"``.
    """
    images, kept, skipped = _decode_all(dataset)
    row_of = {position: row for row, position in enumerate(kept)}
    wanted = range(len(dataset)) if indices is None else indices
    positions = [i for i in wanted if i in row_of]
    rows = torch.tensor([row_of[i] for i in positions], dtype=torch.long)
    return TensorImageDataset(images[rows], [dataset.targets[i] for i in positions],
                              [dataset.paths[i] for i in positions], len(wanted) - len(positions))


def channel_stats(dataset: Dataset) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of the pixels of ``dataset``, scaled to [0, 1].

    Args:
        dataset: ``(image, target)`` samples; an image is a PIL image or a uint8 (C, H, W) tensor
            (`TensorImageDataset` is read as one tensor).

    Returns:
        ``(mean, std)``, one float per channel, fractions of the full 0-255 range.

    Raises:
        ValueError: no readable image in ``dataset``.
    """
    batches: Iterable[torch.Tensor]
    if isinstance(dataset, TensorImageDataset):
        batches = [dataset.images]
    else:
        samples = (dataset[i] for i in range(len(cast(Sized, dataset))))
        batches = (v2.functional.to_image(s[0])[None] for s in samples if s is not None)
    total = total_sq = torch.zeros(())
    count = 0
    for batch in batches:
        x = batch.to(torch.float64).div_(255.0)
        s, sq = x.sum(dim=(0, 2, 3)), x.square().sum(dim=(0, 2, 3))
        total, total_sq = (s, sq) if count == 0 else (total + s, total_sq + sq)
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        raise ValueError("dataset: expected at least one readable image, got none")
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


class ImageFolderDataModule(ImageDataModule):
    """Any image-classification tree ``data_dir/{train,[val],test}/<class>/<image>`` (torchvision ImageFolder).

    The class index is the position of the folder name in the sorted class folders of ``train/``
    (torchvision's `find_classes`); the class folders of ``val/`` and ``test/`` must be among them. Without a
    ``val/`` folder, ``val_split`` of the training images are held out for validation (stratified by class,
    seeded by ``seed``; a class left with fewer than 10 validation images gets a warning), or, with
    ``val_split: 0``, validation runs on ``test/``: a log line says so, and a ``ModelCheckpoint`` with a
    ``monitor`` is refused (it would choose the epoch on the test images). Archives are not read:
    extract them first (``tar xzf cifar10_jpeg.tar.gz -C DATA``).

    Transform presets:
        * ``cifar``: training images get a random crop of ``image_size`` with 4 pixels of zero padding and
          a horizontal flip (paper Sec. IV-A-2); evaluation images are only normalised. ``image_size``
          defaults to the images' native size, that of the first training image: images of another
          size (train, val, test or predict) are resized to it first (``in_memory`` refuses them).
        * ``imagenet``: RandomResizedCrop ``image_size`` + flip for training, a short-side resize to
          ``round(image_size * 8 / 7)`` and a centre crop for evaluation; ``image_size`` defaults to 224.

    Normalisation uses ``mean``/``std`` when given, else the per-channel statistics of the training
    images actually used (after ``val_split`` and ``train_per_class``), computed once at setup and logged.

    Args:
        data_dir: the root holding ``train/`` and ``test/`` (and optionally ``val/``).
        preset: ``"cifar"`` or ``"imagenet"`` (see above).
        image_size: side of the square network input, pixels (default: see the presets).
        mean: per-channel mean of the [0, 1]-scaled pixels (3 values), or ``None`` to compute it.
        std: per-channel std (3 values), or ``None`` to compute it; give both or neither.
        train_per_class: keep this many training images of every class (a seeded, class-balanced
            subset drawn after the validation split); ``None`` keeps all.
        in_memory: decode the images once into a uint8 (N, 3, H, W) tensor (all images must share one
            size; 60,000 32x32 images take 184 MB) instead of reading files every epoch.
        **kwargs: the options of `ImageDataModule`: loader options (``seed``: of the validation split and of
            the ``train_per_class`` subset; ``val_split``: of ``train/`` when there is no ``val/`` folder),
            ``bad_images`` (skips are counted and logged), ``augment`` (``on_device`` needs ``in_memory``
            and the ``cifar`` preset at native size: uint8 batches are then cropped, flipped and normalised
            as whole batches on the device they are moved to, with the distribution of the per-image pipeline).

    Raises:
        FileNotFoundError: ``data_dir/train`` is missing (at construction: the class count is needed to build
            the model), or ``test/`` is missing (at setup).
        ValueError: bad options, no class folder, a class folder of ``val/``/``test/`` that ``train/`` does
            not have, an empty class folder, a class with fewer than
            ``train_per_class`` training images, images of several sizes with ``in_memory``, or (at setup) a
            monitored ``ModelCheckpoint`` while validation is the test split.
    """

    def __init__(
        self,
        data_dir: str | Path = "data",
        preset: Preset = "cifar",
        image_size: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        train_per_class: int | None = None,
        in_memory: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir, **kwargs)
        if self.augment.on_device and not (in_memory and preset == "cifar" and image_size is None):
            raise ValueError(
                "augment.on_device: expected in_memory: true, preset: cifar and no image_size (native size), got "
                f"in_memory={in_memory}, preset={preset!r}, image_size={image_size}"
            )
        if preset not in ("cifar", "imagenet"):
            raise ValueError(f"preset: expected 'cifar' or 'imagenet', got {preset!r}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size: expected >= 1 pixels, got {image_size}")
        if (mean is None) != (std is None):
            raise ValueError(f"mean/std: expected both or neither, got mean={mean}, std={std}")
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) != 3:
                raise ValueError(f"{name}: expected 3 per-channel values (RGB), got {values}")
        if std is not None and min(std) <= 0:
            raise ValueError(f"std: expected positive values, got {std}")
        if train_per_class is not None and train_per_class < 1:
            raise ValueError(f"train_per_class: expected >= 1 (or null for all), got {train_per_class}")
        self.preset, self.image_size, self.train_per_class = preset, image_size, train_per_class
        self._native_size: tuple[int, int] | None = None
        self.in_memory = in_memory
        self.stats: T.Stats | None = None if mean is None or std is None else (tuple(mean), tuple(std))
        _, _, self.classes = list_image_folder(self.data_dir / "train")
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.num_classes = len(self.classes)
        self.has_val_split = (self.data_dir / "val").is_dir()

    # ----- checkpoint state -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The base's normalisation and ``"input_size"``: the (H, W) of the first training image, when known."""
        state = super().state_dict()
        if self._native_size is not None:
            state["input_size"] = list(self._native_size)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the normalisation and input size of a checkpoint's `state_dict` (the images are not read).

        Raises:
            ValueError: ``"input_size"`` is not two positive integers, or the base's checks fail.
        """
        size = state_dict.get("input_size") if isinstance(state_dict, Mapping) else None  # else the base refuses it
        if size is not None:
            if not (isinstance(size, list | tuple) and len(size) == 2 and all(isinstance(v, int) and v > 0
                                                                            for v in size)):
                raise ValueError(f"{type(self).__name__} checkpoint state 'input_size': expected [H, W] in pixels, "
                                 f"got {size!r}")
            self._native_size = (size[0], size[1])
        super().load_state_dict(state_dict)

    # ----- data ---------------------------------------------------------------------------------
    def build_dataset(self, split: str) -> ImageFileDataset:
        """The image files of ``split`` (``"train"``, ``"test"``, or ``"val"`` when ``val/`` exists)."""
        if split not in ("train", "test", "val"):
            raise ValueError(f"split: expected 'train', 'val' or 'test', got {split!r}")
        paths, targets, _ = list_image_folder(self.data_dir / split, self.class_to_idx)
        return ImageFileDataset(paths, targets, self.bad_images)

    def wrap_dataset(self, split: str, dataset: Dataset, indices: Sequence[int] | None = None) -> TransformedSubset:
        """The ``split`` samples at ``indices`` of ``dataset``, subset, held and normalised as the options say.

        For ``train`` with ``train_per_class``: a seeded class-balanced subset of them. With ``in_memory``:
        decoded into one uint8 tensor. Normalised with `stats`, which the training split gives when
        ``mean``/``std`` are not set (the other splits then set the training split up first).

        Raises:
            TypeError: ``dataset`` is not an `ImageFileDataset` (what `build_dataset` returns).
        """
        if not isinstance(dataset, ImageFileDataset):
            raise TypeError(f"dataset: expected an ImageFileDataset, got {type(dataset).__name__}")
        if split == "train" and self.train_per_class is not None:
            indices = class_balanced_subset(dataset.targets, self.train_per_class, self.seed,
                                            range(len(dataset)) if indices is None else indices)
        if split == "val":
            self._check_val(dataset, indices)
        view = self._view(split, dataset, indices)
        if split == "train":
            if self._native_size is None and view.indices:
                self._native_size = self._size_of(view[0])
            if self.stats is None:
                mean, std = channel_stats(view)
                self.stats = (tuple(mean), tuple(std))
                log.info("%s: normalisation from the %d training images: mean %s, std %s", type(self).__name__,
                         len(view), [round(m, 4) for m in mean], [round(s, 4) for s in std])
        elif self.stats is None:
            self.setup("fit")  # the normalisation comes from the training images
        view.transform = self.transform(split)
        return view

    def _check_val(self, dataset: ImageFileDataset, indices: Sequence[int] | None) -> None:
        """Log that validation is the test split, refuse a monitored checkpoint on it; warn on small classes.

        The line is left out when testing or predicting (no validation runs), the refusal applies when fitting.

        Raises:
            ValueError: validation is the test split and the fitting trainer has a ``ModelCheckpoint`` with a
                ``monitor`` (it would pick the epoch on the test images).
        """
        if not self.has_val_split and self.val_split == 0:
            trainer = self.trainer
            stage = None if trainer is None else trainer.state.fn
            if stage in (None, TrainerFn.FITTING, TrainerFn.VALIDATING):  # not for test/predict: no validation runs
                log.info("%s: no %s folder and val_split 0: validation runs on the test split (%d images)",
                         type(self).__name__, self.data_dir / "val", len(dataset))
            callbacks = trainer.callbacks if trainer is not None and stage == TrainerFn.FITTING else []
            monitored = [cb.monitor for cb in callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor]
            if monitored:
                raise ValueError(
                    f"trainer.callbacks ModelCheckpoint.monitor: expected none while validation is the test split "
                    f"(no val/ folder, val_split 0), got monitor={monitored[0]!r}; set data.init_args.val_split "
                    "(e.g. 0.1) or add a val/ folder, or drop the monitor")
            return
        if indices is None:
            return
        counts = Counter(dataset.targets[i] for i in indices)
        small = [(self.classes[c], n) for c, n in sorted(counts.items()) if n < MIN_VAL_PER_CLASS]
        if small:
            rank_zero_warn(
                f"val_split: {self.val_split} leaves fewer than {MIN_VAL_PER_CLASS} validation images in "
                f"{len(small)} classes, e.g. {self.data_dir / 'train' / small[0][0]} ({small[0][1]}): its validation "
                "error is noisy; raise val_split or add a val/ folder")

    def _view(self, split: str, dataset: ImageFileDataset, indices: Sequence[int] | None) -> TransformedSubset:
        """The ``split`` samples at ``indices`` of ``dataset``, decoded into memory when ``in_memory``."""
        if self.in_memory:
            decoded = decode_to_tensor(dataset, indices)
            log.info("%s: decoded %d %s images into memory (%s uint8, %.1f MB)", type(self).__name__,
                     len(decoded), split, tuple(decoded.images.shape), decoded.images.numel() / 1e6)
            return TransformedSubset(decoded)
        return TransformedSubset(dataset, indices)

    def batch_augment(self) -> tuple[int, bool] | None:
        return (4, True) if self.preset == "cifar" else None

    # ----- transforms ---------------------------------------------------------------------------
    def input_size(self) -> tuple[int, int] | None:
        """The ``cifar`` preset's input (see `_input_size`); ``None`` for ``imagenet``, whose eval resizes any size."""
        return self._input_size() if self.preset == "cifar" else None

    def _input_size(self) -> tuple[int, int]:
        """(H, W) every image is resized to: ``image_size`` square, else the first training image's size."""
        if self.image_size is not None:
            return self.image_size, self.image_size
        if self._native_size is None:
            self._native_size = self._size_of(self.build_dataset("train")[0])
        return self._native_size

    @staticmethod
    def _size_of(sample: tuple[Any, Any] | None) -> tuple[int, int]:
        """(H, W) of the image (PIL, or a (C, H, W) tensor) of an ``(image, target)`` sample.

        Raises:
            ValueError: ``sample`` is ``None``: the image was unreadable and skipped (``bad_images="skip"``).
        """
        if sample is None:
            raise ValueError("image_size: expected the first training image to give the native size, got an "
                             "unreadable one (skipped, bad_images='skip'); set image_size")
        height, width = v2.functional.to_image(sample[0]).shape[-2:]
        return int(height), int(width)

    def train_transform(self) -> Callable:
        if self.preset == "imagenet":
            return T.imagenet_train(self.image_size or 224, self.normalization())
        size = self._input_size()
        # the Resize is a no-op at that size
        return v2.Compose([v2.Resize(size), *T.cifar_train(self.normalization(), size).transforms])

    def eval_transform(self) -> Callable:
        if self.preset == "imagenet":
            return T.imagenet_eval(self.image_size or 224, stats=self.normalization())
        return v2.Compose([v2.Resize(self._input_size()), T.to_normalized_tensor(self.normalization())])
