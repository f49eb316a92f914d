"""``crl cv``: k-fold cross-validation (the Adience five-fold protocol) from one config, one table out.

    crl cv --config examples/configs/adience_age_crl.yaml [--folds 0 1 2 3 4] [--output table.md]
           [--trainer.default_root_dir runs/adience_cv] [any other --key value, passed to every fold]

For each fold k the command runs ``crl fit --config ... --data.fold k`` from fresh weights (a new
model per fold, seeded by the config's ``seed_everything``), in ``<root>/fold_<k>``, then tests the
best checkpoint (the last weights when none was saved) on fold k. It prints, and writes to ``--output``
(default ``<root>/cv_results.md``), a markdown table with per-fold and mean +- std (sample standard
deviation over folds) of the exact accuracy (``100 - test_top1_err``) and the one-off accuracy (the
predicted age group within one of the true group; Levi & Hassner 2015, paper Table IV), in percent.

Every fold runs with ``--model.init_args.ordinal true``, so the model logs ``test_one_off_acc``
(`crl_lightning.metrics.OneOffAccuracy`, synced across processes) and the table reads it from there.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

__all__ = ["FoldResult", "format_table", "main", "run_cv"]


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


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def format_table(results: Sequence[FoldResult], title: str = "") -> str:
    """Markdown table: one row per fold and a ``mean ± std`` row (sample std, ddof=1; 0 for one fold)."""
    lines = [f"## {title}", ""] if title else []
    lines += ["| fold | test samples | exact acc (%) | one-off acc (%) |", "|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.fold} | {r.num_test:,} | {r.exact_acc:.2f} | {r.one_off_acc:.2f} |")
    if results:
        exact = _mean_std([r.exact_acc for r in results])
        one_off = _mean_std([r.one_off_acc for r in results])
        total = sum(r.num_test for r in results)
        lines.append(
            f"| mean ± std | {total:,} | {exact[0]:.2f} ± {exact[1]:.2f} | {one_off[0]:.2f} ± {one_off[1]:.2f} |"
        )
    lines += ["", f"std: sample standard deviation over {len(results)} folds."]
    return "\n".join(lines) + "\n"


def run_fold(base_args: Sequence[str], fold: int, root_dir: Path) -> FoldResult:
    """Fit from fresh weights with ``--data.fold fold`` in ``root_dir/fold_<fold>``, then test; see module doc."""
    from crl_lightning.callbacks import run_dir
    from crl_lightning.cli import build_cli, weights_to_test

    args = ["fit", *base_args, "--data.fold", str(fold), "--test_after_fit", "false",
            "--model.init_args.ordinal", "true", "--trainer.default_root_dir", str(root_dir / f"fold_{fold}")]
    cli = build_cli(args)
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=weights_to_test(cli.trainer),
                               verbose=False)[0]
    missing = {"test_top1_err", "test_one_off_acc"} - set(metrics)
    if missing:
        raise KeyError(f"fold {fold}: expected the test metrics {sorted(missing)}, got {sorted(metrics)}")
    exact = 100.0 - float(metrics["test_top1_err"])
    one_off = float(metrics["test_one_off_acc"])
    num_test = len(cli.datamodule.datasets["test"])
    limit = cli.trainer.num_test_batches[0] if cli.trainer.num_test_batches else None
    if limit is not None and math.isfinite(limit):
        num_test = min(num_test, int(limit) * cli.datamodule.batch_size)
    return FoldResult(fold, num_test, exact, one_off, str(run_dir(cli.trainer)))


def run_cv(base_args: Sequence[str], folds: Sequence[int], root_dir: str | Path) -> list[FoldResult]:
    """Run `run_fold` for every fold in ``folds``; ``base_args`` are the ``--config``/override arguments."""
    return [run_fold(base_args, k, Path(root_dir)) for k in folds]


def _config_value(configs: Sequence[str], section: str, key: str) -> str | None:
    """``section.key`` of the merged YAML configs (the last one that sets it wins)."""
    value = None
    for path in configs:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
        value = (config.get(section) or {}).get(key, value)
    return value


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
    try:
        _check_data_has_folds(_config_value(opts.config, "data", "class_path"))
    except ValueError as err:
        parser.error(str(err))
    root_dir = Path(opts.root_dir or _config_value(opts.config, "trainer", "default_root_dir") or "runs/cv")
    base_args = [a for path in opts.config for a in ("--config", path)] + passthrough
    results = run_cv(base_args, opts.folds, root_dir)
    table = format_table(results, title=f"Cross-validation: {', '.join(opts.config)}")
    print(table)
    output = Path(opts.output) if opts.output else root_dir / "cv_results.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table, encoding="utf-8")
    print(f"crl cv: wrote {output}; the folds' checkpoints, test_metrics.json and figures/ are in "
          + ", ".join(f"{r.run_dir}/" for r in results))
