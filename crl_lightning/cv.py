"""``crl cv``: k-fold cross-validation (the Adience five-fold protocol) from one config, one table out.

    crl cv --config examples/configs/adience_age_crl.yaml [--folds 0 1 2 3 4] [--output table.md]
           [--trainer.default_root_dir runs/adience_cv] [any other --key value, passed to every fold]

For each fold k the command runs ``crl fit --config ... --data.fold k --test_after_fit true`` from fresh
weights (a new model per fold, seeded by the config's ``seed_everything``), in ``<root>/fold_<k>``, which tests
the best checkpoint (the last weights when none was saved) on fold k. It is a study over folds: the same run
loop as ``crl study`` (`crl_lightning.study.run_one`), so a finished fold is reused, an interrupted one resumed,
and a fold folder of another experiment refused; ``<root>/.crl.lock`` (`crl_lightning.runs.folder_lock`) keeps a
second command out of the folder while one runs. It prints, and writes to ``--output``
(default ``<root>/cv_results.md``), a markdown table with per-fold and mean +- std (sample standard
deviation over folds) of the exact accuracy (``100 - test_top1_err``) and the one-off accuracy (the
predicted age group within one of the true group; Levi & Hassner 2015, paper Table IV), in percent.

Every fold runs with ``--model.init_args.ordinal true``, so the model logs ``test_one_off_acc``
(`crl_lightning.metrics.OneOffAccuracy`, synced across processes) and the table reads it from there.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from crl_lightning.runs import folder_lock, read_record, write_text_atomic
from crl_lightning.statistics import mean_std_text

__all__ = ["FoldResult", "fold_args", "format_table", "main", "run_cv"]


@dataclass
class FoldResult:
    """Test results of one fold, percentages.

    Attributes:
        fold: the test fold index.
        num_test: test samples evaluated.
        exact_acc: exact (top-1) accuracy, percent.
        one_off_acc: one-off accuracy, percent.
        run_dir: the fold's run folder (its checkpoint, ``test_metrics.json``, ``figures/``).
    """

    fold: int
    num_test: int
    exact_acc: float
    one_off_acc: float
    run_dir: str = ""


def format_table(results: Sequence[FoldResult], title: str = "") -> str:
    """Markdown table: one row per fold and a ``mean ± std`` row (sample std, ddof=1; 0 for one fold)."""
    lines = [f"## {title}", ""] if title else []
    lines += ["| fold | test samples | exact acc (%) | one-off acc (%) |", "|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.fold} | {r.num_test:,} | {r.exact_acc:.2f} | {r.one_off_acc:.2f} |")
    if results:
        exact = mean_std_text([r.exact_acc for r in results], 2)
        one_off = mean_std_text([r.one_off_acc for r in results], 2)
        lines.append(f"| mean ± std | {sum(r.num_test for r in results):,} | {exact} | {one_off} |")
    lines += ["", f"std: sample standard deviation over {len(results)} folds."]
    return "\n".join(lines) + "\n"


def fold_args(base_args: Sequence[str], fold: int, root_dir: Path) -> list[str]:
    """The ``crl fit`` arguments of fold ``fold``: ``--data.fold``, ordinal metrics, its folder, test after fit.

    The test report stays on (``test_report true``): the fold's ``test_metrics.json`` is its result.
    """
    return [*base_args, "--data.fold", str(fold), "--model.init_args.ordinal", "true",
            "--model.init_args.test_report", "true", "--trainer.default_root_dir", str(root_dir / f"fold_{fold}"),
            "--test_after_fit", "true"]


def run_cv(base_args: Sequence[str], folds: Sequence[int], root_dir: str | Path) -> list[FoldResult]:
    """Fit and test every fold in ``folds`` in ``root_dir/fold_<k>`` with `crl_lightning.study.run_one`.

    The run loop is the study's: a finished fold of the same experiment is reused, an interrupted one resumed
    from its ``last.ckpt``, a fold folder of another experiment refused naming the keys that changed.

    Args:
        base_args: the ``--config``/override arguments given to every fold.
        folds: the test folds.
        root_dir: the parent of the fold folders.

    Raises:
        KeyError: a fold's test metrics lack ``test_top1_err`` or ``test_one_off_acc``.
        ValueError: see `crl_lightning.study.run_one`.
    """
    from crl_lightning.study import run_one

    results = []
    for fold in folds:
        run_dir = Path(root_dir) / f"fold_{fold}"
        record = run_one(run_dir, fold_args(base_args, fold, Path(root_dir)))
        metrics = record["metrics"]
        missing = {"test_top1_err", "test_one_off_acc"} - set(metrics)
        if missing:
            raise KeyError(f"fold {fold}: expected the test metrics {sorted(missing)}, got {sorted(metrics)}")
        tested = read_record(record["files"]["test_metrics"])
        results.append(FoldResult(fold, int(tested.get("num_samples") or 0), 100.0 - float(metrics["test_top1_err"]),
                                  float(metrics["test_one_off_acc"]), str(Path(tested["path"]).parent)))
    return results


def _check_data_has_folds(class_path: str | None) -> None:
    """Raise ValueError unless the DataModule at ``class_path`` takes a ``fold`` argument."""
    if class_path is None:
        return
    import importlib
    import inspect

    module, _, name = class_path.rpartition(".")
    data_cls = getattr(importlib.import_module(module), name)
    if "fold" not in inspect.signature(data_cls).parameters:
        raise ValueError(
            f"crl cv: expected a DataModule with a `fold` argument (e.g. crl_lightning.data.AdienceDataModule), "
            f"got {class_path}"
        )


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``crl cv`` (see the module docstring); ``args`` excludes the ``cv`` word.

    Raises:
        SystemExit: bad command-line arguments (argparse), e.g. ``--data.fold`` instead of ``--folds``.
    """
    import sys

    parser = argparse.ArgumentParser(
        prog="crl cv", allow_abbrev=False,
        description="Cross-validate a config over folds (fresh weights per fold); print and write a table. "
                    "Other --key value arguments are passed to every `crl fit` run.",
    )
    parser.add_argument("--config", action="append", required=True, help="LightningCLI config (repeatable)")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="test folds to run")
    parser.add_argument("--output", default=None, help="markdown table path (default <root>/cv_results.md)")
    parser.add_argument("--trainer.default_root_dir", dest="root_dir", default=None,
                        help="root of the per-fold run folders <root>/fold_<k> (default: the config's, or runs/cv)")
    opts, passthrough = parser.parse_known_args(list(sys.argv[1:] if args is None else args))
    if any(a == "--data.fold" or a.startswith("--data.fold=") for a in passthrough):
        parser.error("pass the folds with --folds K [K ...], not --data.fold")
    if len(set(opts.folds)) != len(opts.folds):
        parser.error(f"--folds: expected distinct folds, got {opts.folds}")
    base_args = [a for path in opts.config for a in ("--config", path)] + passthrough
    from crl_lightning.cli import resolve_config

    resolved = resolve_config(["fit", *base_args])  # the configs as every fold's run will read them
    try:
        _check_data_has_folds((resolved.get("data") or {}).get("class_path"))
    except ValueError as err:
        parser.error(str(err))
    root_dir = Path(opts.root_dir or (resolved.get("trainer") or {}).get("default_root_dir") or "runs/cv")
    with folder_lock(root_dir, "crl cv"):  # one command at a time on a cv folder
        results = run_cv(base_args, opts.folds, root_dir)
    table = format_table(results, title=f"Cross-validation: {', '.join(opts.config)}")
    print(table)
    output = write_text_atomic(Path(opts.output) if opts.output else root_dir / "cv_results.md", table)
    print(f"crl cv: wrote {output}; the folds' checkpoints, test_metrics.json and figures/ are in "
          + ", ".join(f"{r.run_dir}/" for r in results))
