"""Semantic segmentation with `CompetingRatioLoss`: (N, C, H, W) logits, (N, H, W) masks and void pixels.

A tiny fully-convolutional network is trained for a few SGD steps on random (N, 3, H, W) images. Each
pixel's class is the brightest of its three channels (a rule the network can learn), and a random tenth
of the pixels is void (``255``, like the object boundaries of Pascal VOC masks) and ignored through
``ignore_index=255``, exactly as with ``nn.CrossEntropyLoss``. Every step draws a new batch; the loss
goes down and the pixel accuracy on a held-out batch goes up. The loss is a drop-in: no reshaping of the
logits to (N*H*W, C) rows is needed.

Run it from the repository root::

    python examples/segmentation_loss.py --steps 20
"""

from __future__ import annotations

import argparse

import torch
from torch import Tensor, nn

from crl_lightning.losses import CompetingRatioLoss

VOID = 255
NUM_CLASSES = 3


def make_batch(batch: int = 8, size: int = 16, void_fraction: float = 0.1, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random images and their masks.

    Returns:
        images (batch, 3, size, size) float32, standard normal, and masks (batch, size, size) int64: the index of
        each pixel's brightest channel, or `VOID` for a random ``void_fraction`` of the pixels.
    """
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    masks = images.argmax(dim=1)
    masks[torch.rand(batch, size, size, generator=g) < void_fraction] = VOID
    return images, masks


def make_model(width: int = 16) -> nn.Module:
    """A tiny fully-convolutional net: (N, 3, H, W) images to (N, NUM_CLASSES, H, W) logits."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 1),
        nn.ReLU(),
        nn.Conv2d(width, NUM_CLASSES, 1),
    )


def pixel_accuracy(model: nn.Module, images: Tensor, masks: Tensor) -> float:
    """Fraction of the non-void pixels whose arg-max logit is the mask's class."""
    with torch.no_grad():
        pred = model(images).argmax(dim=1)
    keep = masks != VOID
    return (pred[keep] == masks[keep]).float().mean().item()


def train(steps: int = 20, lr: float = 0.5, seed: int = 0) -> tuple[list[float], float, float]:
    """Train a fresh `make_model` with CRL (alpha 1.5, beta 1) and SGD, one new batch per step.

    Returns:
        The loss of every step (before its update), and the held-out pixel accuracy before and after.
    """
    torch.manual_seed(seed)
    model = make_model()
    criterion = CompetingRatioLoss(alpha=1.5, beta=1.0, ignore_index=VOID)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    held_out = make_batch(seed=10**6 + seed)  # never a training seed
    accuracy_before = pixel_accuracy(model, *held_out)
    losses = []
    for step in range(steps):
        images, masks = make_batch(seed=seed * steps + step)
        loss = criterion(model(images), masks)  # (N, 3, H, W) logits, (N, H, W) masks
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, accuracy_before, pixel_accuracy(model, *held_out)


def main(argv: list[str] | None = None) -> list[float]:
    """Command-line entry point: train, print the loss of every step and the held-out accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="SGD steps (one new batch each)")
    parser.add_argument("--lr", type=float, default=0.5, help="learning rate (momentum 0.9)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    losses, before, after = train(args.steps, args.lr, args.seed)
    for step, loss in enumerate(losses):
        print(f"step {step:3d}  CRL {loss:.4f}")
    print(f"CRL went from {losses[0]:.4f} to {losses[-1]:.4f}; "
          f"held-out pixel accuracy from {100 * before:.1f} % to {100 * after:.1f} %")
    return losses


if __name__ == "__main__":
    main()
