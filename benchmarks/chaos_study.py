"""Chaos test of ``crl study``: SIGKILL at random moments, restart with the same command, same results.

Usage: ``python benchmarks/chaos_study.py [--kills 10] [--epochs 2] [--seeds 2] [--train-batches 4]
[--random-seed 0] [--out DIR]``

A small digits study (criteria ``crl`` and ``ce`` x ``--seeds`` seeds, ``--epochs`` epochs of
``--train-batches`` batches, ``deterministic: true`` on the CPU, one thread) runs once uninterrupted, then again
in another folder, where it is killed with SIGKILL (the whole process group) after a random delay (seeded by
``--random-seed``) ``--kills`` times, restarted each time with the same command, and finally left to complete.
Before every restart every result file under the study folder is checked: each ``*.json`` parses, each
``*.ckpt`` is a complete checkpoint (`crl_lightning.runs.check_checkpoint`), each ``history.csv`` /
``confusion_matrix.csv`` / ``predictions.csv`` has whole rows of its header's width, each ``*.png`` ends with
its ``IEND`` chunk. Temporary files of writes a kill cut short (``.<name>.<random>.tmp``) are counted apart:
they are never read as results. Files that Lightning's loggers write themselves (``metrics.csv``,
``hparams.yaml``, ``config.yaml``) are not checked.

At the end the test metrics of every run in the two ``study.json`` files are compared: they must be equal.
The table printed gives the kills survived, the restarts, the runs resumed from a ``last.ckpt``, the stale
study locks taken over, the files checked and found truncated (must be 0), and the metric difference (must be
0). The exit code is 1 when a file was truncated, a metric differs or the study did not complete.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "configs" / "digits_crl.yaml"
#: Result CSVs the package writes (Lightning's CSVLogger ``metrics.csv`` is its own and not atomic).
RESULT_CSVS = ("history.csv", "confusion_matrix.csv", "predictions.csv")
_PNG_END = b"IEND\xaeB`\x82"


def study_command(out: Path, epochs: int, seeds: int, train_batches: int) -> list[str]:
    """The ``crl study`` command line of the benchmark (``python -m crl_lightning``, this interpreter's crl)."""
    return [sys.executable, "-m", "crl_lightning", "study", "--config", str(DIGITS), "--criteria", "crl", "ce",
            "--seeds", f"0-{seeds - 1}", "--out", str(out), "--trainer.max_epochs", str(epochs),
            "--trainer.limit_train_batches", str(train_batches), "--trainer.limit_val_batches", "2",
            "--trainer.enable_progress_bar", "false", "--model.init_args.lr_scheduler.init_args.milestones",
            f"[{max(1, epochs // 2)}]"]


def truncated_files(folder: Path) -> tuple[int, list[str], int]:
    """(result files checked, those that are incomplete, temporary files left) under ``folder``."""
    from crl_lightning.cli import check_checkpoint
    from crl_lightning.runs import TEMP_SUFFIX

    checked, bad, temporary = 0, [], 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX):
            temporary += 1
            continue
        kind = path.suffix
        if kind not in (".json", ".ckpt", ".png") and path.name not in RESULT_CSVS:
            continue
        checked += 1
        try:
            if kind == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif kind == ".ckpt":
                check_checkpoint(path)
            elif kind == ".png":
                if not path.read_bytes().endswith(_PNG_END):
                    raise ValueError("no IEND chunk at the end")
            else:
                text = path.read_text(encoding="utf-8")
                rows = list(csv.reader(io.StringIO(text)))
                if not text.endswith("\n") or len({len(r) for r in rows}) > 1:
                    raise ValueError("a partial row")
        except (OSError, ValueError) as err:
            bad.append(f"{path}: {err}")
    return checked, bad, temporary


def run_metrics(study_json: Path) -> dict[tuple[str, int], dict[str, float]]:
    """(criterion, seed) -> the run's test metrics, from a ``study.json``."""
    study = json.loads(study_json.read_text(encoding="utf-8"))
    return {(r["criterion"], r["seed"]): r["metrics"] for r in study["runs"]}


