"""CE vs CRL on real data that fits on a CPU: scikit-learn's 8x8 handwritten digits, several seeds, paired.

Each run is exactly ``crl fit --config examples/configs/digits_crl.yaml`` (pre-activation ResNet-20,
30 epochs, SGD Nesterov 0.9, wd 1e-4, lr 0.1 /10 at epochs 15 and 22, batch 64, CRL alpha=1.5 beta=1),
with ``--config examples/configs/overlays/ce.yaml`` for cross-entropy, and with seed ``s`` for both
``seed_everything`` (initialisation, shuffling) and the data split (``data.init_args.seed``). Seed ``s``
gives the same split and the same initial weights to both losses, so the comparison is paired. The
config tests the final weights on 360 test images.

Printed: per-seed test top-1 error (%), NLL (nats) and ECE (fraction), mean +- sample std per loss, the
paired CRL - CE differences, a paired t-test (``scipy.stats.ttest_rel``) and a Wilcoxon signed-rank
test (``scipy.stats.wilcoxon``). ``--out FILE.json`` also writes every number.

    python scripts/reproduce_digits.py                  # seeds 0..9, about 10 minutes on 2 CPU cores
    python scripts/reproduce_digits.py --seeds 0 1 2 3 4 --out digits.json

scikit-learn's digits are the only image classification data that ships inside the installed packages
(torchvision ships none; scikit-learn's other bundled sets are tabular; olivetti/LFW need a download).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "examples" / "configs" / "digits_crl.yaml"
CE_OVERLAY = REPO / "examples" / "configs" / "overlays" / "ce.yaml"
METRICS = ("test_top1_err", "test_nll", "test_ece")


def run_once(loss: str, seed: int, root: Path) -> dict[str, float]:
    """One ``crl fit`` of the digits config, then its test of the final weights; returns the test metrics."""
    from crl_lightning.cli import build_cli

    args = ["fit", "--config", str(CONFIG)]
    if loss == "ce":
        args += ["--config", str(CE_OVERLAY)]
    args += [
        "--seed_everything", str(seed), "--data.init_args.seed", str(seed),
        "--trainer.default_root_dir", str(root / f"{loss}_seed{seed}"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.logger", "false", "--test_after_fit", "false",
    ]
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli = build_cli(args)
        trainer, model, data = cli.trainer, cli.model, cli.datamodule
        result = trainer.test(model, datamodule=data, ckpt_path=None, verbose=False)[0]
    metrics = {k: float(v) for k, v in result.items() if k in METRICS}
    if "test_top1_err" not in metrics:
        raise RuntimeError(f"{loss} seed {seed}: no test metrics were logged; output:\n{sink.getvalue()[-2000:]}")
    return metrics


def summarize(results: dict[str, dict[int, dict[str, float]]], seeds: list[int]) -> dict:
    """Mean, sample std, paired differences and tests for every metric present in both losses."""
    from scipy import stats

    summary: dict = {}
    for metric in METRICS:
        if not all(metric in results[loss][s] for loss in ("ce", "crl") for s in seeds):
            continue
        ce = [results["ce"][s][metric] for s in seeds]
        crl = [results["crl"][s][metric] for s in seeds]
        diff = [b - a for a, b in zip(ce, crl, strict=True)]
        entry = {
            "ce_mean": statistics.fmean(ce), "ce_std": statistics.stdev(ce) if len(ce) > 1 else math.nan,
            "crl_mean": statistics.fmean(crl), "crl_std": statistics.stdev(crl) if len(crl) > 1 else math.nan,
            "diff_mean": statistics.fmean(diff), "diff_std": statistics.stdev(diff) if len(diff) > 1 else math.nan,
            "crl_better": sum(d < 0 for d in diff), "ce_better": sum(d > 0 for d in diff),
            "ties": sum(d == 0 for d in diff),
        }
        if len(seeds) > 1 and any(d != 0 for d in diff):
            entry["ttest_rel_p"] = float(stats.ttest_rel(crl, ce).pvalue)
            entry["wilcoxon_p"] = float(stats.wilcoxon(crl, ce).pvalue)
        summary[metric] = entry
    return summary


def main(argv: list[str] | None = None) -> dict:
    import logging

    import lightning.pytorch  # noqa: F401 - sets up its loggers, which are quieted next

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)), help="seeds (>= 5 advised)")
    parser.add_argument("--out", type=Path, default=None, help="write all numbers to this JSON file")
    args = parser.parse_args(argv)
    seeds = list(dict.fromkeys(args.seeds))
    results: dict[str, dict[int, dict[str, float]]] = {"ce": {}, "crl": {}}
    with tempfile.TemporaryDirectory(prefix="crl_digits_") as tmp:
        for seed in seeds:
            for loss in ("ce", "crl"):
                start = time.perf_counter()
                results[loss][seed] = run_once(loss, seed, Path(tmp))
                shown = ", ".join(f"{k} {v:.3f}" for k, v in results[loss][seed].items())
                print(f"seed {seed} {loss:>3}: {shown}  ({time.perf_counter() - start:.0f} s)", flush=True)
    summary = summarize(results, seeds)

    print(f"\nDigits (360 test images), preact_resnet20, 30 epochs, {len(seeds)} paired seeds {seeds}")
    print("| metric | CE mean +- std | CRL mean +- std | CRL - CE mean +- std | CRL better / CE better / tie "
          "| paired t p | Wilcoxon p |")
    print("|---|---|---|---|---|---|---|")
    for metric, e in summary.items():
        print(f"| {metric} | {e['ce_mean']:.3f} +- {e['ce_std']:.3f} | {e['crl_mean']:.3f} +- {e['crl_std']:.3f} "
              f"| {e['diff_mean']:+.3f} +- {e['diff_std']:.3f} | {e['crl_better']} / {e['ce_better']} / {e['ties']} "
              f"| {e.get('ttest_rel_p', math.nan):.3g} | {e.get('wilcoxon_p', math.nan):.3g} |")
    report = {"config": str(CONFIG.relative_to(REPO)), "seeds": seeds,
              "results": {loss: {str(s): r for s, r in runs.items()} for loss, runs in results.items()},
              "summary": summary}
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
