"""Forward+backward time and peak memory of CRL's fast path against ``F.cross_entropy``.

Usage: ``python benchmarks/losses.py [--runs 100] [--repeats 5] [--device cpu|cuda|all] [--compile] [--threads N]``

``competing_ratio_loss(logits, target)`` with hard targets (alpha 1.5, beta 1) runs its one fast path:
PyTorch's own ``F.cross_entropy(reduction="none")`` followed by a few elementwise ops on the per-element
losses. For each logits shape, classification (B, C) and one (N, C, H, W) segmentation map, the script
prints the median time of ``--runs`` forward+backward calls after warm-up for CE and CRL, the ratio
CRL/CE, the extra time per call in microseconds, and the peak memory of one call (CPU: the most bytes of
tensor storage alive at once, inputs and gradient included, followed op by op with a ``TorchDispatchMode``;
CUDA: ``max_memory_allocated`` above what was allocated before the call). The timing is repeated
``--repeats`` (>= 5) times: the table gives the medians over the repeats and, in brackets, the range of
the ratio. Then the extra time in the overhead regime
(C = 10, 100) as a share of a CIFAR ResNet training step (``preact_resnet20``, the smallest CIFAR ResNet,
batch 256: a conservative, i.e. short, step).

Modes: on the CPU the losses run eagerly (``--compile`` adds ``torch.compile``, which needs a C++ compiler
and compiles every shape anew: minutes on a small CPU; the CPU memory tracker does not see the buffers of
compiled code, so no memory is given there; on a CUDA build without a GPU, TorchInductor's import logs
torch's own "No CUDA runtime is found" warning, harmless for CPU code); on CUDA, when
``torch.cuda.is_available()``, eagerly and under ``torch.compile`` (CE compiled against CRL compiled).
Nothing touches CUDA otherwise: the PyTorch profiler is not used, as on a CUDA build without a GPU it
prints a CUDA error line (``gpuGetDeviceCount failed``).

Method: CE and CRL calls are interleaved (one of each per round), so that load from other processes
affects both alike, and their order alternates every round (a fixed order measured up to 15 % apart here:
allocator and cache state favour one position). On the CPU the script re-runs itself with glibc's malloc
tuned to keep freed buffers (``MALLOC_MMAP_THRESHOLD_=32 MiB``, ``MALLOC_TRIM_THRESHOLD_=4 GiB``).
Otherwise each call's multi-MiB tensors are mmap'ed, page-faulted and unmapped anew, and which loss pays
more page faults depends on the order of allocations, not on its arithmetic: the same cross-entropy
measured 2.7 ms or 4.7 ms at B=256, C=10000 depending only on ``.mean()`` vs ``.sum()`` after it. With
the tuned allocator (or jemalloc/tcmalloc, or PyTorch's CUDA caching allocator) buffers are reused, as in
a training loop. ``--system-malloc`` keeps the default allocator. ``--threads N`` sets PyTorch's CPU
threads: on a machine shared with other jobs, use fewer threads than free cores, as a parallel region
waits for its slowest thread (with 2 threads on 2 cores, one of them busy, every call took ~24 ms).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from crl_lightning.losses import competing_ratio_loss
from crl_lightning.models import create_backbone

#: Logits shapes: (B, C) classification, and (N, C, H, W) segmentation (21 Pascal VOC classes).
SHAPES = [(256, 10), (256, 100), (256, 1000), (256, 10000), (64, 100000), (8, 21, 128, 128)]
Loss = Callable[[Tensor, Tensor], Tensor]


def cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    return F.cross_entropy(logits, target)


def crl(logits: Tensor, target: Tensor) -> Tensor:
    return competing_ratio_loss(logits, target, 1.5, 1.0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_times_us(fns: dict[str, Loss], logits: Tensor, target: Tensor, runs: int,
                    device: torch.device) -> dict[str, float]:
    """Median wall time in microseconds of ``fn(logits, target).backward()`` for each ``fn``.

    The calls are interleaved (one of each per round) and the order rotates every round; the first
    ``max(5, runs // 5)`` rounds are warm-up (and, under ``torch.compile``, compilation) and not recorded.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    warmup = max(5, runs // 5)
    for i in range(warmup + runs):
        for name in names[i % len(names):] + names[:i % len(names)]:
            logits.grad = None
            _sync(device)
            start = time.perf_counter()
            fns[name](logits, target).backward()
            _sync(device)
            if i >= warmup:
                times[name].append((time.perf_counter() - start) * 1e6)
    return {name: statistics.median(t) for name, t in times.items()}


class PeakLiveBytes(TorchDispatchMode):
    """The most bytes of tensor storage alive at once, checked after every op dispatched while active.

    Storages are followed by weak reference (a view shares its base's entry); ``tensors`` alive before
    (the inputs) are counted from the start.
    """

    def __init__(self, *tensors: Tensor) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        for tensor in tensors:
            self._add(tensor)
        self.peak = self._current()

    def _add(self, tensor: Tensor) -> None:
        storage = tensor.untyped_storage()
        self.live[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())

    def _current(self) -> int:
        self.live = {ptr: entry for ptr, entry in self.live.items() if not entry[0].expired()}
        return sum(nbytes for _, nbytes in self.live.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor):
                self._add(leaf)
        self.peak = max(self.peak, self._current())
        return out


def peak_bytes(fn: Loss, logits: Tensor, target: Tensor, device: torch.device) -> int:
    """Peak bytes live during one forward+backward (CPU: inputs and the gradient included)."""
    logits.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(logits, target).backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with PeakLiveBytes(logits, target) as tracker:
        fn(logits, target).backward()
    return tracker.peak


def resnet_step_us(device: torch.device, batch: int = 256, runs: int = 3) -> float:
    """Median time of one forward+backward of preact_resnet20 on (batch, 3, 32, 32) with CE."""
    model = create_backbone("preact_resnet20", 10).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)
    t = torch.randint(0, 10, (batch,), device=device)
    times = []
    for i in range(runs + 1):
        model.zero_grad(set_to_none=True)
        _sync(device)
        start = time.perf_counter()
        F.cross_entropy(model(x), t).backward()
        _sync(device)
        if i:
            times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times)


