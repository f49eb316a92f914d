"""The throughput benchmarks and the GPU throughput script run (at toy size, on the CPU) and print their tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str], timeout: int = 600) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_dataloader_benchmark_prints_every_pipeline():
    out = _run([sys.executable, "benchmarks/dataloaders.py", "--images", "512", "--workers", "0", "1"])
    rows = re.findall(r"^\| (per-image, num_workers \d|batched \(in-memory tensor\)) \| ([\d,]+) \|", out, re.M)
    assert [r[0] for r in rows] == ["per-image, num_workers 0", "per-image, num_workers 1",
                                    "batched (in-memory tensor)"]
    assert all(int(r[1].replace(",", "")) > 0 for r in rows)


def test_gpu_throughput_script_runs_at_toy_size_on_the_cpu():
    out = _run(["scripts/gpu_throughput.sh", "--device", "cpu", "--precision", "32", "--no-compile",
                "--no-channels-last", "--backbone", "preact_resnet20", "--image-size", "8", "--batch-size", "4",
                "--steps", "1", "--warmup", "1"])
    assert out.count("| plain loop + CE |") == 2 and out.count("| Lightning + CRL |") == 2
    ratios = [float(x) for x in re.findall(r"Lightning \+ CRL / plain loop \(images/s\): ([\d.]+)", out)]
    assert len(ratios) == 2 and all(r > 0 for r in ratios)
    assert "gpu_throughput:" in out and "s in all" in out
