"""`ImageDataModule`: the shared base of every DataModule (loaders, splits, transforms per split)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate, get_worker_info
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import v2

from crl_lightning.data import transforms as T
from crl_lightning.data.batch_transforms import normalize, random_crop_flip

__all__ = [
    "BadImagePolicy",
    "CorruptImageError",
    "ImageDataModule",
    "ImageFileDataModule",
    "ImageFileDataset",
    "TensorImageDataset",
    "TransformedSubset",
    "UnlabelledImageDataset",
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

SPLITS = ("train", "val", "test")


class TransformedSubset(Dataset):
    """A view of ``dataset`` restricted to ``indices`` with ``transform`` applied to the image.

    Args:
        dataset: returns ``(image, target)`` pairs, untransformed.
        indices: positions to keep (all when ``None``).
        transform: callable applied to the image, or ``None``.
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int] | None = None, transform: Callable | None = None):
        self.dataset, self.transform = dataset, transform
        self.indices = list(range(len(dataset))) if indices is None else list(indices)

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
            return self.dataset.__getitems__([self.indices[i] for i in positions])
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
        if bad_images not in ("raise", "skip"):
            raise ValueError(f"bad_images: expected 'raise' or 'skip', got {bad_images!r}")
        self.paths = [str(p) for p in paths]
        self.targets = [int(t) for t in targets]
        self.bad_images = bad_images
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


