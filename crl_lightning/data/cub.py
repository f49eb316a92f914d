"""CUB-200-2011 birds: the ``CUB2011`` dataset over the official txt files and `CUB200DataModule`."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from crl_lightning.data.datasets import BadImagePolicy, ImageFileDataset, check_files_exist
from crl_lightning.data.files import ImageFileDataModule

__all__ = [
    "CUB2011",
    "CUB200DataModule",
    "clip_box",
    "find_cub_root",
    "read_cub_boxes",
    "read_cub_images",
    "read_cub_labels",
    "read_cub_split",
]

log = logging.getLogger(__name__)

CUB_URL = "https://data.caltech.edu/records/65de6-vp158 (CUB_200_2011.tgz)"
CUB_NUM_CLASSES = 200


def _missing(path: Path) -> FileNotFoundError:
    found = sorted(p.name for p in path.parent.iterdir())[:20] if path.parent.is_dir() else "no such folder"
    return FileNotFoundError(
        f"CUB-200-2011: expected {path.name} in {path.parent} (found {found}); download {CUB_URL} "
        "and extract it so that data_dir holds CUB_200_2011/ (or is that folder)"
    )


def _read_id_table(path: Path, n_fields: int, what: str) -> dict[int, list[str]]:
    """``{image_id: [field, ...]}`` of a CUB "id field ..." file (space-separated, one image a line).

    The last field may contain spaces (``images.txt`` paths). Blank lines are ignored.
    """
    if not path.is_file():
        raise _missing(path)
    table: dict[int, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split(maxsplit=n_fields - 1)
            if len(fields) != n_fields:
                raise ValueError(
                    f"{path}:{lineno}: expected {n_fields} space-separated fields ({what}), "
                    f"got {len(fields)}: {line.rstrip()!r}"
                )
            try:
                image_id = int(fields[0])
            except ValueError:
                msg = f"{path}:{lineno}: expected an integer image id, got {fields[0]!r}"
                raise ValueError(msg) from None
            if image_id in table:
                raise ValueError(f"{path}:{lineno}: image id {image_id} appears twice")
            table[image_id] = [x.strip() for x in fields[1:]]
    if not table:
        raise ValueError(f"{path}: expected one line per image, got an empty file")
    return table


def _int_field(path: Path, image_id: int, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path}: image {image_id}: expected an integer, got {value!r}") from None


def read_cub_images(root: str | Path) -> dict[int, str]:
    """``images.txt``: image id -> path relative to ``<root>/images``.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a malformed line or a duplicate id (names file and line).
    """
    path = Path(root) / "images.txt"
    return {k: v[0] for k, v in _read_id_table(path, 2, "<image_id> <image_name>").items()}


def read_cub_labels(root: str | Path) -> dict[int, int]:
    """``image_class_labels.txt``: image id -> class index 0..199 (the file's ids are 1-based).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a malformed line, a duplicate id, or a class id outside 1..200.
    """
    path = Path(root) / "image_class_labels.txt"
    labels = {}
    for image_id, (value,) in _read_id_table(path, 2, "<image_id> <class_id>").items():
        class_id = _int_field(path, image_id, value)
        if not 1 <= class_id <= CUB_NUM_CLASSES:
            raise ValueError(
                f"{path}: image {image_id}: expected a class id in 1..{CUB_NUM_CLASSES}, got {class_id}"
            )
        labels[image_id] = class_id - 1
    return labels


def read_cub_split(root: str | Path) -> dict[int, bool]:
    """``train_test_split.txt``: image id -> ``True`` for training (``1``), ``False`` for test (``0``).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a malformed line, a duplicate id, or a flag other than 0/1.
    """
    path = Path(root) / "train_test_split.txt"
    split = {}
    for image_id, (value,) in _read_id_table(path, 2, "<image_id> <is_training_image>").items():
        if value not in ("0", "1"):
            raise ValueError(f"{path}: image {image_id}: expected is_training_image 0 or 1, got {value!r}")
        split[image_id] = value == "1"
    return split


def read_cub_boxes(root: str | Path) -> dict[int, tuple[float, float, float, float]]:
    """``bounding_boxes.txt``: image id -> ``(x, y, width, height)`` in pixels (floats, top-left origin).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a malformed line, a non-number, or a box with width or height <= 0.
    """
    path = Path(root) / "bounding_boxes.txt"
    boxes = {}
    for image_id, fields in _read_id_table(path, 5, "<image_id> <x> <y> <width> <height>").items():
        try:
            x, y, w, h = (float(v) for v in fields)
        except ValueError:
            raise ValueError(
                f"{path}: image {image_id}: expected 4 numbers x y width height, got {fields}"
            ) from None
        if not (w > 0 and h > 0) or not all(map(math.isfinite, (x, y, w, h))):
            raise ValueError(f"{path}: image {image_id}: expected a box with width, height > 0, got {fields}")
        boxes[image_id] = (x, y, w, h)
    return boxes


def _check_same_ids(
    reference: Mapping[int, object], other: Mapping[int, object], ref_name: str, other_name: str
) -> None:
    if reference.keys() != other.keys():
        only_ref = sorted(reference.keys() - other.keys())
        only_other = sorted(other.keys() - reference.keys())
        raise ValueError(
            f"CUB-200-2011: expected the same image ids in {ref_name} and {other_name}; "
            f"{len(only_ref)} only in {ref_name} (e.g. {only_ref[:5]}), "
            f"{len(only_other)} only in {other_name} (e.g. {only_other[:5]})"
        )


def clip_box(
    box: tuple[float, float, float, float], width: int, height: int
) -> tuple[int, int, int, int] | None:
    """Integer crop ``(left, top, right, bottom)`` covering ``box`` (x, y, w, h), clipped to the image.

    Returns ``None`` when nothing of the box lies inside the ``width`` x ``height`` image.
    """
    x, y, w, h = box
    left, top = max(0, math.floor(x)), max(0, math.floor(y))
    right, bottom = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
    return (left, top, right, bottom) if right > left and bottom > top else None


class CUB2011(ImageFileDataset):
    """CUB-200-2011 read from its official files.

    Reads ``images/``, ``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt`` and (for
    cropping) ``bounding_boxes.txt``. ``dataset[i]`` is ``(PIL RGB image, class index 0..199)``;
    grayscale and CMYK JPEGs are converted to RGB. Samples are in increasing image-id order. The
    official split has 5,994 train / 5,794 test images. With ``crop_to_bbox`` the image is cropped to
    its annotated box, rounded outwards to whole pixels and clipped to the image (some boxes run past
    the edge).

    Args:
        root: the ``CUB_200_2011`` folder (the one holding ``images.txt``).
        split: ``"train"``, ``"test"`` or ``"all"``.
        crop_to_bbox: crop each image to its bounding box.
        bad_images: ``"raise"`` or ``"skip"`` for undecodable files (see `ImageFileDataset`).
        check_files: verify at construction that every image file of the split exists.

    Attributes:
        image_ids: (N,) CUB image ids (1-based) of the samples.
        boxes: ``(x, y, w, h)`` per sample when ``crop_to_bbox``, else ``None``.

    Raises:
        FileNotFoundError: a metadata file or (with ``check_files``) image files are missing; the message
            names them and where to get the dataset.
        ValueError: a malformed metadata file, ids that differ between files, or an unknown split.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        crop_to_bbox: bool = False,
        bad_images: BadImagePolicy = "raise",
        check_files: bool = True,
    ) -> None:
        if split not in ("train", "test", "all"):
            raise ValueError(f"split: expected 'train', 'test' or 'all', got {split!r}")
        root = Path(root)
        images = read_cub_images(root)
        labels = read_cub_labels(root)
        is_train = read_cub_split(root)
        _check_same_ids(images, labels, "images.txt", "image_class_labels.txt")
        _check_same_ids(images, is_train, "images.txt", "train_test_split.txt")
        ids = sorted(i for i in images if split == "all" or is_train[i] == (split == "train"))
        if not ids:
            raise ValueError(f"CUB-200-2011: expected images in the {split} split of {root}, got none")
        self.boxes: list[tuple[float, float, float, float]] | None = None
        if crop_to_bbox:
            all_boxes = read_cub_boxes(root)
            _check_same_ids(images, all_boxes, "images.txt", "bounding_boxes.txt")
            self.boxes = [all_boxes[i] for i in ids]
        paths = [root / "images" / images[i] for i in ids]
        if check_files:
            check_files_exist(paths, f"CUB-200-2011: {split} images listed in images.txt",
                              f"re-extract {CUB_URL} into {root.parent}")
        super().__init__(paths, [labels[i] for i in ids], bad_images)
        self.image_ids = ids
        self.root, self.split, self.crop_to_bbox = root, split, crop_to_bbox

    def load_image(self, index: int) -> Image.Image:
        image = super().load_image(index)
        if self.boxes is None:
            return image
        crop = clip_box(self.boxes[index], *image.size)
        if crop is None:
            raise ValueError(
                f"CUB-200-2011: image {self.image_ids[index]} ({self.paths[index]}, "
                f"{image.size[0]}x{image.size[1]}): expected its bounding box {self.boxes[index]} to overlap "
                "the image, got none of it inside"
            )
        return image.crop(crop)


