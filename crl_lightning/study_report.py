"""The tables, paired tests and figures of a ``crl study`` (``study.json``, ``study.md``, the PNGs).

`study_report` computes, from the runs' test metrics, the per-criterion summaries, the paired comparisons against
the first criterion (95 % CI, paired t and Wilcoxon p-values, Holm-adjusted over the table, power), the per-class
differences and the pairing check; `format_study` writes them as markdown; `save_curves` and
`save_paired_differences` draw the figures (`crl_lightning.figures`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crl_lightning.runs import read_history
from crl_lightning.statistics import (
    MIN_PAIRS_FOR_TEST,
    holm_adjust,
    min_detectable_difference,
    paired_comparison,
    seeds_needed,
    summarize,
)

__all__ = ["DIGITS", "METRICS", "TOP_CLASSES", "format_study", "overhead_line", "per_class_differences", "save_curves",
           "save_paired_differences", "study_report"]

#: The metrics the study tabulates: test_metrics.json key -> (label, unit).
METRICS = {
    "test_top1_err": ("test top-1 error", "%"),
    "test_nll": ("test NLL", "nats"),
    "test_ece": ("test ECE", "fraction"),
    "test_nll_ts": ("test NLL, temperature-scaled", "nats"),
    "test_ece_ts": ("test ECE, temperature-scaled", "fraction"),
}
#: Decimals of each metric in the tables.
DIGITS = {"test_top1_err": 2, "test_nll": 4, "test_ece": 4, "test_nll_ts": 4, "test_ece_ts": 4}
#: Classes listed per criterion in the per-class section ("where it helps").
TOP_CLASSES = 3


def overhead_line(overhead: dict[str, Any]) -> str:
    """One line on the first trained run's first epoch against its later ones (compile and warm-up)."""
    head = (f"first run trained in this call ({overhead['criterion']}, seed {overhead['seed']}): first epoch "
            f"{overhead['first_epoch_s']:.1f} s")
    if overhead["overhead_s"] is None:
        return head + " (one epoch: no later epoch to compare; torch.compile time not separable)"
    return (head + f", later epochs {overhead['later_median_s']:.1f} s (median): about {overhead['overhead_s']:.1f} s "
            "of warm-up (torch.compile's compilation included when the model compiles)")


