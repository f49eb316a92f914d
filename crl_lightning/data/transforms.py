"""Transform presets (torchvision.transforms.v2) used by the paper's experiments."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

__all__ = ["CIFAR10_STATS", "CIFAR100_STATS", "IMAGENET_STATS", "SVHN_STATS", "cifar_train", "to_normalized_tensor",
           "imagenet_train", "imagenet_eval"]

#: (mean, std) per channel, of the training split, on images scaled to [0, 1].
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

Stats = tuple[Sequence[float], Sequence[float]]


def to_normalized_tensor(stats: Stats) -> v2.Compose:
    """PIL/uint8 image -> float32 (C, H, W) tensor scaled to [0, 1], then normalised by ``stats``."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(*stats)])


def cifar_train(stats: Stats, size: int | tuple[int, int] = 32, padding: int = 4) -> v2.Compose:
    """The paper's CIFAR augmentation: pad-4 random crop of ``size`` (int or (H, W)) + flip, then normalise."""
    return v2.Compose([v2.ToImage(), v2.RandomCrop(size, padding=padding), v2.RandomHorizontalFlip(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(*stats)])


def imagenet_train(size: int = 224, stats: Stats = IMAGENET_STATS) -> v2.Compose:
    """RandomResizedCrop + horizontal flip (He et al. 2016, as the paper), then normalise."""
    return v2.Compose([v2.ToImage(), v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(*stats)])


def imagenet_eval(size: int = 224, resize: int | None = None, stats: Stats = IMAGENET_STATS) -> v2.Compose:
    """Resize the short side to ``resize`` (default ``size * 8/7``, 256 for 224), single center crop."""
    resize = resize if resize is not None else round(size * 8 / 7)
    return v2.Compose([v2.ToImage(), v2.Resize(resize, antialias=True), v2.CenterCrop(size),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(*stats)])
