"""Whole-batch augmentation on the device: the CIFAR crop + flip and the normalisation, for in-memory data.

With the whole data set in memory as uint8 tensors, the per-image PIL/v2 pipeline is the bottleneck of a GPU
run. These functions do the same augmentation to a whole (N, C, H, W) batch at once, on whatever device
the batch is on (a DataModule calls them in ``on_after_batch_transfer``). They draw from the same
distribution as ``v2.RandomCrop(size, padding=p)`` + ``v2.RandomHorizontalFlip()``: crop offsets uniform
over the ``2p + 1`` positions of the padded image, each axis independently, and a flip with probability
0.5, independently per image (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["normalize", "random_crop_flip"]


def random_crop_flip(images: Tensor, padding: int = 4, flip: bool = True, generator: torch.Generator | None = None,
                     ) -> Tensor:
    """Per-image random crop of the zero-padded batch back to (H, W), then a random horizontal flip.

    Args:
        images: (N, C, H, W) images of any dtype (uint8 before normalisation, as in the per-image pipeline,
            where padding is black).
        padding: pixels of zero padding on each side; 0 skips the crop.
        flip: flip each image horizontally with probability 0.5.
        generator: random generator on the batch's device, or ``None`` for the device's global one.

    Returns:
        A new (N, C, H, W) tensor of the same dtype and device.

    Raises:
        ValueError: ``images`` is not 4-D or ``padding < 0``.
    """
    if images.ndim != 4:
        raise ValueError(f"images: expected a (N, C, H, W) batch, got shape {tuple(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding: expected >= 0 pixels, got {padding}")
    n, c, h, w = images.shape
    device = images.device
    out = images
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        top = torch.randint(0, 2 * padding + 1, (n, 1, 1, 1), device=device, generator=generator)
        left = torch.randint(0, 2 * padding + 1, (n, 1, 1, 1), device=device, generator=generator)
        # two gathers (rows, then columns): ~3x faster than one advanced-indexing gather on a CPU
        rows = (top + torch.arange(h, device=device).view(1, 1, h, 1)).expand(n, c, h, w + 2 * padding)
        cols = (left + torch.arange(w, device=device).view(1, 1, 1, w)).expand(n, c, h, w)
        out = padded.gather(2, rows).gather(3, cols)
    if flip:
        flipped = torch.rand(n, device=device, generator=generator) < 0.5
        out = torch.where(flipped.view(n, 1, 1, 1), out.flip(3), out)
    return out.contiguous()


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (N, C, H, W) images -> float32, scaled to [0, 1] then ``(x - mean) / std`` per channel.

    Args:
        images: (N, C, H, W) uint8 (scaled by 1/255) or floating point (taken as already in [0, 1]).
        mean: C per-channel means of the [0, 1] pixels.
        std: C per-channel standard deviations.

    Returns:
        float32 (N, C, H, W) on the images' device, the values ``v2.ToDtype(scale=True)`` +
        ``v2.Normalize`` give.

    Raises:
        ValueError: ``mean``/``std`` do not have one value per channel.
    """
    c = images.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std: expected {c} per-channel values, got {len(mean)} and {len(std)}")
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, c, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, c, 1, 1)
    return x.sub_(m).div_(s) if x is not images else (x - m) / s
