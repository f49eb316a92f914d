"""Start-up time: ``import crl_lightning.losses`` against ``import torch``, ``crl --help`` against Lightning's import.

Usage: ``python benchmarks/startup.py [--repeats 5]``

Each command runs as a fresh Python process (wall-clock time from start to exit, as a user sees it):

* ``import torch`` and ``import crl_lightning.losses``: what a loss costs a kornia or timm user (goal: the
  loss import takes at most 1.15x torch's);
* ``python -c "import lightning.pytorch"`` and ``crl --help``: what the command costs over the framework it
  runs on (goal: at most 1.15x).

Every command runs once untimed (file caches), then ``--repeats`` (>= 5) rounds run the four commands
interleaved, in an order that rotates every round, so that a change of machine load hits all of them. The
table gives each command's median and min-max, and each ratio as the median of the per-round ratios and
their range.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: The ``crl`` console script beside this interpreter, else ``python -m crl_lightning`` (the same command).
_SCRIPT = Path(sys.executable).with_name("crl")
_CRL = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "crl_lightning"]
COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "import crl_lightning.losses": [sys.executable, "-c", "import crl_lightning.losses"],
    "import lightning.pytorch": [sys.executable, "-c", "import lightning.pytorch"],
    "crl --help": [*_CRL, "--help"],
}
#: (numerator, denominator, goal) of each ratio reported.
RATIOS = (("import crl_lightning.losses", "import torch", 1.15), ("crl --help", "import lightning.pytorch", 1.15))


def run_once(args: list[str]) -> float:
    """Seconds from the start of ``args`` to its exit (output discarded).

    Raises:
        RuntimeError: the command failed (its stderr's end is in the message).
    """
    start = time.perf_counter()
    done = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (>= 5)")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error(f"--repeats: expected >= 5, got {args.repeats}")
    names = list(COMMANDS)
    for name in names:
        run_once(COMMANDS[name])
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            times[name].append(run_once(COMMANDS[name]))

    import lightning
    import torch

    print(f"{datetime.date.today().isoformat()}, {platform.machine()} with {os.cpu_count()} CPU cores, "
          f"Python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}; "
          f"{args.repeats} interleaved rounds\n")
    print("| command | seconds (median) | min-max |")
    print("|---|---:|---|")
    for name in names:
        print(f"| `{name}` | {statistics.median(times[name]):.2f} | {min(times[name]):.2f}-{max(times[name]):.2f} |")
    print("\n| ratio | median [range over rounds] | goal |")
    print("|---|---:|---:|")
    for top, bottom, goal in RATIOS:
        ratios = [a / b for a, b in zip(times[top], times[bottom], strict=True)]
        print(f"| `{top}` / `{bottom}` | {statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}] "
              f"| <= {goal} |")


if __name__ == "__main__":
    main()
