"""Training throughput: ImageClassifier + CRL under Lightning's Trainer against a plain PyTorch loop, and CRL vs CE.

Usage: ``python benchmarks/train_step.py [--device cpu|cuda] [--backbone preact_resnet20] [--image-size 32]
[--batch-size 128] [--steps 20] [--warmup 3] [--repeats 5] [--precision 32|bf16] [--channels-last] [--compile]``

Three variants train the same network from the same initial weights on the same in-memory batches
(uint8 images kept as one tensor, loaded by index slices, moved to the device, cropped/flipped (images of
at most 64 px) and normalised there as whole batches, `crl_lightning.data.batch_transforms`), with the
paper's SGD (Nesterov 0.9, wd 1e-4, lr 0.1):

* ``plain loop + CE``: a hand-written loop over the same network module, ``F.cross_entropy``, no Lightning;
* ``Lightning + CE``: `ImageClassifier` with `CrossEntropyLoss` under ``Trainer.fit`` (logging and
  torchmetrics updates included, as in a real run; no checkpoints, no validation);
* ``Lightning + CRL``: the same with `CompetingRatioLoss` (alpha 1.5, beta 1).

Each variant's network is built (and, with ``--compile``, compiled) once and reset to the same initial weights
before every run. Each variant's images/s is measured over ``--steps`` optimizer steps after ``--warmup``
steps (steady state: the Trainer's start-up, its end-of-epoch work (metric computes, callbacks: once per epoch
in a real run, but once per ``--steps`` here) and ``torch.compile``'s first compilation are not counted; the clock
stops after the last optimizer step, in both loops; on CUDA the device is synchronised before each clock read). The
variants are interleaved and their order rotates each repeat (``--repeats`` >= 5); the table gives the median and
min-max of images/s over the repeats, then the ratios of the medians: Lightning + CRL against the plain loop, and
the CRL step time against the CE step time inside the same Trainer. On CUDA it also prints the mean GPU utilisation
during the timed steps (``nvidia-smi``, sampled every 0.2 s; "n/a" where it is missing).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import warnings

import lightning as L
import torch
import torch.nn.functional as F

from crl_lightning import ImageClassifier
from crl_lightning.classifier import PAPER_SGD
from crl_lightning.data import Augmentation
from crl_lightning.data import transforms as T
from crl_lightning.data.base import ImageDataModule
from crl_lightning.data.batch_transforms import normalize, random_crop_flip
from crl_lightning.data.datasets import TensorImageDataset, TransformedSubset
from crl_lightning.losses import CompetingRatioLoss, CrossEntropyLoss

VARIANTS = ("plain loop + CE", "Lightning + CE", "Lightning + CRL")


class InMemoryData(ImageDataModule):
    """Random uint8 images in memory, augmented and normalised on the device (the in-memory CIFAR pipeline)."""

    stats = T.CIFAR10_STATS

    def __init__(self, images: torch.Tensor, targets: list[int], batch_size: int) -> None:
        super().__init__(batch_size=batch_size, augment=Augmentation(on_device=True))
        self.num_classes = 10
        self._data = TensorImageDataset(images, targets)

    def setup(self, stage: str | None = None) -> None:
        self.datasets["train"] = TransformedSubset(self._data)

    def batch_augment(self) -> tuple[int, bool] | None:
        return (4, True) if self._data.images.shape[-1] <= 64 else None


class GpuUtilisation:
    """Mean ``nvidia-smi`` GPU utilisation (percent) over the ``with`` block, or ``None`` without it."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.samples: list[float] = []
        self._stop = threading.Event()

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", "0"], capture_output=True, text=True, check=False).stdout.strip()
            with contextlib.suppress(ValueError):
                self.samples.append(float(out.splitlines()[0]))

    def __enter__(self) -> GpuUtilisation:
        if self.enabled:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def plain_loop(
    model: torch.nn.Module, data: InMemoryData, args: argparse.Namespace, device: torch.device
) -> tuple[float, float | None]:
    """Images/s and mean GPU utilisation of a hand-written training loop with ``F.cross_entropy``."""
    optimizer = torch.optim.SGD(model.parameters(), **PAPER_SGD)
    network = model.network if isinstance(model, ImageClassifier) else model
    augment = data.batch_augment()
    start = None
    with GpuUtilisation(device.type == "cuda") as gpu:
        for step, (images, target) in enumerate(data.train_dataloader()):
            if step == args.warmup:
                _sync(device)
                start = time.perf_counter()
            images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
            if augment is not None:
                images = random_crop_flip(images, *augment)
            images = normalize(images, *data.stats)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with _autocast(device, args.precision):
                loss = F.cross_entropy(network(images).float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - start), gpu.mean


