"""``crl study``: one config x several criteria x several seeds, paired, with a table, tests and curves.

    crl study --config BASE.yaml [--config OVERLAY.yaml ...] --criteria ce crl [my_loss.yaml ...]
              --seeds 0-4 --out runs/my_study [any other --key value, passed to every run]

Every (criterion, seed) is an ordinary ``crl fit --test_after_fit true`` in its own folder
``<out>/<criterion>/seed_<seed>`` with ``--seed_everything seed --data.init_args.seed seed``. So for a given
seed every criterion gets the same data split and subset, the same initial weights and the same data order
(and augmentations): the runs are *paired*, and the study checks it (a fingerprint of the initial weights
and of the first training batch, per run). A criterion is a registry name (`crl_lightning.losses.list_criteria`,
with that class's default arguments: ``crl`` is CRL with alpha 1.5, beta 1; ``ce`` plain cross-entropy) or a
YAML overlay that sets ``model.init_args.criterion`` (e.g. ``examples/configs/overlays/focal.yaml``).

The study is resumable: a finished run (its ``run.json`` says ``done``) of the same experiment, seed and fold
(`crl_lightning.runs`) is reused; an interrupted run is resumed from its ``last.ckpt`` when it saved one, else
redone from scratch. A run folder of another experiment is refused, naming the keys that changed
(``data.init_args.batch_size: 128 -> 16``). One command at a time uses a study folder: ``<out>/.crl.lock``
(`crl_lightning.runs.folder_lock`) refuses a second one, naming the first. Result files are written
atomically, so a half-written file is never read as a result. At the end it writes ``<out>/study.json``,
``<out>/study.md`` and ``<out>/curves.png`` and prints the tables:

* per criterion, mean ± sample std over seeds of the test top-1 error (%), NLL (nats) and ECE (fraction);
* paired differences against the first criterion (``other - first`` per seed, so negative = lower than the
  first), with a 95 % t confidence interval, a paired t-test and a Wilcoxon signed-rank p-value
  (`crl_lightning.statistics.paired_comparison`);
* the same NLL and ECE after temperature scaling (``test_nll_ts``, ``test_ece_ts``: one T per run fitted on
  the validation split, see `crl_lightning.ImageClassifier`), and each run's T;
* with several tests in the paired table (criteria x metrics), Holm-adjusted p-values beside the raw ones
  (`crl_lightning.statistics.holm_adjust`, t-tests and Wilcoxon tests as two families); with fewer than 3
  pairs, "n < 3: no test is meaningful" instead of p-values and intervals;
* power lines: the smallest difference the paired t-test detects at 80 % power with this n (from the observed
  SD of the differences) and the seeds needed to detect the observed difference;
* "where it helps": per criterion, the 3 classes whose test error differs most from the first criterion's;
* ``curves.png``: validation top-1 error per epoch (from each run's ``history.csv``), a thin line per seed
  and a bold mean per criterion, as the paper's Fig. 3; ``paired_differences.png``: one row per criterion x
  metric, a dot per seed's difference, the zero line and the mean with its 95 % CI.

``--budget-min M`` fits the study into windows of wall time (a GPU lent for a few minutes): before each run
still to do, if the minutes so far plus the longest run so far would pass M, it stops, writes the partial
``study.json``/``study.md`` (marked incomplete) and exits with code 3 (`INCOMPLETE_EXIT_CODE`); the same
command again reuses the finished runs and goes on. The first epoch's extra time over the later ones of the
first run trained (``torch.compile`` and warm-up, from ``history.csv``) is printed and kept in ``study.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from crl_lightning.runs import (
    RecordError,
    config_changes,
    experiment_id,
    experiment_settings,
    folder_lock,
    newest_last_checkpoint,
    read_history,
    read_json,
    read_record,
    same_experiment,
    utc_now,
    write_json,
    write_text_atomic,
)
from crl_lightning.study_report import (
    METRICS,
    format_study,
    overhead_line,
    per_class_differences,
    save_curves,
    save_paired_differences,
    study_report,
)

__all__ = [
    "INCOMPLETE_EXIT_CODE",
    "METRICS",
    "PairingFingerprint",
    "criterion_arguments",
    "first_epoch_overhead",
    "main",
    "parse_seeds",
    "per_class_differences",
    "run_study",
    "study_report",
]

#: Exit code of ``crl study`` when it stopped at ``--budget-min`` with runs left (run it again to resume).
INCOMPLETE_EXIT_CODE = 3
#: Version tag of ``study.json``.
STUDY_FORMAT = "crl_lightning.study/1"
#: The run marker of a study's run folder (`run_one`) and its version tag.
RUN_FILE = "run.json"
RUN_FORMAT = "crl_lightning.study_run/2"
MAX_SEEDS = 1000


def parse_seeds(specs: Sequence[str]) -> list[int]:
    """Seeds from ``["0-4"]``, ``["0", "2", "7"]`` or ``["0-2,5"]`` (ranges inclusive), in the order given.

    Raises:
        ValueError: a malformed item, a decreasing range, a repeated seed, or more than `MAX_SEEDS` seeds.
    """
    seeds: list[int] = []
    for spec in specs:
        for item in filter(None, spec.split(",")):
            match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", item)
            if match is None:
                raise ValueError(f"--seeds: expected integers or ranges like 0-4, got {item!r}")
            low, high = int(match[1]), int(match[2] or match[1])
            if high < low:
                raise ValueError(f"--seeds: expected an increasing range, got {item!r}")
            if len(seeds) + high - low + 1 > MAX_SEEDS:  # checked before the list is built
                raise ValueError(f"--seeds: expected at most {MAX_SEEDS} seeds (each is a training run per "
                                 f"criterion), got more with {item!r}")
            seeds += range(low, high + 1)
    repeated = sorted(seed for seed, n in Counter(seeds).items() if n > 1)
    if repeated:
        raise ValueError(f"--seeds: expected distinct seeds, got {repeated} more than once")
    if not seeds:
        raise ValueError("--seeds: expected at least one seed, got none")
    return seeds


def criterion_arguments(spec: str) -> tuple[str, list[str]]:
    """The run-folder label and the ``crl fit`` arguments that select criterion ``spec``.

    Args:
        spec: a registry name (``crl``, ``ce``, ...: the class with *all* its default arguments, whatever
            the base config's criterion had) or the path of a YAML overlay (label: the file's stem).

    Raises:
        ValueError: neither a registry name nor an existing ``.yaml``/``.yml`` file; `ConfigError` (a ValueError)
            for an overlay that is not valid YAML, naming the file and line.
    """
    import inspect

    from crl_lightning.losses import list_criteria
    from crl_lightning.losses.registry import criterion_class

    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ValueError(f"--criteria: expected a registry name or an overlay file, got {spec} (no such file)")
        from crl_lightning.config_checks import check_config_files

        check_config_files(["--config", str(path)])  # before any run trains: the file and line of a YAML error
        return path.stem, ["--config", str(path)]
    if spec not in list_criteria():
        raise ValueError(f"--criteria: expected a registry name {list_criteria()} or a .yaml overlay, got {spec!r}")
    cls = criterion_class(spec)
    defaults = {
        name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.default is not inspect.Parameter.empty
    }
    value = json.dumps({"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": defaults})
    return spec, ["--model.init_args.criterion", value]


def _digest(tensors: Sequence[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class PairingFingerprint(L.Callback):
    """Fingerprints that show two runs were paired: same initial weights, same first training batch.

    ``weights``: a SHA-256 prefix of every floating-point tensor of the model's state at the start of
    fit (before any step); ``first_batch``: of the images and targets of the first training batch, as the
    model receives it (after any on-device augmentation). Both are kept in the checkpoint, so a resumed
    run keeps the fingerprints of its start.
    """

    def __init__(self) -> None:
        self.weights: str | None = None
        self.first_batch: str | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.weights is None:
            self.weights = _digest([t for t in pl_module.state_dict().values() if t.is_floating_point()])

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        if self.first_batch is None:
            items = batch if isinstance(batch, list | tuple) else [batch]
            self.first_batch = _digest([t for t in items if isinstance(t, torch.Tensor)])

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "first_batch": self.first_batch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.weights, self.first_batch = state_dict.get("weights"), state_dict.get("first_batch")


def _run_conflict(run_dir: Path, record: dict[str, Any], run: dict[str, Any]) -> str | None:
    """Why the run folder's ``run.json`` record is not a run of ``run`` (experiment, seed, fold); ``None`` if it is."""
    if record.get("format") != RUN_FORMAT or "experiment" not in record:
        return (f"{run_dir}: expected a run folder of format {RUN_FORMAT}, got {RUN_FILE} of format "
                f"{record.get('format')!r} (made by another version of crl study)")
    if not same_experiment(record, run):
        changes = config_changes(record["experiment"]["settings"], run["experiment"]["settings"])
        return f"{run_dir}: expected a run of this experiment, got one of another: {changes}"
    for key in ("seed", "fold"):
        if record.get(key) != run[key]:
            return f"{run_dir}: expected a run with {key} {run[key]}, got one with {key} {record.get(key)}"
    return None


