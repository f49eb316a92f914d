"""`ImageFileDataModule`: the base of the DataModules over image files (CUB, Adience, ImageNet)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from crl_lightning.data import transforms as T
from crl_lightning.data.base import ImageDataModule

__all__ = ["ImageFileDataModule"]


class ImageFileDataModule(ImageDataModule):
    """Base of the DataModules over image files (CUB, Adience, ImageNet): the image and resize sizes.

    Training images get ImageNet-style augmentation (`transforms.imagenet_train`: RandomResizedCrop
    ``image_size`` + horizontal flip), evaluation images a short-side resize to ``resize_size`` and a
    single center crop ``image_size`` (`transforms.imagenet_eval`), as the paper's ImageNet protocol.

    Args:
        data_dir: root folder of the dataset files.
        image_size: side of the square network input, pixels.
        resize_size: eval short-side resize before the center crop, pixels (default
            ``round(image_size * 8 / 7)``, 256 for 224).
        batch_size: samples per batch, per process.
        **kwargs: the other options of `ImageDataModule` (loader options, ``bad_images``, ``augment``).

    Raises:
        ValueError: not ``1 <= image_size <= resize_size``, ``augment.on_device`` (the images are files,
            not an in-memory tensor), or any `ImageDataModule` argument error.
    """

    def __init__(
        self,
        data_dir: str | Path = "data",
        image_size: int = 224,
        resize_size: int | None = None,
        batch_size: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir, batch_size=batch_size, **kwargs)
        resize_size = resize_size if resize_size is not None else round(image_size * 8 / 7)
        if not 1 <= image_size <= resize_size:
            raise ValueError(
                f"image_size/resize_size: expected 1 <= image_size <= resize_size, got {image_size}, {resize_size}"
            )
        if self.augment.on_device:
            raise ValueError(f"augment.on_device: expected false for {type(self).__name__} (image files, decoded "
                             "per image), got true")
        self.image_size, self.resize_size = image_size, resize_size

    def train_transform(self) -> Callable:
        return T.imagenet_train(self.image_size)

    def eval_transform(self) -> Callable:
        return T.imagenet_eval(self.image_size, self.resize_size)
