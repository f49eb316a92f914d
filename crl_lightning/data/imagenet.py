"""ImageNet (ILSVRC-2012): train class folders; val as class folders or flat + ``LOC_val_solution.csv``."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Dataset
from torchvision.datasets.folder import find_classes

from crl_lightning.data.datasets import ImageFileDataset, is_image_file
from crl_lightning.data.files import ImageFileDataModule
from crl_lightning.data.folder import list_image_folder

__all__ = ["ImageNetDataModule", "list_flat_val"]

IMAGENET_HOWTO = (
    "ImageNet is not downloaded by this package: get ILSVRC2012 from https://image-net.org (or the Kaggle "
    "'ImageNet Object Localization Challenge', which ships LOC_val_solution.csv) and extract "
    "train/<synset>/*.JPEG and val/ into data_dir"
)


def list_flat_val(
    folder: str | Path, labels_csv: str | Path, class_to_idx: dict[str, int]
) -> tuple[list[str], list[int]]:
    """The flat ``ILSVRC2012_val_*.JPEG`` folder labelled by ``LOC_val_solution.csv``.

    The csv has the header ``ImageId,PredictionString``; the class of an image is the first token
    (a synset) of its ``PredictionString`` (``"n01751748 x0 y0 x1 y1 n01751748 ..."``). Every image file
    must have a row and every row an image file.

    Args:
        folder: the flat val folder.
        labels_csv: ``LOC_val_solution.csv``.
        class_to_idx: synset -> class index (from the training folders).

    Returns:
        ``(paths, targets)`` sorted by file name.

    Raises:
        FileNotFoundError: ``labels_csv`` is missing.
        ValueError: wrong header, an empty or unknown synset, a duplicated id, or images and rows that
            do not match (counts and examples in the message).
    """
    folder, labels_csv = Path(folder), Path(labels_csv)
    if not labels_csv.is_file():
        raise FileNotFoundError(
            f"ImageNet: the flat val folder {folder} needs its labels file {labels_csv}, found none; "
            f"pass --data.val_labels PATH/LOC_val_solution.csv. {IMAGENET_HOWTO}"
        )
    synset_of: dict[str, str] = {}
    with open(labels_csv, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] != ["ImageId", "PredictionString"]:
            raise ValueError(f"{labels_csv}:1: expected the header ImageId,PredictionString, got {header}")
        for fields in reader:
            if not fields:
                continue
            line = reader.line_num
            tokens = fields[1].split() if len(fields) == 2 else []
            if not tokens:
                raise ValueError(
                    f"{labels_csv}:{line}: expected ImageId,PredictionString with a synset first, "
                    f"got {fields}"
                )
            image_id, synset = fields[0].strip(), tokens[0]
            if synset not in class_to_idx:
                raise ValueError(
                    f"{labels_csv}:{line}: expected a synset among the {len(class_to_idx)} training "
                    f"class folders, got {synset!r}"
                )
            if image_id in synset_of:
                raise ValueError(f"{labels_csv}:{line}: image id {image_id} appears twice")
            synset_of[image_id] = synset
    with os.scandir(folder) as entries:
        files = sorted(e.name for e in entries if e.is_file() and is_image_file(e.name))
    stems = {Path(n).stem: n for n in files}
    unlabelled = sorted(set(stems) - set(synset_of))
    missing = sorted(set(synset_of) - set(stems))
    if unlabelled or missing:
        raise ValueError(
            f"ImageNet: expected one row of {labels_csv.name} per image of {folder}: {len(unlabelled)} "
            f"images have no row (e.g. {unlabelled[:3]}), {len(missing)} rows have no image "
            f"(e.g. {missing[:3]})"
        )
    order = sorted(stems)
    return [str(folder / stems[s]) for s in order], [class_to_idx[synset_of[s]] for s in order]


class ImageNetDataModule(ImageFileDataModule):
    """ILSVRC-2012 classification: 1,281,167 train / 50,000 val images, 1,000 classes.

    ``<data_dir>/<train_dir>/<synset>/*.JPEG`` trains; the class index is the position of the synset in
    the sorted list of training folders, shared by train and val. ``<data_dir>/<val_dir>`` (the test
    split here: the paper reports val error) is either class folders like train, or the flat folder of
    ``ILSVRC2012_val_*.JPEG`` labelled by ``LOC_val_solution.csv`` (looked for in ``data_dir``, then in the
    val folder, unless ``val_labels`` is given). The devkit's ``ILSVRC2012_validation_ground_truth.txt``
    uses ILSVRC ids, not sorted-synset order, and is not accepted. Training: RandomResizedCrop
    ``image_size`` + horizontal flip (He et al. 2016, as the paper); evaluation: resize ``resize_size``
    + single center crop ``image_size``. Paper (Sec. IV-A-2): ResNet-34, 90 epochs, batch 256, lr 0.1
    divided by 10 at epochs 30 and 60.

    Args:
        data_dir: ImageNet root.
        num_classes: expected number of training class folders (1000; fewer for a subset), linked into
            the model; setup raises when the folders disagree.
        train_dir: training folder, relative to ``data_dir``.
        val_dir: validation folder, relative to ``data_dir``.
        val_labels: ``LOC_val_solution.csv`` for a flat val folder (default: found automatically).
        batch_size: per-process batch size (paper: 256).
        **kwargs: the other options of `ImageFileDataModule` (``image_size``, ``resize_size``) and
            `ImageDataModule` (loader options, ``val_split``: 0 validates on the val folder; ``bad_images``,
            ``augment``).

    Raises:
        ValueError: bad arguments; at setup, a class count that differs from ``num_classes``, a val folder
            that mixes class folders and images, unknown synsets, or a labels file that does not match.
        FileNotFoundError: at setup, missing folders or labels file.
    """

    def __init__(
        self,
        data_dir: str | Path = "data/imagenet",
        num_classes: int = 1000,
        train_dir: str = "train",
        val_dir: str = "val",
        val_labels: str | Path | None = None,
        batch_size: int = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir, batch_size=batch_size, **kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        if val_labels is not None and Path(val_labels).suffix.lower() != ".csv":
            raise ValueError(
                f"val_labels: expected LOC_val_solution.csv (synset per image), got {val_labels}; the devkit "
                "ground truth uses ILSVRC ids, which are not the sorted-synset class order"
            )
        self.num_classes = num_classes
        self.train_dir, self.val_dir = self.data_dir / train_dir, self.data_dir / val_dir
        self.val_labels = Path(val_labels).expanduser() if val_labels is not None else None
        self._class_to_idx: dict[str, int] | None = None
        self._built: dict[str, ImageFileDataset] = {}  # val_split=0 asks for "test" twice (val and test)

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Synset -> class index, from the sorted training folders (read once).

        Raises:
            FileNotFoundError: the training folder is missing.
            ValueError: the number of class folders differs from ``num_classes``.
        """
        if self._class_to_idx is None:
            if not self.train_dir.is_dir():
                raise FileNotFoundError(f"ImageNet: expected the folder {self.train_dir}, found none. {IMAGENET_HOWTO}")
            try:
                synsets = find_classes(str(self.train_dir))[0]
            except FileNotFoundError:  # torchvision: no class folder in it
                synsets = []
            if len(synsets) != self.num_classes:
                raise ValueError(
                    f"ImageNet: expected {self.num_classes} class folders (num_classes) in {self.train_dir}, "
                    f"got {len(synsets)}; pass --data.num_classes {len(synsets)} for a subset"
                )
            self._class_to_idx = {s: i for i, s in enumerate(synsets)}
        return self._class_to_idx

    def _val_layout(self) -> str:
        """``"folders"`` or ``"flat"``; raises for a missing, empty or mixed val folder."""
        if not self.val_dir.is_dir():
            raise FileNotFoundError(
                f"ImageNet: expected the val folder {self.val_dir}, found none. {IMAGENET_HOWTO}"
            )
        with os.scandir(self.val_dir) as scan:
            entries = [e for e in scan if not e.name.startswith(".")]
            has_dirs = any(e.is_dir() for e in entries)
            has_images = any(e.is_file() and is_image_file(e.name) for e in entries)
        if has_dirs and has_images:
            raise ValueError(
                f"ImageNet: {self.val_dir}: expected either class folders or a flat folder of images, "
                "got both"
            )
        if not (has_dirs or has_images):
            raise ValueError(
                f"ImageNet: {self.val_dir}: expected class folders or ILSVRC2012_val_*.JPEG files, "
                "got neither"
            )
        return "folders" if has_dirs else "flat"

    def _find_val_labels(self) -> Path:
        if self.val_labels is not None:
            return self.val_labels
        for candidate in (self.data_dir / "LOC_val_solution.csv", self.val_dir / "LOC_val_solution.csv"):
            if candidate.is_file():
                return candidate
        return self.data_dir / "LOC_val_solution.csv"

    def build_dataset(self, split: str) -> Dataset:
        if split in self._built:
            return self._built[split]
        if split == "train":
            paths, targets, _ = list_image_folder(self.train_dir, self.class_to_idx, "ImageNet", IMAGENET_HOWTO)
        elif split == "test":
            if self._val_layout() == "folders":
                paths, targets, _ = list_image_folder(self.val_dir, self.class_to_idx, "ImageNet", IMAGENET_HOWTO)
            else:
                paths, targets = list_flat_val(self.val_dir, self._find_val_labels(), self.class_to_idx)
        else:
            raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
        rank_zero_info(f"ImageNet {split}: {len(paths):,} images of {len(set(targets))} classes")
        self._built[split] = ImageFileDataset(paths, targets, self.bad_images)
        return self._built[split]
