"""``crl compare RUN_DIRS...``: the paper's Table II for your own runs, from their ``test_metrics.json``.

Every ``crl test`` (and ``crl fit --test_after_fit true``) writes ``test_metrics.json`` into its run
directory (`crl_lightning.callbacks.TestReport`). This command finds those files under the given folders
and prints one markdown table per metric: columns = criteria, rows = the rest of the experiment, cells =
``mean ± std (n=runs)`` over seeds (sample std, ``ddof=1``; a single run shows ``mean (n=1)``).

A cell pools only runs of one experiment (`crl_lightning.runs.experiment_identity`: the resolved configuration
without seed, fold and paths). Experiments that share dataset, network and criterion but differ elsewhere
(another batch size, a model subclass) are separate rows, labelled by the keys in which they differ
(``batch_size=16``, ``ConfidencePenaltyClassifier(penalty=0.1)``). Reruns of one experiment, seed and fold
count once: the newest (by ``created``), and the cell says how many it left out (``1.11 (n=1; 6 reruns left
out)``). A ``crl test`` (of a checkpoint, or of untrained weights) is not a rerun of the run that trained it:
such records form their own row, marked ``[crl test]``. Runs of ``crl cv`` are folds: ``67.10 ± 2.00 (5 folds)``.

Example::

    crl compare runs/                       # test top-1 error (%), as Table II
    crl compare runs/ --metric test_top1_err --metric test_ece
    crl compare runs/ --metric test_nll --metric test_nll_ts   # before / after temperature scaling
    crl compare runs/ --experiment 3f2a9c1b7e4d
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from crl_lightning.runs import METRICS_FILENAME, RecordError, experiment_id, flatten_config, read_record, rerun_key
from crl_lightning.statistics import mean_std_text

__all__ = ["comparison_table", "find_metric_files", "latest_runs", "load_records", "main", "select_experiment"]

#: Units of the known metrics, for the table caption.
_UNITS = {"_err": "%", "_acc": "%", "test_ece": "fraction", "test_nll": "nats", "test_loss": ""}
#: Decimals of the metrics whose scale needs more than the default (as in ``crl study``'s tables).
_DIGITS = {"test_nll": 4, "test_ece": 4}
#: Suffix of the temperature-scaled metrics (``test_nll_ts``, ``test_ece_ts``): the unit and decimals of the raw one.
_SCALED = "_ts"
#: The settings key of the criterion: the columns of a table, so not part of a row's identity.
_CRITERION_KEY = "model.init_args.criterion"


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
    """Read the run records under ``paths`` (`crl_lightning.runs.read_record`); each gets its own ``path``.

    A file that cannot be used (not valid JSON, e.g. cut short by a writer that did not write atomically; another
    format; missing keys) is left out, with a ``warning:`` line on stderr that names it and says why.

    Raises:
        FileNotFoundError: a path that does not exist.
    """
    records = []
    for path in find_metric_files(paths):
        try:
            records.append(read_record(path))
        except RecordError as err:
            print(f"warning: skipping {err}", file=sys.stderr)
    return records


def select_experiment(records: Sequence[dict[str, Any]], wanted: str) -> list[dict[str, Any]]:
    """The records of one experiment: ``wanted`` is its id (or a prefix of 4+ digits), label or ``"label #id"``.

    Raises:
        ValueError: no record matches (the message lists the experiments there are).
    """
    def matches(experiment: dict[str, Any]) -> bool:
        name = f"{experiment['label']} #{experiment['id']}"
        return wanted in (experiment["label"], name) or len(wanted) >= 4 and experiment["id"].startswith(wanted)

    kept = [r for r in records if matches(r["experiment"])]
    if not kept:
        there = sorted({f"{r['experiment']['label']} #{r['experiment']['id']}" for r in records})
        raise ValueError(f"--experiment: expected an experiment id or label of these runs {there}, got {wanted!r}")
    return kept


def _created(record: dict[str, Any]) -> tuple[str, float]:
    path = Path(record.get("path", ""))
    return str(record.get("created") or ""), path.stat().st_mtime if path.is_file() else 0.0


def latest_runs(records: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """Each run once: of the reruns of one experiment, seed, fold (`crl_lightning.runs.rerun_key`), the newest.

    Newest by ``created`` (UTC ISO time), then by the file's modification time. Records without a seed are
    all kept (nothing says they repeat one another). A test of a checkpoint is a rerun only of another test of
    a checkpoint of the same training run.

    Args:
        records: as from `load_records`.

    Returns:
        ``(kept, reruns)``: the kept records in their input order, and ``{id(kept record): number of older
        reruns left out}`` for those that had reruns.
    """
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for i, r in enumerate(records):
        key = rerun_key(r)
        groups[key if key is not None else i].append(r)
    newest = {id(max(group, key=_created)): len(group) - 1 for group in groups.values()}
    kept = [r for r in records if id(r) in newest]
    return kept, {key: n for key, n in newest.items() if n}


def _row_settings(record: dict[str, Any]) -> dict[str, Any]:
    """The flattened experiment settings of a record without its criterion (what a row stands for)."""
    flat = flatten_config(record["experiment"]["settings"])
    return {k: v for k, v in flat.items() if not (k == _CRITERION_KEY or k.startswith(_CRITERION_KEY + "."))
            and k != "criterion"}


def _criterion_settings(record: dict[str, Any]) -> dict[str, Any]:
    """A record's criterion settings as ``{"model.init_args.criterion.init_args.weight": [1.0, 5.0], ...}``.

    Values stay whole (a list of class weights is one value), so a row label reads ``weight=[1.0, 5.0]``.
    """
    criterion = record["experiment"]["settings"].get("model", {}).get("init_args", {}).get("criterion")
    if not isinstance(criterion, dict):
        return {_CRITERION_KEY: criterion}
    init_args = criterion.get("init_args") or {}
    return {f"{_CRITERION_KEY}.class_path": criterion.get("class_path"),
            **{f"{_CRITERION_KEY}.init_args.{k}": v for k, v in init_args.items()}}


def _value_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _differences(settings: dict[str, Any], peers: Sequence[dict[str, Any]]) -> str:
    """``key=value`` for the keys in which ``settings`` stand out among ``peers`` (the rows of one dataset/network).

    A key whose value most of the rows share (one most common value, held by two rows or more) is named only
    in the rows that differ from it; a key without such a value is named in every row. The model class is
    named by its class, with its arguments: ``ConfidencePenaltyClassifier(penalty=0.1)``.
    """
    everyone = [settings, *peers]
    shown = []
    for key in sorted(set().union(*everyone)):
        if key.startswith(_CRITERION_KEY) and key not in settings:
            continue  # criterion keys are in the rows that collided in one cell only (`comparison_table`)
        counts = Counter(json.dumps(row.get(key, "(unset)"), sort_keys=True, default=str) for row in everyone)
        if len(counts) == 1:
            continue
        (mode, first), *rest = counts.most_common()
        mine = json.dumps(settings.get(key, "(unset)"), sort_keys=True, default=str)
        if first > 1 and (not rest or rest[0][1] < first) and mine == mode:
            continue
        shown.append(key)
    tail = {k: k.rpartition(".")[2] for k in shown}
    ambiguous = {t for t in tail.values() if list(tail.values()).count(t) > 1}
    parts: list[str] = []
    if "model.class_path" in shown:
        model_args = [k for k in shown if k.startswith("model.init_args.")]
        klass = str(settings.get("model.class_path", "?")).rpartition(".")[2]
        inner = ", ".join(f"{tail[k]}={_value_text(settings[k])}" for k in model_args if k in settings)
        parts.append(f"{klass}({inner})" if inner else klass)
        shown = [k for k in shown if k != "model.class_path" and k not in model_args]
    for k in shown:
        name = k.replace(".init_args.", ".") if tail[k] in ambiguous else tail[k]
        parts.append(f"{name}={_value_text(settings[k]) if k in settings else '(unset)'}")
    return ", ".join(parts)


def _unit(metric: str) -> str:
    metric = metric.removesuffix(_SCALED)
    for suffix, unit in _UNITS.items():
        if metric.endswith(suffix) or metric == suffix:
            return unit
    return ""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + "s" * (n != 1)


def _cell(runs: Sequence[tuple[float, int | None, int]], digits: int) -> str:
    """``mean ± std (n)`` of the (value, fold, reruns left out) of a cell's runs; ``n`` names folds as folds."""
    if not runs:
        return "–"
    values = [v for v, _, _ in runs]
    folds = len({f for _, f, _ in runs} - {None})
    reruns = sum(r for _, _, r in runs)
    count = _plural(folds, "fold") if folds == len(values) else f"n={len(values)}" + (
        f": {_plural(folds, 'fold')}" if folds else "")
    count += f"; {_plural(reruns, 'rerun')} left out" if reruns else ""
    return f"{mean_std_text(values, digits)} ({count})"