def run_one(run_dir: Path, args: list[str]) -> dict[str, Any]:
    """One ``crl fit --test_after_fit true`` run in ``run_dir`` (reused when done; resumed when it can be).

    The run's experiment, seed and fold (`crl_lightning.runs`) are resolved from ``args`` first (nothing is
    built): a folder holding a run of another experiment, seed or fold is refused, with the keys that differ.

    Returns:
        The run's ``run.json`` record: ``format``, ``status``, ``args``, ``experiment``, ``seed``, ``fold``,
        ``metrics`` (the test metrics), ``files`` (``test_metrics``, ``history``), ``fingerprint``, ``epochs``,
        ``temperature`` and ``temperature_note`` (temperature scaling, see `crl_lightning.ImageClassifier`),
        ``per_class_acc`` (percent) and ``class_names``, ``resumed_from`` and ``wall_s`` (seconds of this run's
        fit + test).

    Raises:
        ValueError: ``run_dir`` holds a run of another experiment, seed or fold (the message names the keys that
            differ: ``data.init_args.batch_size: 128 -> 16``), or is a folder the study did not make.
        RuntimeError: the run ended without writing its test metrics.
    """
    from crl_lightning.callbacks import History, TestReport
    from crl_lightning.cli import build_cli, resolve_config

    config = resolve_config(["fit", *args])
    if (config.get("trainer") or {}).get("fast_dev_run"):
        raise ValueError(f"{run_dir}: expected a run that records its results, got trainer.fast_dev_run, under "
                         "which nothing is written; use --trainer.max_epochs 1 --trainer.limit_train_batches N")
    settings = experiment_settings(config)
    fold = ((config.get("data") or {}).get("init_args") or {}).get("fold")
    run = {"experiment": {"id": experiment_id(settings), "settings": settings},
           "seed": config.get("seed_everything"), "fold": fold}
    marker = run_dir / RUN_FILE
    try:
        record = read_json(marker) if marker.exists() else None
    except RecordError:
        record = None  # cannot happen with atomic writes; treated as an interrupted run
    if run_dir.exists() and record is None and any(run_dir.iterdir()):
        raise ValueError(f"{run_dir}: expected a run folder of this study ({RUN_FILE}), got a folder without one; "
                         "use another --out or remove it")
    conflict = _run_conflict(run_dir, record, run) if record is not None else None
    if conflict is not None:
        raise ValueError(f"{conflict}; use another --out, or delete the folder to redo it")
    if record is not None and record.get("status") == "done":
        return record
    last = newest_last_checkpoint(run_dir)
    resume = str(last) if last is not None else None
    if resume is None and run_dir.exists():
        shutil.rmtree(run_dir)  # an interrupted run without a checkpoint: redo it from scratch
    base = {"format": RUN_FORMAT, "args": args, **run}
    write_json(marker, {**base, "status": "running"})
    fingerprint = PairingFingerprint()
    start = time.monotonic()
    cli = build_cli(["fit", *args, *(["--ckpt_path", resume] if resume else [])],
                    trainer_defaults={"callbacks": [fingerprint]})
    wall = time.monotonic() - start
    report = next((cb for cb in cli.trainer.callbacks if isinstance(cb, TestReport)), None)
    history = next((cb for cb in cli.trainer.callbacks if isinstance(cb, History)), None)
    metrics_file = report.last_path if report is not None else None
    if metrics_file is None:
        raise RuntimeError(f"{run_dir}: expected the run to write its test metrics (TestReport), got none")
    metrics = read_record(metrics_file)
    record = {
        **base, "status": "done", "metrics": metrics["metrics"], "resumed_from": resume, "wall_s": round(wall, 1),
        "epochs": metrics.get("epochs"), "fingerprint": fingerprint.state_dict(),
        "temperature": metrics.get("temperature"), "temperature_note": metrics.get("temperature_note"),
        "per_class_acc": metrics.get("per_class_acc"), "class_names": metrics.get("class_names"),
        "files": {"test_metrics": str(metrics_file),
                  "history": str(history.last_path) if history is not None and history.last_path else None},
    }
    write_json(marker, record)
    return record


