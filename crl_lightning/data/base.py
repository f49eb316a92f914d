"""The base DataModule, `ImageDataModule`: loaders, splits, per-split transforms, normalisation state."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from crl_lightning.data import transforms as T
from crl_lightning.data.augment import Augmentation
from crl_lightning.data.batch_transforms import normalize, random_crop_flip
from crl_lightning.data.datasets import (
    BadImagePolicy,
    TransformedSubset,
    UnlabelledImageDataset,
    check_bad_images,
    collate_batched,
    dataset_targets,
    inspect_images,
    list_image_files,
    skip_none_collate,
)

__all__ = ["ImageDataModule"]

log = logging.getLogger(__name__)


class ImageDataModule(L.LightningDataModule):
    """Base DataModule: the loader options, a seeded stratified val split, per-split transforms, augmentation.

    Subclasses implement `build_dataset` (untransformed ``(image, target)`` samples of a split) and,
    usually, `train_transform` / `eval_transform`; they set `num_classes` and `in_chans`, which the CLI
    links into the model. They declare only their own options and forward the rest with ``**kwargs`` to
    this constructor (re-declaring an option only to change its default, e.g. ``batch_size``); the CLI
    resolves the forwarded options, so ``--help`` and ``--print_config`` list all of them.

    Datasets without a validation split get one drawn from the training split (``val_split`` fraction,
    stratified by class, seeded); with ``val_split=0`` validation runs on the test split, as the paper does
    (it reports test error curves), and the val and test loaders share one dataset.

    ``predict`` runs on the test split, or with ``predict_dir`` on every image file under that folder
    (`list_image_files`: unlabelled, any folder layout), read in the mode of the model's input (RGB, or grey
    when `in_chans` is 1), resized to the training input (`input_size`) and given the evaluation transform of
    the DataModule (`eval_transform`, with the normalisation of its training data, which must then be
    readable as for a test); ``bad_images="skip"`` leaves the unreadable files out.

    Args:
        data_dir: root folder of the dataset files.
        batch_size: samples per batch, per process.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory for faster host-to-GPU copies.
        persistent_workers: keep workers alive between epochs (needs ``num_workers > 0``).
        seed: seed of the train/val split (and of any other seeded choice of the DataModule).
        val_split: fraction in ``[0, 1)`` of the training split held out for validation.
        predict_dir: a folder of images for ``predict`` (see above); ``None`` predicts the test split.
        bad_images: what to do with an image file that cannot be decoded: ``"raise"`` `CorruptImageError`
            naming it, or ``"skip"`` it (logged and counted; see `ImageFileDataset`).
        augment: the augmentation policy (`Augmentation`): per-image TrivialAugment/RandAugment/RandomErasing,
            batch MixUp/CutMix, and ``on_device`` crop + flip of whole in-memory batches.

    Raises:
        ValueError: ``batch_size < 1``, ``num_workers < 0``, ``val_split`` outside ``[0, 1)``, an unknown
            ``bad_images`` policy, or ``augment`` not an `Augmentation`.
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
        predict_dir: str | Path | None = None,
        bad_images: BadImagePolicy = "raise",
        augment: Augmentation = Augmentation(),  # noqa: B008 (frozen: one shared default is safe)
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers: expected >= 0, got {num_workers}")
        if not 0.0 <= val_split < 1.0:
            raise ValueError(f"val_split: expected a fraction in [0, 1), got {val_split}")
        if not isinstance(augment, Augmentation):
            raise ValueError(f"augment: expected an Augmentation, got {type(augment).__name__} {augment!r}")
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed, self.val_split = seed, val_split
        self.predict_dir = None if predict_dir is None else Path(predict_dir).expanduser()
        self.bad_images = check_bad_images(bad_images)
        self.augment = augment
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

        Training images also get the per-image policies of `augment` (`Augmentation.image_transform`).
        ``None`` with ``augment.on_device`` (the batches are augmented and normalised on the device).
        """
        if self.augment.on_device:
            return None
        if split != "train":
            return self.eval_transform()
        return self.augment.image_transform(self.train_transform())

    def wrap_dataset(self, split: str, dataset: Dataset, indices: Sequence[int] | None = None) -> Dataset:
        """What the loader of ``split`` reads: the samples of ``dataset`` at ``indices``, transformed.

        `setup` calls it once per split, the training split first, with the untransformed dataset from
        `build_dataset` (``indices`` selects the training or validation part of a drawn val split).
        The default is ``TransformedSubset(dataset, indices, self.transform(split))``; override it to
        select other samples or hold them otherwise (`ImageFolderDataModule` decodes them into memory).

        Args:
            split: ``"train"``, ``"val"`` or ``"test"``.
            dataset: untransformed ``(image, target)`` samples.
            indices: positions in ``dataset`` to keep; ``None`` keeps all.
        """
        return TransformedSubset(dataset, indices, self.transform(split))

    def batch_mix(self) -> Callable | None:
        """The batch-level MixUp/CutMix of training batches (`Augmentation.batch_mix`), or ``None`` when off."""
        return self.augment.batch_mix(self.num_classes)

    def normalization(self) -> T.Stats:
        """`stats`: the per-channel (mean, std) of the [0, 1] pixels that the images are normalised with.

        Raises:
            RuntimeError: they are not known yet (a DataModule that computes them from its training images
                does so in `setup`).
        """
        if self.stats is None:
            raise RuntimeError(f"{type(self).__name__}: the normalisation stats are not known yet; call setup() first")
        return self.stats

    def batch_augment(self) -> tuple[int, bool] | None:
        """``(padding, flip)`` of the on-device training augmentation (`batch_transforms.random_crop_flip`).

        ``None`` (the default): training batches are only normalised, as the datasets without augmentation.
        """
        return None

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Batch-level work on the device the batch was moved to.

        With ``augment.on_device``, training batches are cropped and flipped (`batch_augment`) and every batch
        is normalised; then training batches get MixUp/CutMix (`batch_mix`), which makes the targets soft.

        Raises:
            RuntimeError: ``augment.on_device`` before the normalisation statistics are known (see `normalization`).
        """
        training = self.trainer is not None and self.trainer.training
        mix = self.batch_mix() if training else None
        if not self.augment.on_device and mix is None:
            return batch
        images, target, rest = batch[0], batch[1], list(batch[2:])
        if self.augment.on_device:
            augment = self.batch_augment()
            if augment is not None and training:
                images = random_crop_flip(images, *augment)
            images = normalize(images, *self.normalization())
        if mix is not None:
            images, target = mix(images, target)
        return [images, target, *rest]

    def collate_fn(self) -> Callable | None:
        """``collate_fn`` of the DataLoaders of per-image samples (batched tensors use `collate_batched`).

        `skip_none_collate` with ``bad_images="skip"`` (it drops the skipped samples), else ``None``
        (torch's default).
        """
        return skip_none_collate if self.bad_images == "skip" else None

    def num_skipped_images(self) -> int:
        """Unreadable images skipped so far (``bad_images="skip"``), over the distinct datasets in use."""
        seen: dict[int, Dataset] = {}
        for dataset in self.datasets.values():
            inner = getattr(dataset, "dataset", dataset)
            seen[id(inner)] = inner
        return sum(getattr(d, "num_skipped", 0) for d in seen.values())

    # ----- Lightning contract -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this DataModule: the normalisation its network was trained with.

        ``{"stats": {"mean": [...], "std": [...]}}`` (per channel, of the [0, 1] pixels; empty before the stats
        are known). Lightning saves it in every checkpoint under the class name; `load_state_dict` takes it back,
        so ``crl test``/``crl predict`` of a checkpoint need not read the training images again to recompute
        the stats (`ImageFolderDataModule`, `DigitsDataModule`).
        """
        if self.stats is None:
            return {}
        mean, std = self.stats
        return {"stats": {"mean": [float(m) for m in mean], "std": [float(v) for v in std]}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the normalisation of a checkpoint's `state_dict` (a dict without ``"stats"`` changes nothing).

        Stats that differ from those already set (given as ``mean``/``std``, or computed from the training
        images as they are now) are replaced, with a warning naming both: the network expects the stats it was
        trained with. Splits set up before (Lightning restores a checkpoint after `setup`) get new transforms.

        Raises:
            ValueError: the state is not a dict, or its ``"stats"`` is not ``{"mean": [...], "std": [...]}`` of
                `in_chans` finite numbers each with positive std.
        """
        if not isinstance(state_dict, Mapping):
            raise ValueError(f"{type(self).__name__} checkpoint state: expected a dict, got "
                             f"{type(state_dict).__name__} {state_dict!r:.200}")
        stats = state_dict.get("stats")
        if stats is None:
            return
        mean = stats.get("mean") if isinstance(stats, Mapping) else None
        std = stats.get("std") if isinstance(stats, Mapping) else None

        def numbers(values: Any) -> bool:
            return isinstance(values, list | tuple) and len(values) == self.in_chans and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values)

        if not (numbers(mean) and numbers(std)) or min(cast(list, std)) <= 0:
            raise ValueError(f"{type(self).__name__} checkpoint state 'stats': expected {{'mean': [...], 'std': "
                             f"[...]}} of {self.in_chans} finite numbers each (one per input channel), std > 0, "
                             f"got {stats!r:.200}")
        restored = (tuple(float(m) for m in cast(list, mean)), tuple(float(v) for v in cast(list, std)))
        if self.stats is not None and not np.allclose(np.asarray(self.stats), np.asarray(restored), rtol=0,
                                                      atol=1e-6):
            log.warning("%s: the checkpoint's normalisation (mean %s, std %s) replaces mean %s, std %s: the "
                        "network was trained with it", type(self).__name__, *[[round(v, 4) for v in x] for x in
                                                                               (*restored, *self.stats)])
        self.stats = restored
        for split, dataset in self.datasets.items():
            if isinstance(dataset, TransformedSubset) and dataset.transform is not None:
                transform = self.transform(split)
                if transform is not None:
                    dataset.transform = transform

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", None) and "train" not in self.datasets:
            self._setup_fit()
        elif stage == "validate" and "val" not in self.datasets:
            self._setup_fit(train=False)  # validation only: the training images are not decoded or transformed
        if stage in ("test", "predict", None) and "test" not in self.datasets:
            self.datasets["test"] = self.wrap_dataset("test", self.build_dataset("test"))
        if stage == "predict":
            self._setup_predict()

    def _setup_fit(self, train: bool = True) -> None:
        """``datasets["val"]`` and, unless not ``train``, ``["train"]`` (``["test"]`` too when val is the test split).

        ``train=False`` (``validate``) reads the training split only where the validation split is drawn from it.
        """
        drawn = not self.has_val_split and self.val_split > 0
        samples = self.build_dataset("train") if train or drawn else None
        train_idx = val_idx = None
        if self.has_val_split:
            val = self.build_dataset("val")
        elif samples is not None and drawn:
            train_idx, val_idx = self.split_indices(samples)
            val = samples
        else:
            val = self.build_dataset("test")
        if train and samples is not None:
            self.datasets["train"] = self.wrap_dataset("train", samples, train_idx)
        self.datasets["val"] = self.wrap_dataset("val", val, val_idx)
        if not self.has_val_split and self.val_split == 0:
            self.datasets.setdefault("test", self.datasets["val"])

    def _setup_predict(self) -> None:
        """``datasets["predict"]``: the images under `predict_dir`; after the test split.

        Each file is decoded once here (`inspect_images`): unreadable ones raise or, with ``bad_images="skip"``,
        are left out; the others are read in the model's channels (`in_chans`) and resized to `input_size`,
        and one line counts what was resized, converted and skipped. No file is changed on disk. Without
        `predict_dir` the test split is predicted (`_readable_test_split`).
        """
        if "predict" in self.datasets:
            return
        if self.predict_dir is None:
            self._readable_test_split()
            return
        mode, size = "L" if self.in_chans == 1 else "RGB", self.input_size()
        found = list_image_files(self.predict_dir)
        paths, modes, sizes = inspect_images(found, self.bad_images)
        if not paths:
            raise ValueError(f"predict_dir: expected at least one readable image in {self.predict_dir}, got none "
                             f"of {len(found)}")
        images = UnlabelledImageDataset(paths, mode, self.bad_images, size)
        # uint8 tensors when the batches are normalised on the device (augment.on_device: no per-image transform)
        self.datasets["predict"] = TransformedSubset(images, transform=self.transform("predict") or v2.PILToTensor())
        resized = "sizes kept" if size is None else \
            f"{sum(s != size for s in sizes)} resized to {size[0]}x{size[1]}"
        log.info("%s: predict_dir %s: %d images, %s, %d converted to %s, %d unreadable skipped",
                 type(self).__name__, self.predict_dir, len(paths), resized, sum(m != mode for m in modes), mode,
                 len(found) - len(paths))

    def _readable_test_split(self) -> None:
        """With ``bad_images="skip"``: ``datasets["predict"]``, the test split less its unreadable image files.

        Each file of the test split is decoded once (`inspect_images`); the unreadable ones are left out before
        the batches are made, so that every prediction keeps its own sample index, file and true class (a batch
        that dropped a skipped sample would shift them). One line counts what was left out. Splits held in
        memory, or without image files, have nothing to skip: the test split itself is predicted.

        Raises:
            ValueError: no image of the test split is readable.
        """
        test = self.datasets["test"]
        inner = getattr(test, "dataset", None)
        paths = getattr(inner, "paths", None)
        if self.bad_images != "skip" or not isinstance(test, TransformedSubset) or paths is None:
            return
        files = [Path(paths[i]) for i in test.indices]
        readable = {str(p) for p in inspect_images(files, "skip")[0]}
        if len(readable) == len(set(map(str, files))):
            return
        indices = [i for i in test.indices if str(paths[i]) in readable]
        if not indices:
            raise ValueError(f"{type(self).__name__}: expected at least one readable image in the test split to "
                             f"predict, got none of {len(files)} (bad_images='skip' left them all out)")
        self.datasets["predict"] = TransformedSubset(cast(Dataset, inner), indices, test.transform)
        log.info("%s: predicting the test split: %d of its %d images, %d unreadable left out (bad_images='skip')",
                 type(self).__name__, len(indices), len(files), len(files) - len(indices))

    def input_size(self) -> tuple[int, int] | None:
        """(H, W) of the training input, which `predict_dir` images of another size are resized to.

        ``None`` (the default): the evaluation transform itself brings any size to the network's input
        (e.g. the short-side resize and centre crop of `ImageFileDataModule`).
        """
        return None

    def teardown(self, stage: str | None = None) -> None:
        skipped = self.num_skipped_images()
        if skipped:
            log.warning("%s: skipped %d unreadable image reads so far (bad_images='skip')",
                        type(self).__name__, skipped)

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
        idx = np.arange(len(cast(Sized, dataset)))
        from sklearn.model_selection import train_test_split

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
            drop_last=train and len(cast(Sized, dataset)) > self.batch_size,  # no BatchNorm crash on a last batch of 1
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
