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
* ``curves.png``: validation top-1 error per epoch (from each run's ``history.csv``), a thin line per seed
  and a bold mean per criterion, as the paper's Fig. 3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import shutil
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
from crl_lightning.statistics import paired_comparison, summarize

__all__ = ["METRICS", "PairingFingerprint", "criterion_arguments", "main", "parse_seeds", "run_study", "study_report"]

#: The metrics the study tabulates: test_metrics.json key -> (label, unit).
METRICS = {
    "test_top1_err": ("test top-1 error", "%"),
    "test_nll": ("test NLL", "nats"),
    "test_ece": ("test ECE", "fraction"),
}
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
        ValueError: neither a registry name nor an existing ``.yaml``/``.yml`` file.
    """
    import inspect

    from crl_lightning.losses import list_criteria
    from crl_lightning.losses.registry import criterion_class

    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ValueError(f"--criteria: expected a registry name or an overlay file, got {spec} (no such file)")
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
        ``resumed_from`` and ``wall_s`` (seconds of this run's fit + test).

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
        "files": {"test_metrics": str(metrics_file),
                  "history": str(history.last_path) if history is not None and history.last_path else None},
    }
    write_json(marker, record)
    return record


def run_study(
    base_args: Sequence[str], criteria: Sequence[str], seeds: Sequence[int], out: str | Path
) -> dict[str, Any]:
    """Run (or resume) every (criterion, seed) and return the ``study.json`` record (see the module doc)."""
    out = Path(out)
    labelled = [criterion_arguments(spec) for spec in criteria]
    labels = [label for label, _ in labelled]
    if len(set(labels)) != len(labels):
        raise ValueError(f"--criteria: expected distinct criteria, got {labels}")
    start = time.monotonic()
    runs = []
    for seed in seeds:  # seed-major: an interrupted study still has complete pairs
        for label, crit_args in labelled:
            run_dir = out / label / f"seed_{seed}"
            args = [*base_args, *crit_args, "--seed_everything", str(seed), "--data.init_args.seed", str(seed),
                    "--trainer.default_root_dir", str(run_dir), "--test_after_fit", "true"]
            record = run_one(run_dir, args)
            runs.append({"criterion": label, "seed": seed, "dir": str(run_dir), **record})
    return {
        "format": STUDY_FORMAT,
        "created": utc_now(),
        "base_args": list(base_args), "criteria": labels, "seeds": list(seeds),
        "invocation_wall_s": round(time.monotonic() - start, 1),
        "runs_wall_s": round(sum(r["wall_s"] for r in runs), 1),
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "lightning": L.__version__, "machine": platform.machine(),
                        "cpu_threads": torch.get_num_threads(),
                        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "runs": runs,
        **study_report(runs, labels, seeds),
    }


def study_report(runs: Sequence[dict[str, Any]], labels: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Per-criterion summaries, paired comparisons against ``labels[0]`` and the pairing check.

    Args:
        runs: one dict per run with ``criterion``, ``seed``, ``metrics`` and ``fingerprint``.
        labels: the criteria, the first being the reference.
        seeds: the seeds.

    Returns:
        ``{"summary": {criterion: {metric: summarize}}, "paired": {criterion: {metric: paired_comparison}},
        "pairing": {"ok": bool, "mismatches": [...]}}``.
    """
    value = {(r["criterion"], r["seed"], m): r["metrics"].get(m) for r in runs for m in METRICS}
    summary = {
        label: {m: summarize([value[(label, s, m)] for s in seeds if value.get((label, s, m)) is not None])
                for m in METRICS}
        for label in labels
    }
    paired: dict[str, dict[str, Any]] = {}
    for label in labels[1:]:
        paired[label] = {}
        for m in METRICS:
            both = [s for s in seeds if None not in (value.get((labels[0], s, m)), value.get((label, s, m)))]
            paired[label][m] = {"seeds": both, **paired_comparison([value[(labels[0], s, m)] for s in both],
                                                                   [value[(label, s, m)] for s in both])}
    mismatches = []
    for seed in seeds:
        prints = {r["criterion"]: r.get("fingerprint") or {} for r in runs if r["seed"] == seed}
        for key in ("weights", "first_batch"):
            found = {label: p.get(key) for label, p in prints.items()}
            if len(set(found.values())) > 1 or None in found.values():
                mismatches.append({"seed": seed, "what": key, "values": found})
    return {"summary": summary, "paired": paired, "pairing": {"ok": not mismatches, "mismatches": mismatches}}


def _fmt(x: float | None, digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _p(x: float | None) -> str:
    return "–" if x is None else (f"{x:.3f}" if x >= 0.001 else f"{x:.1e}")


def format_study(study: dict[str, Any]) -> str:
    """The markdown report (``study.md``): protocol, per-criterion table, paired table, runs, curves."""
    labels, seeds = study["criteria"], study["seeds"]
    digits = {"test_top1_err": 2, "test_nll": 4, "test_ece": 4}
    lines = [
        "# crl study",
        "",
        f"Command: `crl study {' '.join(study['base_args'])} --criteria {' '.join(labels)} "
        f"--seeds {','.join(map(str, seeds))}`",
        f"Created {study['created']}; run time {study['runs_wall_s'] / 60:.1f} min (sum of the runs' fit + test), "
        f"{study['environment']['machine']}, {study['environment']['cpu_threads']} threads, "
        f"GPU: {study['environment']['cuda'] or 'none'}, torch {study['environment']['torch']}.",
        "",
        "## Per criterion (mean ± sample std over seeds)",
        "",
        "| criterion | n | " + " | ".join(f"{lbl} ({unit})" for lbl, unit in METRICS.values()) + " |",
        "|---|---:|" + "---:|" * len(METRICS),
    ]
    for label in labels:
        s = study["summary"][label]
        cells = [f"{_fmt(s[m]['mean'], digits[m])} ± {_fmt(s[m]['std'], digits[m])}" for m in METRICS]
        lines.append(f"| {label} | {s['test_top1_err']['n']} | " + " | ".join(cells) + " |")
    if labels[1:]:
        lines += [
            "",
            f"## Paired differences against {labels[0]} (criterion − {labels[0]}, per seed; negative = lower)",
            "",
            "| criterion | metric | n | mean diff | 95 % CI | paired t p | Wilcoxon p | lower / higher / tie |",
            "|---|---|---:|---:|---|---:|---:|---|",
        ]
        for label in labels[1:]:
            for m, (name, unit) in METRICS.items():
                c = study["paired"][label][m]
                d = digits[m]
                lines.append(
                    f"| {label} | {name} ({unit}) | {c['n']} | {_fmt(c['mean_diff'], d)} | "
                    f"[{_fmt(c['ci_low'], d)}, {_fmt(c['ci_high'], d)}] | {_p(c['t_pvalue'])} | "
                    f"{_p(c['wilcoxon_pvalue'])} | {c['lower']} / {c['higher']} / {c['ties']} |"
                )
    pairing = study["pairing"]
    lines += ["", "Pairing: " + ("every seed gave all criteria the same initial weights and the same first "
                                 "training batch." if pairing["ok"] else
                                 f"NOT PAIRED for {len(pairing['mismatches'])} checks (see study.json)."),
              "", "## Runs", "",
              "| criterion | seed | " + " | ".join(f"{lbl} ({unit})" for lbl, unit in METRICS.values())
              + " | epochs | wall (s) | folder |",
              "|---|---:|" + "---:|" * len(METRICS) + "---:|---:|---|"]
    for r in study["runs"]:
        cells = [_fmt(r["metrics"].get(m), digits[m]) for m in METRICS]
        lines.append(f"| {r['criterion']} | {r['seed']} | " + " | ".join(cells)
                     + f" | {r['epochs']} | {r['wall_s']:.0f} | {r['dir']} |")
    lines += ["", "![validation top-1 error per epoch](curves.png)", ""]
    return "\n".join(lines)


def save_curves(study: dict[str, Any], path: Path) -> Path | None:
    """``curves.png``: validation top-1 error per epoch of every run (from ``history.csv``); None without data."""
    from crl_lightning.figures import learning_curves, save_figure

    curves: dict[str, list[tuple[list[float], list[float]]]] = {}
    for r in study["runs"]:
        rows = [row for row in read_history(r["files"].get("history")) if row.get("val_top1_err")]
        if rows:
            curves.setdefault(r["criterion"], []).append(
                ([float(row["epoch"]) for row in rows], [float(row["val_top1_err"]) for row in rows]))
    if not curves:
        return None
    fig = learning_curves(curves, title=f"Validation top-1 error per epoch ({len(study['seeds'])} seeds)")
    tmp = path.with_name(f".{path.name}.tmp.png")
    save_figure(fig, tmp).replace(path)
    return path


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``crl study`` (see the module docstring); ``args`` excludes the ``study`` word.

    Raises:
        SystemExit: bad arguments (argparse, code 2).
    """
    parser = argparse.ArgumentParser(
        prog="crl study", allow_abbrev=False,
        description="Train every criterion with every seed from one config (paired runs), then tabulate test "
                    "metrics, paired differences (95%% CI, paired t-test, Wilcoxon) and learning curves. Other "
                    "--key value arguments are passed to every `crl fit` run.",
    )
    parser.add_argument("--config", action="append", required=True, help="LightningCLI config (repeatable)")
    parser.add_argument("--criteria", nargs="+", required=True,
                        help="registry names (crl, ce, focal, poly1, ls_ce) or overlay YAMLs; the first is the "
                             "reference of the paired comparisons")
    parser.add_argument("--seeds", nargs="+", required=True, help="seeds, e.g. 0-4 or 0 1 2 or 0-2,7")
    parser.add_argument("--out", required=True, help="study folder: <out>/<criterion>/seed_<seed>, study.json/md")
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
    base_args = [a for path in opts.config for a in ("--config", path)] + passthrough
    out = Path(opts.out)
    with folder_lock(out, "crl study"):  # one command at a time on a study folder
        study = run_study(base_args, opts.criteria, seeds, out)
    curves = save_curves(study, out / "curves.png")
    study["files"] = {"study_md": "study.md", "curves": curves.name if curves else None}
    write_json(out / "study.json", study)
    report = format_study(study)
    write_text_atomic(out / "study.md", report)
    print(report)
    print(f"crl study: wrote {out / 'study.json'}, {out / 'study.md'}" + (f", {curves}" if curves else "")
          + f"; each run's checkpoint, test_metrics.json, history.csv and figures/ are under {out}/<criterion>/"
          "seed_<seed>/")