def measure(shape: tuple[int, ...], device: torch.device, compiled: bool, runs: int, repeats: int) -> dict:
    """Time and peak memory of CE and CRL on logits of ``shape``; ``repeats`` interleaved timings."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(shape, generator=g).to(device).requires_grad_()
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=g).to(device)
    fns: dict[str, Loss] = {"CE": cross_entropy, "CRL": crl}
    if compiled:
        torch.compiler.reset()  # a fresh compilation per shape, away from the recompilation limit
        fns = {name: torch.compile(fn, dynamic=False) for name, fn in fns.items()}
    timings = [median_times_us(fns, logits, target, runs, device) for _ in range(repeats)]
    ratios = [t["CRL"] / t["CE"] for t in timings]
    memory = not (compiled and device.type == "cpu")  # the CPU tracker does not see compiled code's buffers
    return {
        "CE": statistics.median(t["CE"] for t in timings),
        "CRL": statistics.median(t["CRL"] for t in timings),
        "extra": statistics.median(t["CRL"] - t["CE"] for t in timings),
        "ratio": statistics.median(ratios),
        "ratio_range": (min(ratios), max(ratios)),
        "CE_mem": peak_bytes(fns["CE"], logits, target, device) if memory else None,
        "CRL_mem": peak_bytes(fns["CRL"], logits, target, device) if memory else None,
    }


def run(device: torch.device, compiled: bool, runs: int, repeats: int) -> dict[int, float]:
    """Print the table of one device and mode; return the extra time per call at C = 10 and 100."""
    threads = torch.get_num_threads()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{threads} thread{'s' * (threads > 1)}"
    mode = "torch.compile" if compiled else "eager"
    print(f"\n## {device.type} ({name}), {mode}: forward+backward, float32, median of {runs} interleaved runs "
          f"after warm-up, {repeats} repeats, torch {torch.__version__}\n")
    print("| logits | CE (us) | CRL (us) | CRL / CE [range] | extra (us) | CE peak (MiB) | CRL peak (MiB) "
          "| memory CRL / CE |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    extra_small = {}
    for shape in SHAPES:
        m = measure(shape, device, compiled, runs, repeats)
        low, high = m["ratio_range"]
        if m["CE_mem"] is None:
            memory = "- | - | -"
        else:
            memory = f"{m['CE_mem'] / 2**20:.2f} | {m['CRL_mem'] / 2**20:.2f} | {m['CRL_mem'] / m['CE_mem']:.3f}"
        print(f"| {' x '.join(map(str, shape))} | {m['CE']:,.0f} | {m['CRL']:,.0f} | {m['ratio']:.3f} "
              f"[{low:.3f}-{high:.3f}] | {m['extra']:+,.0f} | {memory} |", flush=True)
        if len(shape) == 2 and shape[1] <= 100:
            extra_small[shape[1]] = m["extra"]
    return extra_small


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="timed runs per cell and repeat (>= 50)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of each timing (>= 5)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on the CPU")
    parser.add_argument("--system-malloc", action="store_true", help="do not tune glibc malloc (see module doc)")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads (default: PyTorch's)")
    args = parser.parse_args()
    if args.runs < 50:
        parser.error(f"--runs: expected >= 50 timed runs per cell, got {args.runs}")
    if args.repeats < 5:
        parser.error(f"--repeats: expected >= 5 repeats, got {args.repeats}")
    if not args.system_malloc and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(4 * 2**30)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    plans = []
    if args.device in ("cpu", "all"):
        plans += [(torch.device("cpu"), False)] + ([(torch.device("cpu"), True)] if args.compile else [])
    if args.device in ("cuda", "all"):
        if torch.cuda.is_available():
            plans += [(torch.device("cuda"), False), (torch.device("cuda"), True)]
        else:
            print("\ntorch.cuda.is_available() is False: no CUDA tables.")
    for device, compiled in plans:
        extra_small = run(device, compiled, args.runs, args.repeats)
        if compiled:
            continue
        step = resnet_step_us(device)
        print(f"\nOverhead regime, {device.type}: one preact_resnet20 training step (B=256, 32x32, CE) takes "
              f"{step / 1e3:,.1f} ms.\n")
        print("| C | CRL extra time per call (us) | share of the ResNet step |")
        print("|---:|---:|---:|")
        for num_classes, extra in extra_small.items():
            print(f"| {num_classes} | {extra:+.1f} | {100 * extra / step:.4f} % |")


if __name__ == "__main__":
    main()