def study_report(runs: Sequence[dict[str, Any]], labels: Sequence[str], seeds: Sequence[int]) -> dict[str, Any]:
    """Per-criterion summaries, paired comparisons against ``labels[0]``, per-class differences, the pairing check.

    Each paired comparison (`crl_lightning.statistics.paired_comparison`) also gets ``seeds``, ``diffs``
    (criterion − reference per seed), ``note`` (``"n < 3: no test is meaningful"``, else ``None``), ``power``
    (``None`` for n < 3, else ``mdd_80``: the smallest true difference detectable at 80 % power with this n,
    from the observed SD of the differences, in the metric's unit; ``seeds_needed``: the fewest seeds for 80 %
    power at the observed mean difference, ``None`` for more than 1000) and ``t_pvalue_holm`` /
    ``wilcoxon_pvalue_holm``: Holm-adjusted over every criterion x metric of the table with n >= 3 (the t-tests
    one family, the Wilcoxon tests another).

    Args:
        runs: one dict per run with ``criterion``, ``seed``, ``metrics`` and ``fingerprint`` (and
            ``per_class_acc``/``class_names`` for the per-class differences).
        labels: the criteria, the first being the reference.
        seeds: the seeds.

    Returns:
        ``{"summary": {criterion: {metric: summarize}}, "paired": {criterion: {metric: comparison}},
        "correction": {"method", "family", "tests"}, "per_class": per_class_differences,
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
            base, other = [value[(labels[0], s, m)] for s in both], [value[(label, s, m)] for s in both]
            c = {"seeds": both, "diffs": [o - b for b, o in zip(base, other, strict=True)],
                 **paired_comparison(base, other)}
            meaningful = c["n"] >= MIN_PAIRS_FOR_TEST
            c["note"] = None if meaningful else f"n < {MIN_PAIRS_FOR_TEST}: no test is meaningful"
            c["power"] = {"mdd_80": min_detectable_difference(c["std_diff"], c["n"]),
                          "seeds_needed": seeds_needed(c["mean_diff"], c["std_diff"])} if meaningful else None
            paired[label][m] = c
    comparisons = [c for by_metric in paired.values() for c in by_metric.values()]
    tested = [c for c in comparisons if c["note"] is None]
    for key in ("t_pvalue", "wilcoxon_pvalue"):
        adjusted = dict(zip(map(id, tested), holm_adjust([c[key] for c in tested]), strict=True))
        for c in comparisons:
            c[f"{key}_holm"] = adjusted.get(id(c))
    correction = {"method": "holm", "tests": sum(c["t_pvalue"] is not None for c in tested),
                  "family": "all criteria x metrics of the paired table with n >= 3; the paired t-tests one "
                            "family, the Wilcoxon tests another"}
    mismatches = []
    for seed in seeds:
        prints = {r["criterion"]: r.get("fingerprint") or {} for r in runs if r["seed"] == seed}
        for key in ("weights", "first_batch"):
            found = {label: p.get(key) for label, p in prints.items()}
            if len(set(found.values())) > 1 or None in found.values():
                mismatches.append({"seed": seed, "what": key, "values": found})
    return {"summary": summary, "paired": paired, "correction": correction,
            "per_class": per_class_differences(runs, labels, seeds),
            "pairing": {"ok": not mismatches, "mismatches": mismatches}}


def per_class_differences(
    runs: Sequence[dict[str, Any]], labels: Sequence[str], seeds: Sequence[int], top: int = TOP_CLASSES
) -> dict[str, list[dict[str, Any]]]:
    """Per criterion, the ``top`` classes whose test error changed most against ``labels[0]``.

    The per-class error is ``100 - per_class_acc`` (percent, from each run's ``test_metrics.json``); the
    difference is criterion − reference per seed, averaged over the seeds where both runs have the class.

    Returns:
        ``{criterion: [{"class", "name", "n", "mean_diff", "reference_err", "criterion_err"}, ...]}``, the
        classes sorted by decreasing ``|mean_diff|`` (percentage points; negative = lower error than the
        reference); an empty list when the runs recorded no per-class accuracy.
    """
    acc = {(r["criterion"], r["seed"]): r.get("per_class_acc") for r in runs}
    names = next((r["class_names"] for r in runs if r.get("class_names")), None)
    result: dict[str, list[dict[str, Any]]] = {}
    for label in labels[1:]:
        pairs: dict[int, list[tuple[float, float]]] = {}
        for seed in seeds:
            ref, other = acc.get((labels[0], seed)), acc.get((label, seed))
            if ref is None or other is None or len(ref) != len(other):
                continue
            for c, (a, b) in enumerate(zip(ref, other, strict=True)):
                if a is not None and b is not None and not (math.isnan(a) or math.isnan(b)):
                    pairs.setdefault(c, []).append((100.0 - a, 100.0 - b))
        rows: list[dict[str, Any]] = [
            {"class": c, "name": names[c] if names and c < len(names) else str(c), "n": len(v),
             "mean_diff": statistics.fmean(b - a for a, b in v),
             "reference_err": statistics.fmean(a for a, _ in v), "criterion_err": statistics.fmean(b for _, b in v)}
            for c, v in pairs.items()]
        result[label] = sorted(rows, key=lambda r: (-abs(r["mean_diff"]), r["class"]))[:top]
    return result


def _fmt(x: float | None, digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _p(x: float | None) -> str:
    return "–" if x is None else (f"{x:.3f}" if x >= 0.001 else f"{x:.1e}")


def _power_line(label: str, name: str, unit: str, c: dict[str, Any], digits: int) -> str:
    """One bullet of the power section for the comparison ``c`` (see `study_report`)."""
    if c["power"] is None:
        return f"- {label}, {name}: {c['note']} (n = {c['n']})"
    needed = c["power"]["seeds_needed"]
    needed_text = "> 1000 seeds" if needed is None else f"{needed} seeds"
    return (f"- {label}, {name}: with n = {c['n']} seeds the smallest difference detectable at 80 % power is "
            f"{c['power']['mdd_80']:.{digits}f} {unit} (observed SD of the differences "
            f"{_fmt(c['std_diff'], digits)}); the observed difference {c['mean_diff']:+.{digits}f} would need "
            f"{needed_text}")


def format_study(study: dict[str, Any]) -> str:
    """The markdown report (``study.md``): protocol, tables (paired, Holm, power, per class), runs, figures."""
    labels, seeds = study["criteria"], study["seeds"]
    digits = DIGITS
    environment = study["environment"]
    lines = [
        "# crl study" + ("" if study.get("complete", True) else " (INCOMPLETE)"),
        "",
        f"Command: `crl study {' '.join(study['base_args'])} --criteria {' '.join(labels)} "
        f"--seeds {','.join(map(str, seeds))}`",
        f"Created {study['created']}; run time {study['runs_wall_s'] / 60:.1f} min (sum of the runs' fit + test), "
        f"{environment['machine']}, {environment['cpu_threads']} threads, "
        f"GPU: {environment['cuda'] or 'none'}, torch {environment['torch']}.",
    ]
    if not study.get("complete", True):
        left = ", ".join(f"{r['criterion']}/seed {r['seed']}" for r in study["remaining"])
        lines += ["", f"**Incomplete**: stopped at the wall budget ({study['budget_min']} min) before "
                      f"{len(study['remaining'])} runs ({left}); run the same command again to resume. The tables "
                      "below hold the runs done so far."]
    if study.get("first_run_overhead"):
        lines += ["", "Warm-up: " + overhead_line(study["first_run_overhead"]) + "."]
    unfitted = [r for r in study["runs"] if r.get("temperature") is None]
    lines += ["", "Temperature scaling (Guo et al. 2017): after fit, one temperature T per run is fitted on the "
                  "validation split (minimum NLL) with the tested weights; the *temperature-scaled* metrics are "
                  "the NLL and ECE of softmax(logits / T) on the test split. T does not change the top-1 error."]
    if unfitted:
        notes = sorted({str(r.get("temperature_note")) for r in unfitted})
        lines[-1] += f" Not fitted for {len(unfitted)} of {len(study['runs'])} runs: {'; '.join(notes)}."
    lines += [
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
        correction = study["correction"]
        lines += [
            "",
            f"## Paired differences against {labels[0]} (criterion − {labels[0]}, per seed; negative = lower)",
            "",
            "| criterion | metric | n | mean diff | 95 % CI | paired t p | Holm t p | Wilcoxon p | Holm Wilcoxon p "
            "| lower / higher / tie |",
            "|---|---|---:|---:|---|---:|---:|---:|---:|---|",
        ]
        for label in labels[1:]:
            for m, (name, unit) in METRICS.items():
                c = study["paired"][label][m]
                d = digits[m]
                tests = (f"[{_fmt(c['ci_low'], d)}, {_fmt(c['ci_high'], d)}] | {_p(c['t_pvalue'])} | "
                         f"{_p(c['t_pvalue_holm'])} | {_p(c['wilcoxon_pvalue'])} | {_p(c['wilcoxon_pvalue_holm'])}"
                         if c["note"] is None else f"{c['note']} | – | – | – | –")
                lines.append(f"| {label} | {name} ({unit}) | {c['n']} | {_fmt(c['mean_diff'], d)} | {tests} | "
                             f"{c['lower']} / {c['higher']} / {c['ties']} |")
        lines += ["", f"Multiple comparisons: Holm's step-down correction over the {correction['tests']} paired "
                      f"t-tests of this table ({correction['family']}); the raw p-values are beside them.",
                  "", "### Power (paired t-test, two-sided, alpha 0.05, 80 % power, from the observed SD)", ""]
        for label in labels[1:]:
            for m, (name, unit) in METRICS.items():
                lines.append(_power_line(label, name, unit, study["paired"][label][m], digits[m]))
        lines += ["", f"## Where it helps: per-class test error, criterion − {labels[0]} (percentage points, "
                      f"mean over seeds; the {TOP_CLASSES} classes with the largest |difference|)", "",
                  f"| criterion | class | {labels[0]} error (%) | criterion error (%) | difference | seeds |",
                  "|---|---|---:|---:|---:|---:|"]
        for label in labels[1:]:
            rows = study["per_class"].get(label) or []
            if not rows:
                lines.append(f"| {label} | (no per-class accuracy recorded) | – | – | – | – |")
            for row in rows:
                lines.append(f"| {label} | {row['name']} | {row['reference_err']:.2f} | {row['criterion_err']:.2f} | "
                             f"{row['mean_diff']:+.2f} | {row['n']} |")
    pairing = study["pairing"]
    lines += ["", "Pairing: " + ("every seed gave all criteria the same initial weights and the same first "
                                 "training batch." if pairing["ok"] else
                                 f"NOT PAIRED for {len(pairing['mismatches'])} checks (see study.json)."),
              "", "## Runs", "",
              "| criterion | seed | " + " | ".join(f"{lbl} ({unit})" for lbl, unit in METRICS.values())
              + " | T | epochs | wall (s) | folder |",
              "|---|---:|" + "---:|" * len(METRICS) + "---:|---:|---:|---|"]
    for r in study["runs"]:
        cells = [_fmt(r["metrics"].get(m), digits[m]) for m in METRICS]
        lines.append(f"| {r['criterion']} | {r['seed']} | " + " | ".join(cells)
                     + f" | {_fmt(r.get('temperature'), 3)} | {r['epochs']} | {r['wall_s']:.0f} | {r['dir']} |")
    lines += ["", "![validation top-1 error per epoch](curves.png)", ""]
    if labels[1:]:
        lines += [f"![paired differences per seed against {labels[0]}](paired_differences.png)", ""]
    return "\n".join(lines)


def save_paired_differences(study: dict[str, Any], path: Path) -> Path | None:
    """``paired_differences.png``: the per-seed differences of every criterion x metric; None without any."""
    from crl_lightning.figures import paired_differences_figure, save_figure

    reference = study["criteria"][0]
    rows = [(f"{label} − {reference}\n{name} ({unit})", c["diffs"], c["mean_diff"], c["ci_low"], c["ci_high"])
            for label, by_metric in study["paired"].items() for m, (name, unit) in METRICS.items()
            if (c := by_metric[m])["diffs"]]
    if not rows:
        return None
    fig = paired_differences_figure(rows, title=f"Paired differences per seed (criterion − {reference}), 95 % t CI")
    tmp = path.with_name(f".{path.name}.tmp.png")
    save_figure(fig, tmp).replace(path)
    return path


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
