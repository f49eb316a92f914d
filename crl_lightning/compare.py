"""``crl compare RUN_DIRS...``: the paper's Table II for your own runs, from their ``test_metrics.json``.

Every ``crl test`` (and ``crl fit --test_after_fit true``) writes ``test_metrics.json`` into its run
directory (`crl_lightning.callbacks.TestReport`). This command finds those files under the given folders
and prints one markdown table per metric: rows = dataset / backbone, columns = criteria, cells =
``mean ± std (n=runs)`` over seeds (sample std, ``ddof=1``; a single run shows ``mean (n=1)``).

Example::

    crl compare runs/                       # test top-1 error (%), as Table II
    crl compare runs/ --metric test_top1_err --metric test_ece
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from crl_lightning.callbacks import METRICS_FILENAME

__all__ = ["comparison_table", "find_metric_files", "load_records", "main"]

#: Units of the known metrics, for the table caption.
_UNITS = {"_err": "%", "_acc": "%", "test_ece": "fraction", "test_nll": "nats", "test_loss": ""}


def find_metric_files(paths: Iterable[str | Path]) -> list[Path]:
    """Every ``test_metrics.json`` under ``paths`` (a folder is searched recursively; a file is taken as is).

    Raises:
        FileNotFoundError: a path that does not exist.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"compare: expected a run folder or a {METRICS_FILENAME} file, got {path}")
        found += [path] if path.is_file() else sorted(path.rglob(METRICS_FILENAME))
    return sorted(set(found))


def load_records(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Read the metrics files under ``paths``; each record gets its own ``path``.

    A file that is not valid JSON (e.g. cut short by a crash of a writer that did not write atomically) is
    skipped, with a ``warning:`` line on stderr that names it.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a JSON file that is not a test metrics file (the message names it).
    """
    records = []
    for path in find_metric_files(paths):
        try:
            record = json.loads(path.read_text())
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            print(f"warning: skipping {path}: expected JSON, got a parse error: {err}", file=sys.stderr)
            continue
        missing = [k for k in ("dataset", "backbone", "criterion", "metrics") if k not in record]
        if missing:
            raise ValueError(f"{path}: expected the keys dataset, backbone, criterion, metrics; missing {missing}")
        record["path"] = str(path)
        records.append(record)
    return records


def _label(criterion: Any) -> str:
    if isinstance(criterion, dict):
        return str(criterion.get("label") or criterion.get("name") or "unknown")
    return str(criterion)


def _cell(values: Sequence[float], digits: int) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f} (n={len(values)})"


def _unit(metric: str) -> str:
    for suffix, unit in _UNITS.items():
        if metric.endswith(suffix) or metric == suffix:
            return unit
    return ""


def comparison_table(records: Sequence[dict[str, Any]], metric: str = "test_top1_err", digits: int = 2) -> str:
    """A markdown table of ``metric``: rows = dataset / backbone, columns = criteria, cells = mean ± std (n).

    Columns are sorted by label with cross-entropy (``CE``) first, as the paper's baseline column.
    Runs without ``metric`` are left out of its cells.

    Args:
        records: as from `load_records`.
        metric: a key of each record's ``metrics``, e.g. ``"test_top1_err"`` (percent).
        digits: decimals in the cells.

    Returns:
        The table (a caption line, a blank line, then the markdown rows), without a final newline.

    Raises:
        ValueError: no record has ``metric`` (the message lists the metrics that are there).
    """
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    columns: set[str] = set()
    available: set[str] = set()
    for record in records:
        available.update(record["metrics"])
        value = record["metrics"].get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        dataset = str(record["dataset"])
        row = (dataset.removesuffix("DataModule") or dataset, str(record["backbone"]))
        column = _label(record["criterion"])
        columns.add(column)
        cells[row][column].append(float(value))
    if not columns:
        raise ValueError(f"metric: expected one of {sorted(available)}, got {metric!r}")
    ordered = sorted(columns, key=lambda c: (not (c == "CE" or c.startswith("CE(")), c))
    unit = _unit(metric)
    lines = [
        f"{metric}{f' ({unit})' if unit else ''}: mean ± std over seeds (n runs)",
        "",
        "| dataset / backbone | " + " | ".join(ordered) + " |",
        "|---|" + "---|" * len(ordered),
    ]
    for row in sorted(cells):
        lines.append(f"| {row[0]} / {row[1]} | " + " | ".join(_cell(cells[row][c], digits) for c in ordered) + " |")
    return "\n".join(lines)


def _duplicate_seeds(records: Sequence[dict[str, Any]]) -> list[str]:
    seen: dict[tuple, list[str]] = defaultdict(list)
    for r in records:
        if r.get("seed") is not None:
            seen[(r["dataset"], r["backbone"], _label(r["criterion"]), r["seed"])].append(r["path"])
    return [f"seed {key[3]} of {key[0]}/{key[1]}/{key[2]}: {paths}" for key, paths in seen.items() if len(paths) > 1]


def main(args: Sequence[str] | None = None) -> None:
    """``crl compare RUN_DIRS... [--metric NAME]... [--digits D]``: print the comparison tables.

    Raises:
        SystemExit: bad arguments, a missing path, no metrics file found, or an unknown metric (code 2).
    """
    parser = argparse.ArgumentParser(
        prog="crl compare",
        description="Tabulate test metrics of runs (rows dataset/backbone, columns criteria, mean ± std over seeds).",
    )
    parser.add_argument("runs", nargs="+", help=f"run folders (searched for {METRICS_FILENAME}) or metric files")
    parser.add_argument("--metric", action="append", default=None,
                        help="metric to tabulate, repeatable (default: test_top1_err)")
    parser.add_argument("--digits", type=int, default=2, help="decimals in the cells (default: 2)")
    ns = parser.parse_args(list(sys.argv[1:] if args is None else args))
    try:
        records = load_records(ns.runs)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    if not records:
        parser.error(f"no {METRICS_FILENAME} under {ns.runs}; run `crl test` (or fit with --test_after_fit true)")
    for dup in _duplicate_seeds(records):
        print(f"warning: several runs share {dup}", file=sys.stderr)
    tables = []
    for metric in ns.metric or ["test_top1_err"]:
        try:
            tables.append(comparison_table(records, metric, ns.digits))
        except ValueError as err:
            parser.error(str(err))
    print("\n\n".join(tables))