class ImageDataModule(L.LightningDataModule):
    """Base DataModule: typed loader options, a seeded stratified val split and per-split transforms.

    Subclasses implement `build_dataset` (untransformed ``(image, target)`` samples of a split) and,
    usually, `train_transform` / `eval_transform`; they set `num_classes` and `in_chans`, which the CLI
    links into the model. Datasets without a validation split get one drawn from the training split
    (``val_split`` fraction, stratified by class, seeded); with ``val_split=0`` validation runs on the
    test split, as the paper does (it reports test error curves).

    ``predict`` runs on the test split, or with ``predict_dir`` on every image file under that folder
    (`list_image_files`: unlabelled, any folder layout), read in the mode of the model's input (RGB, or grey
    when `in_chans` is 1) and given the evaluation transform of the DataModule (`eval_transform`, with the
    normalisation of its training data, which must then be readable as for a test).

    Args:
        data_dir: root folder of the dataset files.
        batch_size: samples per batch, per process.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory for faster host-to-GPU copies.
        persistent_workers: keep workers alive between epochs (needs ``num_workers > 0``).
        seed: seed of the train/val split.
        val_split: fraction in ``[0, 1)`` of the training split held out for validation.
        augment_on_device: for in-memory uint8 data (`TensorImageDataset`): no per-image transform; the
            loaders yield uint8 batches, and `on_after_batch_transfer` augments whole training batches
            on the device they were moved to (`batch_augment`, e.g. the CIFAR crop + flip) and normalises
            every batch with ``stats`` (`crl_lightning.data.batch_transforms`).
        trivial_augment: add torchvision's ``v2.TrivialAugmentWide`` to the per-image training transform
            (on the decoded image, before the dataset's own crop/flip and normalisation).
        rand_augment: add ``v2.RandAugment()`` (2 ops, magnitude 9) there instead.
        random_erasing: probability of ``v2.RandomErasing`` on the normalised training image (0: off).
        mixup_alpha: MixUp (``v2.MixUp``) of whole training batches with Beta(alpha, alpha) weights; 0: off.
        cutmix_alpha: CutMix (``v2.CutMix``) likewise; with both, each batch gets one of the two, at random.
            MixUp/CutMix turn the (N,) targets into (N, C) soft targets, which CE and CRL's soft-target form
            take; the training top-1 error is then not logged (there is no single correct class).
        predict_dir: a folder of images for ``predict`` (see above); ``None`` predicts the test split.

    Raises:
        ValueError: ``batch_size < 1``, ``num_workers < 0``, ``val_split`` outside ``[0, 1)``, both
            ``trivial_augment`` and ``rand_augment``, ``random_erasing`` outside [0, 1], a negative
            MixUp/CutMix alpha, or a per-image augmentation with ``augment_on_device``.
    """

    num_classes: int = 0
    in_chans: int = 3
    #: True when the dataset ships its own validation split (then ``val_split`` is unused).
    has_val_split: bool = False
    #: Per-channel (mean, std) of the [0, 1] pixels, used by the on-device normalisation.
    stats: T.Stats | None = None

    def __init__(
        self,
        data_dir: str | Path = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        val_split: float = 0.0,
        augment_on_device: bool = False,
        trivial_augment: bool = False,
        rand_augment: bool = False,
        random_erasing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        predict_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        if trivial_augment and rand_augment:
            raise ValueError("trivial_augment/rand_augment: expected at most one of them, got both")
        if not 0.0 <= random_erasing <= 1.0:
            raise ValueError(f"random_erasing: expected a probability in [0, 1], got {random_erasing}")
        if mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError(f"mixup_alpha/cutmix_alpha: expected >= 0 (0: off), got {mixup_alpha}, {cutmix_alpha}")
        if augment_on_device and (trivial_augment or rand_augment or random_erasing > 0):
            raise ValueError("augment_on_device: expected no per-image augmentation (trivial_augment, rand_augment, "
                             "random_erasing), which runs on single images: set augment_on_device false")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers: expected >= 0, got {num_workers}")
        if not 0.0 <= val_split < 1.0:
            raise ValueError(f"val_split: expected a fraction in [0, 1), got {val_split}")
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed, self.val_split = seed, val_split
        self.augment_on_device = augment_on_device
        self.trivial_augment, self.rand_augment, self.random_erasing = trivial_augment, rand_augment, random_erasing
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.predict_dir = None if predict_dir is None else Path(predict_dir).expanduser()
        self.datasets: dict[str, Dataset] = {}

    # ----- extension points -------------------------------------------------------------------
    def build_dataset(self, split: str) -> Dataset:
        """Untransformed ``(image, target)`` samples of ``split``.

        ``split`` is ``"train"``, ``"test"``, or ``"val"`` when `has_val_split`. Raise ``FileNotFoundError``
        naming the missing files.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement build_dataset(split)")

    def train_transform(self) -> Callable | None:
        """Transform of training images (augmentation); identity by default."""
        return None

    def eval_transform(self) -> Callable | None:
        """Transform of validation/test/predict images; identity by default."""
        return None

    def transform(self, split: str) -> Callable | None:
        """The per-image transform of ``split``: `train_transform` for train, `eval_transform` otherwise.

        ``None`` with ``augment_on_device`` (the batches are augmented and normalised on the device).
        """
        if self.augment_on_device:
            return None
        if split != "train":
            return self.eval_transform()
        policy = v2.TrivialAugmentWide() if self.trivial_augment else v2.RandAugment() if self.rand_augment else None
        erasing = v2.RandomErasing(self.random_erasing) if self.random_erasing > 0 else None
        if policy is None and erasing is None:
            return self.train_transform()
        steps = [v2.ToImage(), policy, self.train_transform(), erasing]
        return v2.Compose([t for t in steps if t is not None])

    def batch_mix(self) -> Callable | None:
        """The batch-level MixUp/CutMix (torchvision v2) of training batches, or ``None`` when both are off."""
        mixes = [cls(alpha=alpha, num_classes=self.num_classes)
                 for cls, alpha in ((v2.MixUp, self.mixup_alpha), (v2.CutMix, self.cutmix_alpha)) if alpha > 0]
        return None if not mixes else mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)

    def batch_augment(self) -> tuple[int, bool] | None:
        """``(padding, flip)`` of the on-device training augmentation (`batch_transforms.random_crop_flip`).

        ``None`` (the default): training batches are only normalised, as the datasets without augmentation.
        """
        return None

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Batch-level work on the device the batch was moved to.

        With ``augment_on_device``, training batches are cropped and flipped (`batch_augment`) and every batch
        is normalised; then training batches get MixUp/CutMix (`batch_mix`), which makes the targets soft.
        """
        training = self.trainer is not None and self.trainer.training
        mix = self.batch_mix() if training else None
        if not self.augment_on_device and mix is None:
            return batch
        images, target, rest = batch[0], batch[1], list(batch[2:])
        if self.augment_on_device:
            if self.stats is None:
                raise RuntimeError(f"{type(self).__name__}: augment_on_device needs the normalisation stats; "
                                   "call setup() first")
            augment = self.batch_augment()
            if augment is not None and training:
                images = random_crop_flip(images, *augment)
            images = normalize(images, *self.stats)
        if mix is not None:
            images, target = mix(images, target)
        return [images, target, *rest]

    def collate_fn(self) -> Callable | None:
        """``collate_fn`` of every DataLoader; ``None`` (torch's default) unless overridden.

        Modules with ``bad_images="skip"`` return `skip_none_collate`.
        """
        return None

    def num_skipped_images(self) -> int:
        """Unreadable images skipped so far (``bad_images="skip"``), over the distinct datasets in use."""
        seen: dict[int, Dataset] = {}
        for dataset in self.datasets.values():
            inner = getattr(dataset, "dataset", dataset)
            seen[id(inner)] = inner
        return sum(getattr(d, "num_skipped", 0) for d in seen.values())

    # ----- Lightning contract -----------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", "validate", None) and "train" not in self.datasets:
            self._setup_fit()
        if stage in ("test", "predict", None) and "test" not in self.datasets:
            self.datasets["test"] = TransformedSubset(self.build_dataset("test"), transform=self.transform("test"))
        if stage == "predict":
            self._setup_predict()

    def _setup_predict(self) -> None:
        """``datasets["predict"]``: the images under `predict_dir` (nothing without it); after the test split."""
        if self.predict_dir is None or "predict" in self.datasets:
            return
        images = UnlabelledImageDataset(list_image_files(self.predict_dir), "L" if self.in_chans == 1 else "RGB")
        # uint8 tensors when the batches are normalised on the device (augment_on_device: no per-image transform)
        self.datasets["predict"] = TransformedSubset(images, transform=self.transform("predict") or v2.PILToTensor())
        log.info("%s: predicting %d images under %s", type(self).__name__, len(images), self.predict_dir)

    def teardown(self, stage: str | None = None) -> None:
        skipped = self.num_skipped_images()
        if skipped:
            log.warning("%s: skipped %d unreadable image reads so far (bad_images='skip')",
                        type(self).__name__, skipped)

    def _setup_fit(self) -> None:
        train = self.build_dataset("train")
        if self.has_val_split:
            train_idx, val = None, TransformedSubset(self.build_dataset("val"), transform=self.transform("val"))
        elif self.val_split > 0:
            train_idx, val_idx = self.split_indices(train)
            val = TransformedSubset(train, val_idx, self.transform("val"))
        else:
            train_idx = None
            val = TransformedSubset(self.build_dataset("test"), transform=self.transform("val"))
        self.datasets["train"] = TransformedSubset(train, train_idx, self.transform("train"))
        self.datasets["val"] = val

    @property
    def validation_held_out(self) -> bool:
        """True when validation runs on images held out from the test split (a val split, or ``val_split > 0``).

        False when ``val_split=0`` and the dataset has no validation split of its own: then validation runs on
        the test split, and nothing may be fitted on it (`ImageClassifier` then fits no temperature).
        """
        return bool(self.has_val_split) or self.val_split > 0

    def split_indices(self, dataset: Dataset) -> tuple[list[int], list[int]]:
        """Seeded train/val indices of ``dataset``, stratified by class when the targets are known."""
        targets = dataset_targets(dataset)
        idx = np.arange(len(dataset))
        try:
            train_idx, val_idx = train_test_split(
                idx, test_size=self.val_split, random_state=self.seed,
                stratify=None if targets is None else np.asarray(targets),
            )
        except ValueError as err:  # e.g. fewer validation images than classes, or an empty training split
            n_classes = "" if targets is None else f" of {len(set(targets))} classes"
            raise ValueError(
                f"val_split: expected a fraction that leaves at least one image per class in both the training "
                f"and the validation split of the {len(idx)} training images{n_classes}, got {self.val_split} "
                f"(scikit-learn: {err})"
            ) from err
        return sorted(train_idx.tolist()), sorted(val_idx.tolist())

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for the {split} loader")
        dataset = self.datasets[split]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > self.batch_size,  # no BatchNorm crash on a last batch of 1
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=collate_batched if getattr(dataset, "batched", False) else self.collate_fn(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict" if "predict" in self.datasets else "test", train=False)


class ImageFileDataModule(ImageDataModule):
    """Base of the DataModules over image files (CUB, Adience, ImageNet): size options and bad-file policy.

    Training images get ImageNet-style augmentation (`transforms.imagenet_train`: RandomResizedCrop
    ``image_size`` + horizontal flip), evaluation images a short-side resize to ``resize_size`` and a
    single center crop ``image_size`` (`transforms.imagenet_eval`), as the paper's ImageNet protocol.

    Args:
        data_dir: root folder of the dataset files.
        image_size: side of the square network input, pixels.
        resize_size: eval short-side resize before the center crop (default ``round(image_size * 8 / 7)``,
            256 for 224).
        bad_images: ``"raise"`` (default) or ``"skip"`` undecodable image files (see `ImageFileDataset`).
        batch_size: samples per batch, per process.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory.
        persistent_workers: keep workers alive between epochs.
        seed: seed of the train/val split.
        val_split: fraction of the training split held out for validation.
        trivial_augment: TrivialAugmentWide per training image (see `ImageDataModule`).
        rand_augment: RandAugment per training image (see `ImageDataModule`).
        random_erasing: probability of RandomErasing per training image (see `ImageDataModule`).
        mixup_alpha: MixUp of training batches, 0: off (see `ImageDataModule`).
        cutmix_alpha: CutMix of training batches, 0: off (see `ImageDataModule`).
        predict_dir: a folder of images to predict instead of the test split (see `ImageDataModule`).

    Raises:
        ValueError: not ``1 <= image_size <= resize_size``, an unknown ``bad_images`` policy, or any
            `ImageDataModule` argument error.
    """

    def __init__(
        self,
        data_dir: str | Path = "data",
        image_size: int = 224,
        resize_size: int | None = None,
        bad_images: BadImagePolicy = "raise",
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        val_split: float = 0.0,
        trivial_augment: bool = False,
        rand_augment: bool = False,
        random_erasing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        predict_dir: str | Path | None = None,
    ) -> None:
        super().__init__(data_dir, batch_size, num_workers, pin_memory, persistent_workers, seed, val_split,
                         trivial_augment=trivial_augment, rand_augment=rand_augment,
                         random_erasing=random_erasing, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
                         predict_dir=predict_dir)
        resize_size = resize_size if resize_size is not None else round(image_size * 8 / 7)
        if not 1 <= image_size <= resize_size:
            raise ValueError(
                f"image_size/resize_size: expected 1 <= image_size <= resize_size, got {image_size}, {resize_size}"
            )
        if bad_images not in ("raise", "skip"):
            raise ValueError(f"bad_images: expected 'raise' or 'skip', got {bad_images!r}")
        self.image_size, self.resize_size, self.bad_images = image_size, resize_size, bad_images

    def collate_fn(self) -> Callable | None:
        return skip_none_collate if self.bad_images == "skip" else None

    def train_transform(self) -> Callable:
        return T.imagenet_train(self.image_size)

    def eval_transform(self) -> Callable:
        return T.imagenet_eval(self.image_size, self.resize_size)