def comparison_table(
    records: Sequence[dict[str, Any]], metric: str = "test_top1_err", digits: int | None = None
) -> str:
    """A markdown table of ``metric``: columns = criteria, rows = the rest of the experiment, cells = mean ± std (n).

    A row is one experiment but for its criterion, plus whether its records are tests of checkpoints; rows of
    one dataset and network that differ elsewhere are labelled by the keys in which they differ. Criteria that
    share a label but not an experiment (the label names numbers only: class weights differ) get rows of their
    own, labelled by the criterion keys in which they differ (``weight=[1.0, 5.0]``). Columns are
    sorted by label with cross-entropy (``CE``) first, as the paper's baseline column. Runs without ``metric``
    are left out of its cells. Each run counts once (`latest_runs`): a cell notes the reruns it left out, and
    says ``k folds`` when its runs are cross-validation folds.

    Args:
        records: as from `load_records`.
        metric: a key of each record's ``metrics``, e.g. ``"test_top1_err"`` (percent).
        digits: decimals in the cells; ``None``: 4 for ``test_nll``, ``test_ece`` and their temperature-scaled
            ``test_nll_ts``, ``test_ece_ts``, else 2.

    Returns:
        The table (a caption line, a blank line, then the markdown rows), without a final newline.

    Raises:
        ValueError: no record has ``metric`` (the message lists the metrics that are there).
    """
    digits = _DIGITS.get(metric.removesuffix(_SCALED), 2) if digits is None else digits
    kept, reruns = latest_runs(records)
    available = {name for r in kept for name in r["metrics"]}
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    cells: dict[tuple[tuple[str, str], str], list[tuple[float, int | None, int]]] = defaultdict(list)
    columns: dict[str, set[str]] = defaultdict(set)  # criterion label -> experiment ids with that label
    placed = []
    for record in kept:
        value = record["metrics"].get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        settings = _row_settings(record)
        row = (experiment_id(settings), str(record.get("command") or "fit"))
        column = str(record["criterion"].get("label") or record["criterion"].get("name") or "unknown")
        placed.append((record, float(value), settings, row, column))
    # a label names a criterion by its class and numbers only: experiments whose criteria differ in what the
    # label leaves out (class weights, a list of alphas) get rows of their own, never one cell
    in_cell: dict[tuple[tuple[str, str], str], set[str]] = defaultdict(set)
    for record, _, _, row, column in placed:
        in_cell[(row, column)].add(record["experiment"]["id"])
    for record, value, settings, row, column in placed:
        if len(in_cell[(row, column)]) > 1:
            settings = {**settings, **_criterion_settings(record)}
            row = (experiment_id(settings), row[1])
        dataset = str(record["dataset"])
        rows[row] = {"base": f"{dataset.removesuffix('DataModule') or dataset} / {record['backbone']}",
                     "settings": settings}
        columns[column].add(record["experiment"]["id"])
        cells[(row, column)].append((value, record.get("fold"), reruns.get(id(record), 0)))
    if not rows:
        raise ValueError(f"metric: expected one of {sorted(available)}, got {metric!r}")
    ordered = sorted(columns, key=lambda c: (not (c == "CE" or c.startswith("CE(")), c))
    labels = {}
    for row, info in rows.items():
        peers = [o["settings"] for r, o in rows.items() if o["base"] == info["base"] and r[0] != row[0]]
        diff = _differences(info["settings"], peers) if peers else ""
        labels[row] = info["base"] + (f" ({diff})" if diff else "") + (
            " [crl test]" if row[1] == "test" else "")
    unit = _unit(metric)
    lines = [
        f"{metric}{f' ({unit})' if unit else ''}: mean ± std over seeds or CV folds (n runs); "
        "a row is one experiment but for its criterion",
        "",
        "| experiment | " + " | ".join(ordered) + " |",
        "|---|" + "---|" * len(ordered),
    ]
    for row in sorted(rows, key=lambda r: (labels[r], r)):
        lines.append(f"| {labels[row]} | " + " | ".join(_cell(cells.get((row, c), []), digits) for c in ordered)
                     + " |")
    return "\n".join(lines)


