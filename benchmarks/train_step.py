"""Training throughput: ImageClassifier + CRL under Lightning's Trainer against a plain PyTorch loop, and CRL vs CE.

Usage: ``python benchmarks/train_step.py [--device cpu|cuda] [--backbone preact_resnet20] [--image-size 32]
[--batch-size 128] [--steps 20] [--warmup 3] [--repeats 5] [--precision 32|bf16] [--channels-last] [--compile]``
or ``python benchmarks/train_step.py --settings [fp32 bf16 fp32-cl ...] [--flops-per-cycle 32]``.

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

With ``--settings`` (all of `SETTINGS` when no name follows), the rows are instead Lightning + CRL under each
named speed setting (float32 or ``bf16-mixed`` autocast, ``-cl`` channels_last, ``-compile`` ``torch.compile``;
``--precision``/``--channels-last``/``--compile`` are then ignored; fp32 is always the reference), measured the
same way, interleaved, with the speed-up over fp32 and the step's share of the device's float32 peak: the FLOPs of
one training step (forward and backward of the network on one batch, counted once in float32 by
`torch.utils.flop_counter.FlopCounterMode`; a matmul or convolution of m x n x k counts 2mnk) times steps/s, over
(a) the theoretical peak ``cores x clock x --flops-per-cycle`` (CPU only: the clock is the largest ``cpu MHz`` of
/proc/cpuinfo; 32 float32 FLOP/cycle/core is two 256-bit FMA pipes, as on AMD Zen 4 and most AVX2/AVX-512 cores
with 2 FMA units: set it for another CPU) and (b) the rate of a 4096 x 4096 float32 matmul measured on the spot
(the attainable peak).
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
#: ``--settings`` rows: name -> (precision, channels_last, compile); the first is the reference.
SETTINGS = {
    "fp32": ("32", False, False),
    "bf16": ("bf16", False, False),
    "fp32-cl": ("32", True, False),
    "bf16-cl": ("bf16", True, False),
    "fp32-compile": ("32", False, True),
    "bf16-compile": ("bf16", False, True),
    "bf16-cl-compile": ("bf16", True, True),
}


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
    model: ImageClassifier, data: InMemoryData, args: argparse.Namespace, device: torch.device,
    precision: str | None = None,
) -> tuple[float, float | None]:
    """Images/s and mean GPU utilisation of ``model`` (an `ImageClassifier`) under ``Trainer.fit``.

    ``precision`` ("32" or "bf16") overrides ``args.precision``.
    """
    precision = precision or args.precision
    clock = _Clock(args.warmup, device)
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(
            accelerator=device.type, devices=1, precision="bf16-mixed" if precision == "bf16" else "32-true",
            max_steps=args.warmup + args.steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            default_root_dir=root, callbacks=[clock],
        )
        with GpuUtilisation(device.type == "cuda") as gpu:
            trainer.fit(model, datamodule=data)
    return args.steps * args.batch_size / (clock.end - clock.start), gpu.mean


def step_flops(backbone: str, batch_size: int, image_size: int) -> int:
    """FLOPs of one training step's forward and backward of ``backbone`` (float32, `FlopCounterMode`)."""
    from torch.utils.flop_counter import FlopCounterMode

    network = ImageClassifier(backbone, num_classes=10, test_report=False).backbone
    images = torch.randn(batch_size, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(network(images), torch.zeros(batch_size, dtype=torch.long)).backward()
    return counter.get_total_flops()


def cpu_peak_flops(flops_per_cycle: int) -> tuple[float, float] | None:
    """Theoretical float32 FLOP/s (cores x max ``cpu MHz`` x ``flops_per_cycle``) and its clock in GHz, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
    except OSError:
        return None
    if not mhz:
        return None
    return torch.get_num_threads() * max(mhz) * 1e6 * flops_per_cycle, max(mhz) / 1e3


def matmul_flops(device: torch.device, n: int = 4096, repeats: int = 5) -> float:
    """Best float32 FLOP/s of an ``n x n`` matmul on ``device`` over ``repeats`` (after one warm-up)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for i in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def compare_settings(data: InMemoryData, args: argparse.Namespace, device: torch.device) -> None:
    """Print images/s of Lightning + CRL under the ``args.settings`` of `SETTINGS`, interleaved, with FLOP shares."""
    names = list(dict.fromkeys(["fp32", *args.settings]))  # float32 is the reference; each setting once
    models: dict[str, ImageClassifier] = {}
    for name in names:
        _, channels_last, compile_ = SETTINGS[name]
        torch.manual_seed(0)
        models[name] = ImageClassifier(
            args.backbone, num_classes=10, criterion=CompetingRatioLoss(), channels_last=channels_last,
            compile=compile_, test_report=False,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0),
        ).to(device)
    initial = {k: v.clone() for k, v in models["fp32"].state_dict().items()}
    speed: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            models[name].load_state_dict(initial)
            speed[name].append(lightning_run(models[name], data, args, device, SETTINGS[name][0])[0])
    flops = step_flops(args.backbone, args.batch_size, args.image_size)
    peak = cpu_peak_flops(args.flops_per_cycle) if device.type == "cpu" else None
    gemm = matmul_flops(device)
    where = (f"cpu ({torch.get_num_threads()} threads)" if device.type == "cpu"
             else torch.cuda.get_device_name(device))
    print(f"## Lightning + CRL under each speed setting: {args.backbone} at {args.image_size} px, batch "
          f"{args.batch_size}, {where}; {args.steps} timed steps after {args.warmup}, {args.repeats} interleaved "
          f"repeats\n")
    peak_text = (f"theoretical float32 peak {peak[0] / 1e9:,.0f} GFLOP/s ({torch.get_num_threads()} cores x "
                 f"{peak[1]:.2f} GHz x {args.flops_per_cycle} FLOP/cycle)" if peak else "theoretical peak: n/a")
    print(f"One training step: {flops / 1e9:.3f} GFLOP (forward + backward, float32 count); {peak_text}; "
          f"4096 x 4096 float32 matmul {gemm / 1e9:,.0f} GFLOP/s\n")
    print("| setting | images/s (median) | min-max | speed-up vs fp32 | GFLOP/s | % of peak | % of matmul |")
    print("|---|---:|---|---:|---:|---:|---:|")
    reference = statistics.median(speed["fp32"])
    for name in names:
        med = statistics.median(speed[name])
        achieved = flops * med / args.batch_size
        share = f"{100 * achieved / peak[0]:.1f}" if peak else "n/a"
        print(f"| {name} | {med:,.0f} | {min(speed[name]):,.0f}-{max(speed[name]):,.0f} | {med / reference:.2f}x | "
              f"{achieved / 1e9:,.1f} | {share} | {100 * achieved / gemm:.1f} |")

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
    parser.add_argument("--settings", nargs="*", choices=tuple(SETTINGS), default=None,
                        help="compare Lightning + CRL under these speed settings (all without names; fp32 is always "
                             "the reference) instead of the three loops")
    parser.add_argument("--flops-per-cycle", type=int, default=32,
                        help="float32 FLOP per cycle per core for the theoretical CPU peak (with --settings)")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error(f"--repeats: expected >= 5 (the table gives medians and ranges), got {args.repeats}")
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps/--warmup: expected >= 1 timed and >= 0 warm-up steps, got {args.steps}/{args.warmup}")
    if args.flops_per_cycle < 1:
        parser.error(f"--flops-per-cycle: expected a positive integer, got {args.flops_per_cycle}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    torch.manual_seed(0)
    n = (args.warmup + args.steps) * args.batch_size
    images = torch.randint(0, 256, (n, 3, args.image_size, args.image_size), dtype=torch.uint8)
    data = InMemoryData(images, torch.randint(0, 10, (n,)).tolist(), args.batch_size)
    data.setup("fit")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no tips or "max_steps reached" lines
    if args.settings is not None:
        args.settings = args.settings or list(SETTINGS)
        compare_settings(data, args, device)
        return
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
