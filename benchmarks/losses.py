"""Forward+backward time and peak memory of CRL (fused and reference) vs ``F.cross_entropy``.

Usage: ``python benchmarks/losses.py [--runs 200] [--device cpu|cuda]``

Prints one table per device: median time of ``--runs`` (>= 50) forward+backward calls after warm-up, the
ratio CRL/CE, the absolute extra time per call in microseconds, and the peak memory allocated during
one call (CPU: from the PyTorch profiler's allocation events; CUDA: ``max_memory_allocated``).
"CRL fused" is what ``competing_ratio_loss`` runs by default: on the CPU the compiled kernel
(``crl_lightning/losses/csrc``; built on first use), elsewhere the PyTorch-ops fused path, which the CPU
table also shows on its own row ("CRL fused, PyTorch ops": the fallback when the kernel cannot be built).
Then the extra time in the overhead regime (C = 10, 100) as a share of a CIFAR ResNet training step
(``preact_resnet20``, the smallest CIFAR ResNet, batch 256: a conservative, i.e. short, step).

On the CPU the script re-runs itself with glibc's malloc tuned to keep freed buffers
(``MALLOC_MMAP_THRESHOLD_=32 MiB``, ``MALLOC_TRIM_THRESHOLD_=4 GiB``). Otherwise each call's
multi-MiB tensors are mmap'ed, page-faulted and unmapped anew, and which loss pays more page faults
depends on the order of allocations, not on its arithmetic: the same cross-entropy measured 2.7 ms
or 4.7 ms at B=256, C=10000 depending only on ``.mean()`` vs ``.sum()`` after it. With the tuned
allocator (or jemalloc/tcmalloc, or PyTorch's CUDA caching allocator) buffers are reused, as in a
training loop. ``--system-malloc`` keeps the default allocator.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.profiler._memory_profiler import MemoryProfileTimeline

from crl_lightning.losses import competing_ratio_loss
from crl_lightning.losses.cpu_kernel import load_cpu_kernel
from crl_lightning.losses.functional import _crl_fused
from crl_lightning.models import create_backbone

GRID = [(256, 10), (256, 100), (256, 1000), (256, 10000), (64, 100000)]

LOSSES = {
    "CE": lambda z, t: F.cross_entropy(z, t),
    "CRL fused": lambda z, t: competing_ratio_loss(z, t, 1.5, 1.0, fused=True),
    "CRL reference": lambda z, t: competing_ratio_loss(z, t, 1.5, 1.0, fused=False),
}
#: The PyTorch-ops fused path called directly (the default on non-CPU devices; on the CPU, the fallback).
OPS_PATH = {"CRL fused, PyTorch ops": lambda z, t: _crl_fused(z, t, 1.5, 1.0, None, -100, "mean", True)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_times_us(fns: dict, logits, target, runs: int, device: torch.device) -> dict[str, float]:
    """Median wall time in microseconds of ``fn(logits, target).backward()`` for each ``fn``.

    The calls are interleaved (one of each per round) so that load from other processes affects all
    losses alike, and the order rotates every round (a fixed order measured up to 15 % apart here: allocator
    and cache state favour one position). `run` times each CRL variant against cross-entropy alone: with
    more losses in one rotation, the cross-entropy code stays warm in the CPU caches because the other CRL
    variants run it too, which no training step does.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for i in range(max(5, runs // 5) + runs):
        for name in names[i % len(names):] + names[:i % len(names)]:
            fn = fns[name]
            logits.grad = None
            _sync(device)
            start = time.perf_counter()
            fn(logits, target).backward()
            _sync(device)
            if i >= max(5, runs // 5):  # warm-up rounds are not recorded
                times[name].append((time.perf_counter() - start) * 1e6)
    return {name: statistics.median(t) for name, t in times.items()}


def peak_bytes(fn, logits, target, device: torch.device) -> int:
    """Peak bytes live during one forward+backward (CPU: inputs and the gradient included)."""
    logits.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(logits, target).backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn(logits, target).backward()
    # The profiler's memory timeline (the data behind `export_memory_timeline`): bytes live per category.
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    return max(sum(s) for s in sizes)


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


def run(device: torch.device, runs: int) -> None:
    variants = {name: fn for name, fn in LOSSES.items() if name != "CE"}
    if device.type == "cpu":
        variants.update(OPS_PATH)
        fused = "compiled CPU kernel" if load_cpu_kernel() is not None else "PyTorch ops (the kernel did not build)"
    else:
        fused = "PyTorch ops"
    print(f"\n## {device.type}: forward+backward, float32, median of {runs} runs after warm-up, "
          f"{torch.get_num_threads()} threads; CRL fused = {fused}\n")
    print("Each loss is timed interleaved with its own cross-entropy calls (CE column).\n")
    print("| B | C | loss | time (us) | CE (us) | ratio vs CE | extra (us) | peak memory (MiB) | memory vs CE |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    extra_small = {}
    ce = LOSSES["CE"]
    for batch, num_classes in GRID:
        g = torch.Generator().manual_seed(0)
        logits = torch.randn(batch, num_classes, generator=g).to(device).requires_grad_()
        target = torch.randint(0, num_classes, (batch,), generator=g).to(device)
        ce_mem = peak_bytes(ce, logits, target, device)
        for name, fn in variants.items():
            medians = median_times_us({"CE": ce, name: fn}, logits, target, runs, device)
            t_us, ce_us, mem = medians[name], medians["CE"], peak_bytes(fn, logits, target, device)
            print(f"| {batch} | {num_classes} | {name} | {t_us:,.0f} | {ce_us:,.0f} | {t_us / ce_us:.3f} "
                  f"| {t_us - ce_us:+,.0f} | {mem / 2**20:.2f} | {mem / ce_mem:.3f} |")
            if name == "CRL fused" and num_classes <= 100:
                extra_small[num_classes] = t_us - ce_us
    step = resnet_step_us(device)
    print(f"\nOverhead regime: one preact_resnet20 training step (B=256, 32x32, CE) takes {step / 1e3:,.1f} ms.\n")
    print("| C | fused CRL extra time per call (us) | share of the ResNet step |")
    print("|---:|---:|---:|")
    for num_classes, extra in extra_small.items():
        print(f"| {num_classes} | {extra:+.1f} | {100 * extra / step:.4f} % |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="timed runs per cell (>= 50)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--system-malloc", action="store_true", help="do not tune glibc malloc (see module doc)")
    args = parser.parse_args()
    if args.runs < 50:
        parser.error(f"--runs: expected >= 50 timed runs per cell, got {args.runs}")
    if not args.system_malloc and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(4 * 2**30)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    devices = [torch.device("cpu")] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for device in devices:
        run(device, args.runs)


if __name__ == "__main__":
    main()