def find_cub_root(data_dir: str | Path) -> Path:
    """The folder holding ``images.txt``: ``data_dir`` itself or ``data_dir/CUB_200_2011``.

    Raises:
        FileNotFoundError: neither holds ``images.txt``.
    """
    data_dir = Path(data_dir)
    for candidate in (data_dir, data_dir / "CUB_200_2011"):
        if (candidate / "images.txt").is_file():
            return candidate
    raise _missing(data_dir / "CUB_200_2011" / "images.txt")


class CUB200DataModule(ImageFileDataModule):
    """CUB-200-2011: 200 bird species, 5,994 train / 5,794 test images (official split).

    ``data_dir`` is the ``CUB_200_2011`` folder extracted from ``CUB_200_2011.tgz`` or its parent. Training
    uses ImageNet-style augmentation (RandomResizedCrop ``image_size`` + horizontal flip), evaluation a
    resize to ``resize_size`` and a center crop ``image_size`` (`transforms.imagenet_train`/`imagenet_eval`),
    both normalised with ImageNet statistics. The paper (Sec. IV-A-2) trains ResNet-34 for 40 epochs,
    batch 64, lr 0.1 divided by 10 at 50 % and 75 %.

    Args:
        data_dir: ``CUB_200_2011`` folder or the folder holding it.
        crop_to_bbox: crop every image (train and test) to its annotated bounding box first.
        **kwargs: the options of `ImageFileDataModule` (``image_size``, ``resize_size``, ``batch_size``: paper
            64) and `ImageDataModule` (loader options, ``val_split``: 0 validates on the test split;
            ``bad_images``, ``augment``).

    Raises:
        ValueError: ``image_size < 1``, or (at setup) malformed metadata.
        FileNotFoundError: at setup, metadata or image files are missing.
    """

    num_classes = CUB_NUM_CLASSES

    def __init__(self, data_dir: str | Path = "data", crop_to_bbox: bool = False, **kwargs: Any) -> None:
        super().__init__(data_dir, **kwargs)
        self.crop_to_bbox = crop_to_bbox

    @property
    def classes(self) -> list[str]:
        """The 200 species in class-index order from ``classes.txt`` (``Black_footed_Albatross``, ...); [] without it.

        Raises:
            ValueError: a malformed ``classes.txt``.
        """
        try:
            table = _read_id_table(find_cub_root(self.data_dir) / "classes.txt", 2, "class id and name")
        except FileNotFoundError:
            return []
        return [table[i][0].partition(".")[2] or table[i][0] for i in sorted(table)]

    def build_dataset(self, split: str) -> Dataset:
        if split not in ("train", "test"):
            raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
        return CUB2011(find_cub_root(self.data_dir), split, self.crop_to_bbox, self.bad_images)