def _is_done(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run (its marker says ``done``; `run_one` checks the rest)."""
    try:
        return read_json(run_dir / RUN_FILE).get("status") == "done"
    except (OSError, RecordError):
        return False


def first_epoch_overhead(history: str | Path | None) -> dict[str, Any] | None:
    """How much longer a run's first epoch took than its later ones: the ``torch.compile`` and warm-up time.

    From ``history.csv``'s ``epoch_time_s`` (wall seconds per epoch, validation included): ``first_epoch_s``,
    ``later_median_s`` (median of the later epochs, ``None`` with one epoch) and ``overhead_s`` (their
    difference, ``None`` with one epoch). ``None`` without a history.
    """
    times = [float(row["epoch_time_s"]) for row in read_history(history) if row.get("epoch_time_s")]
    if not times:
        return None
    later = statistics.median(times[1:]) if len(times) > 1 else None
    return {"first_epoch_s": times[0], "later_median_s": later,
            "overhead_s": None if later is None else times[0] - later}


def run_study(
    base_args: Sequence[str], criteria: Sequence[str], seeds: Sequence[int], out: str | Path,
    budget_min: float | None = None,
) -> dict[str, Any]:
    """Run (or resume) every (criterion, seed) and return the ``study.json`` record (see the module doc).

    Args:
        base_args: ``crl fit`` arguments of every run.
        criteria: registry names or overlay files; the first is the reference.
        seeds: the seeds.
        out: the study folder.
        budget_min: wall budget of this call in minutes (``None``: none). Before a run that is not done yet,
            if the minutes since this call started plus the longest run so far (this call's or a reused one's
            ``wall_s``) would exceed it, the study stops there; the first run still to do always starts, so
            every call makes progress. Runs already done are always reused.

    Returns:
        The record; ``complete`` is false when the budget stopped it, ``remaining`` then lists the
        ``{"criterion", "seed"}`` not run.
    """
    out = Path(out)
    labelled = [criterion_arguments(spec) for spec in criteria]
    labels = [label for label, _ in labelled]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--criteria: expected distinct criteria, got {labels}")
    start = time.monotonic()
    runs: list[dict[str, Any]] = []
    remaining: list[dict[str, Any]] = []
    longest, trained, overhead = 0.0, 0, None
    for seed in seeds:  # seed-major: an interrupted study still has complete pairs
        for label, crit_args in labelled:
            run_dir = out / label / f"seed_{seed}"
            if remaining or (budget_min is not None and trained and not _is_done(run_dir)
                             and time.monotonic() - start + longest > 60 * budget_min):
                remaining.append({"criterion": label, "seed": seed})
                continue
            args = [*base_args, *crit_args, "--seed_everything", str(seed), "--data.init_args.seed", str(seed),
                    "--trainer.default_root_dir", str(run_dir), "--test_after_fit", "true"]
            reused = _is_done(run_dir)
            began = time.monotonic()
            record = run_one(run_dir, args)
            longest = max(longest, time.monotonic() - began, float(record.get("wall_s") or 0.0))
            trained += not reused
            if overhead is None and not reused:
                overhead = first_epoch_overhead(record["files"].get("history"))
                if overhead is not None:
                    overhead = {"criterion": label, "seed": seed, **overhead}
                    print(f"crl study: {overhead_line(overhead)}", flush=True)
            runs.append({"criterion": label, "seed": seed, "dir": str(run_dir), **record})
    return {
        "format": STUDY_FORMAT,
        "created": utc_now(),
        "base_args": list(base_args), "criteria": labels, "seeds": list(seeds),
        "complete": not remaining, "remaining": remaining, "budget_min": budget_min,
        "invocation_wall_s": round(time.monotonic() - start, 1),
        "runs_wall_s": round(sum(r["wall_s"] for r in runs), 1),
        "first_run_overhead": overhead,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "lightning": L.__version__, "machine": platform.machine(),
                        "cpu_threads": torch.get_num_threads(),
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "runs": runs,
        **study_report(runs, labels, seeds),
    }


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``crl study`` (see the module docstring); ``args`` excludes the ``study`` word.

    Raises:
        SystemExit: bad arguments (argparse, code 2); `INCOMPLETE_EXIT_CODE` (3) when ``--budget-min`` stopped
            the study with runs left (its partial study.json/md are written).
    """
    parser = argparse.ArgumentParser(
        prog="crl study", allow_abbrev=False,
        description="Train every criterion with every seed from one config (paired runs), then tabulate test "
                    "metrics, paired differences (95 % CI, paired t-test, Wilcoxon) and learning curves. Other "
                    "--key value arguments are passed to every `crl fit` run.",
    )
    parser.add_argument("--config", action="append", required=True, help="LightningCLI config (repeatable)")
    parser.add_argument("--criteria", nargs="+", required=True,
                        help="registry names (crl, ce, focal, poly1, ls_ce) or overlay YAMLs; the first is the "
                             "reference of the paired comparisons")
    parser.add_argument("--seeds", nargs="+", required=True, help="seeds, e.g. 0-4 or 0 1 2 or 0-2,7")
    parser.add_argument("--out", required=True, help="study folder: <out>/<criterion>/seed_<seed>, study.json/md")
    parser.add_argument("--budget-min", type=float, default=None,
                        help="wall budget in minutes: stop cleanly before a run that would end past it (the first "
                             f"run still to do always starts), write the partial report and exit with code "
                             f"{INCOMPLETE_EXIT_CODE}; the same command again resumes (default: no budget)")
    opts, passthrough = parser.parse_known_args(list(sys.argv[1:] if args is None else args))
    for reserved in ("--seed_everything", "--data.init_args.seed", "--trainer.default_root_dir", "--ckpt_path"):
        if any(a == reserved or a.startswith(reserved + "=") for a in passthrough):
            parser.error(f"{reserved} is set by the study for every run; remove it")
    try:
        seeds = parse_seeds(opts.seeds)
        for spec in opts.criteria:
            criterion_arguments(spec)
    except ValueError as err:
        parser.error(str(err))
    if opts.budget_min is not None and not opts.budget_min > 0:
        parser.error(f"--budget-min: expected a positive number of minutes, got {opts.budget_min}")
    base_args = [a for path in opts.config for a in ("--config", path)] + passthrough
    out = Path(opts.out)
    with folder_lock(out, "crl study"):  # one command at a time on a study folder, its report files included
        study = run_study(base_args, opts.criteria, seeds, out, budget_min=opts.budget_min)
        curves = save_curves(study, out / "curves.png")
        differences = save_paired_differences(study, out / "paired_differences.png")
        study["files"] = {"study_md": "study.md", "curves": curves.name if curves else None,
                          "paired_differences": differences.name if differences else None}
        write_json(out / "study.json", study)
        report = format_study(study)
        write_text_atomic(out / "study.md", report)
    print(report)
    print(f"crl study: wrote {out / 'study.json'}, {out / 'study.md'}" + (f", {curves}" if curves else "")
          + (f", {differences}" if differences else "")
          + f"; each run's checkpoint, test_metrics.json, history.csv and figures/ are under {out}/<criterion>/"
          "seed_<seed>/")
    if not study["complete"]:
        print(f"crl study: stopped at the wall budget of {opts.budget_min} min with {len(study['remaining'])} of "
              f"{len(study['remaining']) + len(study['runs'])} runs left; run the same command again to resume "
              f"(exit code {INCOMPLETE_EXIT_CODE})")
        raise SystemExit(INCOMPLETE_EXIT_CODE)
