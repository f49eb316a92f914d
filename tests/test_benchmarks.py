"""The throughput benchmarks and the GPU throughput script run (at toy size, on the CPU) and print their tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_step_flops_of_preact_resnet20_match_the_closed_form():
    """Forward MACs of PreAct ResNet-20 at 32 px, by layer; a step is 2 FLOP/MAC forward, twice that backward,
    less the first convolution's input gradient (the images need none)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import train_step
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    first = 32 * 32 * 16 * 3 * 9
    stage1 = 6 * 32 * 32 * 16 * 16 * 9
    stage2 = 16 * 16 * 32 * 16 * 9 + 5 * 16 * 16 * 32 * 32 * 9 + 16 * 16 * 32 * 16  # + 1x1 shortcut
    stage3 = 8 * 8 * 64 * 32 * 9 + 5 * 8 * 8 * 64 * 64 * 9 + 8 * 8 * 64 * 32
    macs = first + stage1 + stage2 + stage3 + 64 * 10
    assert macs == 40_813_184
    assert train_step.step_flops("preact_resnet20", 1, 32) == 2 * macs + 4 * macs - 2 * first == 243_994_368
    assert train_step.step_flops("preact_resnet20", 3, 32) == 3 * 243_994_368


def test_train_step_settings_table_at_toy_size():
    out = _run([sys.executable, "benchmarks/train_step.py", "--settings", "bf16", "fp32-cl", "bf16",
                "--image-size", "8", "--batch-size", "4", "--steps", "1", "--warmup", "1"])
    row = r"^\| ([\w-]+) \| ([\d,]+) \| [\d,]+-[\d,]+ \| ([\d.]+)x \| ([\d.,]+) \| ([\d.]+|n/a) \| ([\d.]+) \|$"
    rows = re.findall(row, out, re.M)
    assert [r[0] for r in rows] == ["fp32", "bf16", "fp32-cl"]  # fp32, the reference, first; each setting once
    assert rows[0][2] == "1.00"
    assert all(int(r[1].replace(",", "")) > 0 for r in rows)
    assert "One training step: 0.061 GFLOP" in out  # 8 px: 1/16 of the 32-px step's 0.244 GFLOP per image, x 4
    assert re.search(r"\d+ cores x [\d.]+ GHz x 32 FLOP/cycle|theoretical peak: n/a", out)


@pytest.mark.parametrize(("args", "message"), [
    (["--steps", "0"], "--steps/--warmup: expected >= 1 timed and >= 0 warm-up steps, got 0/3"),
    (["--flops-per-cycle", "0"], "--flops-per-cycle: expected a positive integer, got 0"),
    (["--settings", "fp16"], "argument --settings: invalid choice: 'fp16'"),
])
def test_train_step_refuses_bad_arguments(args, message):
    result = subprocess.run([sys.executable, "benchmarks/train_step.py", *args], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 2 and message in result.stderr
