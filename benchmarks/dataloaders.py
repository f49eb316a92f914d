"""Training images/s of the data pipelines on CIFAR-shaped data: per-image v2 transforms against whole batches.

Usage: ``python benchmarks/dataloaders.py [--images 10240] [--batch-size 256] [--repeats 5] [--workers 0 1 2]``

The same in-memory uint8 (N, 3, 32, 32) images (random pixels; the pipeline's cost does not depend on them)
go through the CIFAR training augmentation (pad-4 random crop, horizontal flip, normalisation), two ways:

* ``per-image``: `ImageDataModule`'s per-image pipeline, ``v2.RandomCrop(32, padding=4)`` +
  ``v2.RandomHorizontalFlip`` + ``ToDtype`` + ``Normalize`` (`transforms.cifar_train`) on each image in the
  DataLoader (``num_workers`` 0, 1, 2: worker processes, kept alive between epochs), then collated;
* ``batched``: the in-memory pipeline of ``augment.on_device``: the loader slices whole uint8 batches out
  of the tensor (`TensorImageDataset.__getitems__`, no collation), then `batch_transforms.random_crop_flip`
  and `batch_transforms.normalize` augment each batch at once (here on the CPU, the device of this machine;
  on a GPU they run there).

One epoch over ``--images`` images is timed per repeat, after one untimed epoch (worker start-up, caches);
the pipelines are interleaved and their order rotates every repeat. The table gives the median and the
min-max of images/s over ``--repeats`` (>= 5) repeats, and the speed-up of the batched pipeline over each
per-image configuration.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from crl_lightning.data import transforms as T
from crl_lightning.data.batch_transforms import normalize, random_crop_flip
from crl_lightning.data.datasets import TensorImageDataset, TransformedSubset, collate_batched


def per_image(data: TensorImageDataset, batch_size: int, workers: int) -> Callable[[], int]:
    loader = DataLoader(TransformedSubset(data, transform=T.cifar_train(T.CIFAR10_STATS)), batch_size=batch_size,
                        shuffle=True, num_workers=workers, persistent_workers=workers > 0)

    def epoch() -> int:
        return sum(images.shape[0] for images, _ in loader)

    return epoch


def batched(data: TensorImageDataset, batch_size: int) -> Callable[[], int]:
    subset = TransformedSubset(data)
    loader = DataLoader(subset, batch_size=batch_size, shuffle=True, collate_fn=collate_batched)

    def epoch() -> int:
        n = 0
        for images, _ in loader:
            n += normalize(random_crop_flip(images, 4, True), *T.CIFAR10_STATS).shape[0]
        return n

    return epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_240)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error(f"--repeats: expected >= 5 (the table gives medians and ranges), got {args.repeats}")
    torch.manual_seed(0)
    data = TensorImageDataset(torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8),
                              torch.randint(0, 10, (args.images,)).tolist())
    pipelines = {f"per-image, num_workers {w}": per_image(data, args.batch_size, w) for w in args.workers}
    pipelines["batched (in-memory tensor)"] = batched(data, args.batch_size)
    for epoch in pipelines.values():  # untimed: start the workers, warm the caches
        epoch()
    speed: dict[str, list[float]] = {name: [] for name in pipelines}
    names = list(pipelines)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            start = time.perf_counter()
            n = pipelines[name]()
            speed[name].append(n / (time.perf_counter() - start))
    print(f"## CIFAR training pipeline, {args.images:,} 32x32 images per epoch, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, {args.repeats} interleaved repeats\n")
    print("| pipeline | images/s (median) | min-max | batched / this |")
    print("|---|---:|---|---:|")
    fastest = statistics.median(speed["batched (in-memory tensor)"])
    for name, values in speed.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.0f} | {min(values):,.0f}-{max(values):,.0f} | {fastest / median:.1f}x |")


if __name__ == "__main__":
    main()
