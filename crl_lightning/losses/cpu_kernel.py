"""The fused CPU kernel of the Competing Ratio Loss: built on first use, with a fallback.

On the CPU, a per-call cost of a few microseconds for every PyTorch op dispatched from Python adds up to
~70-80 us for the handful of (N,)-sized ops that the PyTorch-ops fused path runs around cross-entropy
(measured on a 2-core CPU), 40 % of cross-entropy's own time at (256, 1000) logits.
``csrc/fused_crl_cpu.cpp`` does the per-row work in one C++ loop around ATen's own log-softmax kernels
(see that file), so CRL costs what cross-entropy costs.

It is compiled with ``torch.utils.cpp_extension.load`` (ninja and a C++ compiler; ~30-60 s, once per torch
version, cached under ``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``). If the build
fails (no compiler, read-only cache), a warning says why once and the PyTorch-ops path is used: same values
and gradients, slower per call. ``CRL_LIGHTNING_CPU_KERNEL=0`` skips the build.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["ENV_VAR", "load_cpu_kernel"]

#: Environment variable: ``0`` disables the compiled CPU kernel (the PyTorch-ops path is used).
ENV_VAR = "CRL_LIGHTNING_CPU_KERNEL"
SOURCE = Path(__file__).parent / "csrc" / "fused_crl_cpu.cpp"
log = logging.getLogger(__name__)
_loaded: dict[str, ModuleType | None] = {}


def _extension_name() -> str:
    """Per-torch-version name, so that a torch upgrade builds a new module instead of loading a stale one."""
    version = "".join(ch if ch.isalnum() else "_" for ch in torch.__version__)
    return f"crl_lightning_fused_crl_cpu_torch{version}"


def load_cpu_kernel() -> ModuleType | None:
    """Return the compiled fused-CRL module, building it on the first call; None if it is disabled or failed.

    Returns:
        The extension module (its ``fused_crl(logits, target, weight, alpha, beta, ignore_index,
        reduction)`` takes (N, C) float32/float64 CPU logits, int64 (N,) target and optional (C,) weight;
        ``reduction`` 0/1/2 for none/mean/sum), or None when ``CRL_LIGHTNING_CPU_KERNEL=0`` or the build
        failed (a `UserWarning` gives the reason once per process).
    """
    try:
        return _loaded["module"]
    except KeyError:  # first call in this process
        _loaded["module"] = None
        if os.environ.get(ENV_VAR, "1") != "0":
            _loaded["module"] = _build()
        return _loaded["module"]


def _is_built(name: str) -> bool:
    """Whether torch's extension cache already holds a built ``name`` (then loading takes about a second)."""
    from torch.utils import cpp_extension

    try:  # torch's own cache location (TORCH_EXTENSIONS_DIR or its default); a private helper, hence the guard
        build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
    except (AttributeError, TypeError, OSError):
        return False
    return any(build_dir.glob(f"{name}*.so")) or any(build_dir.glob(f"{name}*.pyd"))


def _failure_reason(err: BaseException) -> str:
    """The line of a build error that says what went wrong (a compiler's or ninja's output is many lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:  # e.g. "/bin/sh: 1: c++: not found", "fused_crl_cpu.cpp:12: error: ..."
        if any(key in line.lower() for key in ("error:", "not found", "no such file", "is required")):
            return line
    return lines[0] if lines else type(err).__name__


def _build() -> ModuleType | None:
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_log.level
    cpp_log.setLevel(logging.ERROR)  # its import logs "No CUDA runtime is found" on CUDA builds without a GPU
    try:
        from torch.utils.cpp_extension import load
    finally:
        cpp_log.setLevel(level)

    name = _extension_name()
    if not _is_built(name):  # a warning-level line, so that a first call that pauses says why without any setup
        log.warning("crl_lightning: building the fused CRL CPU kernel (once per torch version, ~30-60 s)")
    try:
        return load(name=name, sources=[str(SOURCE)], extra_cflags=["-O3"], verbose=False)
    except (OSError, RuntimeError, ImportError, subprocess.SubprocessError) as err:
        warnings.warn(
            f"crl_lightning: could not build the fused CRL CPU kernel ({type(err).__name__}: {_failure_reason(err)}); "
            f"using the PyTorch-ops implementation (same values and gradients, ~70-170 us slower per call on a "
            f"2-core CPU). Set {ENV_VAR}=0 to skip this build.",
            stacklevel=5,  # the caller of competing_ratio_loss (through _cpu_kernel_for and load_cpu_kernel)
        )
        return None