def chaos(args: argparse.Namespace) -> dict[str, object]:
    """Run the uninterrupted and the killed study; return the figures of the table."""
    out = Path(args.out or tempfile.mkdtemp(prefix="crl_chaos_"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # same float sums in every process
    env.pop("CRL_TRACEBACK", None)
    run = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, "env": env, "cwd": out}
    out.mkdir(parents=True, exist_ok=True)

    start = time.monotonic()
    clean = subprocess.run(study_command(out / "clean", args.epochs, args.seeds, args.train_batches), **run,
                           check=False)
    clean_s = time.monotonic() - start
    if clean.returncode != 0:
        raise SystemExit(f"chaos_study: expected the uninterrupted study to complete, got exit code "
                         f"{clean.returncode}:\n{clean.stdout[-3000:]}")

    rng = random.Random(args.random_seed)
    # Every attempt first pays the start-up (imports) again, then makes at most (delay - start-up) of progress: with
    # kills x (max_delay - start-up) under the clean study's work, every kill lands before the study can end, on a
    # quiet machine as on a loaded one, and the kills spread from the start-up over the whole study.
    begin = time.monotonic()
    subprocess.run([sys.executable, "-m", "crl_lightning", "study", "--help"], **run, check=False)
    startup_s = time.monotonic() - begin
    work_s = max(clean_s - startup_s, 1.0)
    max_delay = args.max_delay or startup_s + 0.8 * work_s / max(args.kills, 1)
    min_delay = min(args.min_delay, max_delay / 2)
    command = study_command(out / "chaos", args.epochs, args.seeds, args.train_batches)
    kills = restarts = resumed = takeovers = checked = temporary = 0
    truncated: list[str] = []
    start = time.monotonic()
    while True:
        process = subprocess.Popen(command, **run, start_new_session=True)
        restarts += 1
        delay = rng.uniform(min_delay, max_delay) if kills < args.kills else None
        try:
            output = process.communicate(timeout=delay)[0]
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output = process.communicate()[0]
            kills += 1
        resumed += output.count("Restoring states from the checkpoint path")
        takeovers += output.count("taking over the stale lock")
        n, bad, temporary = truncated_files(out / "chaos")
        checked += n
        truncated += bad
        if process.returncode == 0:
            break
        if process.returncode not in (-signal.SIGKILL,):
            raise SystemExit(f"chaos_study: expected the restarted study to run or be killed, got exit code "
                             f"{process.returncode}:\n{output[-3000:]}")
    chaos_s = time.monotonic() - start

    expected, got = run_metrics(out / "clean" / "study.json"), run_metrics(out / "chaos" / "study.json")
    differing, largest = 0, 0.0
    for key, metrics in expected.items():
        for name, value in metrics.items():
            other = got.get(key, {}).get(name)
            if other != value:
                differing += 1
                if isinstance(value, float) and isinstance(other, float):
                    largest = max(largest, abs(other - value))
                else:
                    largest = float("inf")
    return {"kills": kills, "restarts": restarts, "resumed": resumed, "takeovers": takeovers, "checked": checked,
            "truncated": truncated, "temporary": temporary, "runs": len(expected),
            "metrics": sum(len(m) for m in expected.values()), "differing": differing, "largest": largest,
            "clean_s": clean_s, "chaos_s": chaos_s, "out": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs before the study may complete")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 (x criteria crl, ce)")
    parser.add_argument("--train-batches", type=int, default=4, help="training batches per epoch")
    parser.add_argument("--random-seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--min-delay", type=float, default=1.0,
                        help="shortest time (s) before a kill (at most half the longest; kills before the study "
                             "takes its lock land in the start-up)")
    parser.add_argument("--max-delay", type=float, default=None,
                        help="longest time (s) before a kill (default: the start-up time plus 0.8 x the clean "
                             "study's work / kills, so the study cannot complete before every kill)")
    parser.add_argument("--out", default=None, help="working folder (default: a new temporary folder)")
    args = parser.parse_args(argv)
    if args.kills < 0 or args.epochs < 1 or args.seeds < 1:
        parser.error(f"expected --kills >= 0, --epochs >= 1, --seeds >= 1, got {args.kills}, {args.epochs}, "
                     f"{args.seeds}")
    r = chaos(args)
    rows = [
        ("kills survived (SIGKILL at a random moment)", r["kills"]),
        ("restarts with the same command", r["restarts"]),
        ("runs resumed from a last.ckpt", r["resumed"]),
        ("stale study locks taken over", r["takeovers"]),
        ("result files checked between restarts", r["checked"]),
        ("files found truncated", len(r["truncated"])),
        ("temporary files left by kills (never read as results)", r["temporary"]),
        (f"test metrics compared ({r['runs']} runs)", r["metrics"]),
        ("metrics different from the uninterrupted study", r["differing"]),
        ("largest difference", r["largest"]),
        ("wall time: uninterrupted / killed study (s)", f"{r['clean_s']:.0f} / {r['chaos_s']:.0f}"),
    ]
    print(f"crl study chaos test: digits, criteria crl ce, {args.seeds} seeds, {args.epochs} epochs of "
          f"{args.train_batches} batches, CPU, deterministic, kill moments seeded {args.random_seed}")
    print("\n| what | value |\n|---|---:|")
    for what, value in rows:
        print(f"| {what} | {value} |")
    for line in r["truncated"]:
        print(f"truncated: {line}")
    print(f"\nfolders: {r['out']}/clean, {r['out']}/chaos")
    return 1 if r["truncated"] or r["differing"] or r["kills"] < args.kills else 0


if __name__ == "__main__":
    sys.exit(main())