class _Clock(L.Callback):
    """Wall time from the start of step ``warmup`` to the end of the last step (device synchronised)."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.warmup and not self.start:
            _sync(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == trainer.max_steps:  # after the last optimizer step, before the epoch's end
            _sync(self.device)
            self.end = time.perf_counter()


def lightning_run(
    model: ImageClassifier, data: InMemoryData, args: argparse.Namespace, device: torch.device
) -> tuple[float, float | None]:
    """Images/s and mean GPU utilisation of ``model`` (an `ImageClassifier`) under ``Trainer.fit``."""
    clock = _Clock(args.warmup, device)
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(
            accelerator=device.type, devices=1, precision="bf16-mixed" if args.precision == "bf16" else "32-true",
            max_steps=args.warmup + args.steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=root, callbacks=[clock],
        )
        with GpuUtilisation(device.type == "cuda") as gpu:
            trainer.fit(model, datamodule=data)
    return args.steps * args.batch_size / (clock.end - clock.start), gpu.mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--backbone", default="preact_resnet20")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per variant and repeat")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, caches)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="32", choices=("32", "bf16"))
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="torch.compile each variant's network once (its first warm-up steps compile it)")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error(f"--repeats: expected >= 5 (the table gives medians and ranges), got {args.repeats}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    torch.manual_seed(0)
    n = (args.warmup + args.steps) * args.batch_size
    images = torch.randint(0, 256, (n, 3, args.image_size, args.image_size), dtype=torch.uint8)
    data = InMemoryData(images, torch.randint(0, 10, (n,)).tolist(), args.batch_size)
    data.setup("fit")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no tips or "max_steps reached" lines
    # One model per variant, built (and compiled) once; every run starts from the same initial weights.
    models: dict[str, ImageClassifier] = {}
    for variant, criterion in zip(VARIANTS, (CrossEntropyLoss(), CrossEntropyLoss(), CompetingRatioLoss()),
                                  strict=True):
        torch.manual_seed(0)
        models[variant] = ImageClassifier(
            args.backbone, num_classes=10, criterion=criterion, channels_last=args.channels_last,
            compile=args.compile, test_report=False,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0),
        ).to(device)
    initial = {k: v.clone() for k, v in models[VARIANTS[0]].state_dict().items()}

    def run(variant: str) -> tuple[float, float | None]:
        models[variant].load_state_dict(initial)
        if variant == VARIANTS[0]:
            return plain_loop(models[variant], data, args, device)
        return lightning_run(models[variant], data, args, device)

    speed: dict[str, list[float]] = {v: [] for v in VARIANTS}
    util: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for repeat in range(args.repeats):
        order = VARIANTS[repeat % 3:] + VARIANTS[:repeat % 3]
        for variant in order:
            images_per_s, gpu = run(variant)
            speed[variant].append(images_per_s)
            if gpu is not None:
                util[variant].append(gpu)
    threads = torch.get_num_threads() if device.type == "cpu" else None
    print(f"## Training throughput: {args.backbone} at {args.image_size} px, batch {args.batch_size}, {args.device}"
          f"{f' ({threads} threads)' if threads else f' ({torch.cuda.get_device_name(device)})'}, precision "
          f"{args.precision}, channels_last {args.channels_last}, compile {args.compile}; {args.steps} timed steps "
          f"after {args.warmup}, {args.repeats} interleaved repeats\n")
    print("| variant | images/s (median) | min-max | GPU utilisation |")
    print("|---|---:|---|---:|")
    for v in VARIANTS:
        gpu = f"{statistics.fmean(util[v]):.0f} %" if util[v] else "n/a"
        print(f"| {v} | {statistics.median(speed[v]):,.0f} | {min(speed[v]):,.0f}-{max(speed[v]):,.0f} | {gpu} |")
    med = {v: statistics.median(speed[v]) for v in VARIANTS}
    print(f"\nLightning + CRL / plain loop (images/s): {med[VARIANTS[2]] / med[VARIANTS[0]]:.3f}")
    print(f"CRL step / CE step inside the Trainer (time per step): {med[VARIANTS[1]] / med[VARIANTS[2]]:.3f}")


if __name__ == "__main__":
    main()