def main(args: Sequence[str] | None = None) -> None:
    """``crl compare RUN_DIRS... [--metric NAME]... [--digits D] [--experiment ID|LABEL]``: print the tables.

    Raises:
        SystemExit: bad arguments, a missing path, no metrics file found, an unknown metric or experiment (code 2).
    """
    parser = argparse.ArgumentParser(
        prog="crl compare", allow_abbrev=False,
        description="Tabulate test metrics of runs (columns criteria, rows experiments, mean ± std over seeds). "
                    "A cell pools runs of one experiment only.",
    )
    parser.add_argument("runs", nargs="+", help=f"run folders (searched for {METRICS_FILENAME}) or metric files")
    parser.add_argument("--metric", action="append", default=None,
                        help="metric to tabulate, repeatable (default: test_top1_err); e.g. test_nll, test_ece "
                             "and, after temperature scaling on the validation split, test_nll_ts, test_ece_ts")
    parser.add_argument("--digits", type=int, default=None,
                        help="decimals in the cells (default: 4 for test_nll(_ts) and test_ece(_ts), else 2)")
    parser.add_argument("--experiment", default=None,
                        help="only the runs of this experiment: its id (or 4+ leading digits) or label")
    ns = parser.parse_args(list(sys.argv[1:] if args is None else args))
    try:
        records = load_records(ns.runs)
        if records and ns.experiment is not None:
            records = select_experiment(records, ns.experiment)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    if not records:
        parser.error(f"no {METRICS_FILENAME} under {ns.runs}; run `crl test` (or fit with --test_after_fit true)")
    tables = []
    for metric in ns.metric or ["test_top1_err"]:
        try:
            tables.append(comparison_table(records, metric, ns.digits))
        except ValueError as err:
            parser.error(str(err))
    print("\n\n".join(tables))
