"""Exact resume: a run resumed from an epoch-end checkpoint equals the uninterrupted run (EpochSeed)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from crl_lightning.cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "examples" / "configs" / "digits_crl.yaml")


def _fit(root: Path, epochs: int, *extra: str):
    return build_cli(["fit", "--config", DIGITS, "--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches",
                      "4", "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false",
                      "--test_after_fit", "false", "--model.init_args.lr_scheduler.init_args.milestones", "[2, 3]",
                      "--data.init_args.mixup_alpha", "0.4", "--trainer.default_root_dir", str(root), *extra])


def test_resumed_run_equals_the_uninterrupted_one_bit_for_bit(tmp_path):
    whole = _fit(tmp_path / "whole", 4)
    first = _fit(tmp_path / "part", 2)
    ckpt = next((tmp_path / "part").rglob("*.ckpt"))
    resumed = _fit(tmp_path / "resumed", 4, "--ckpt_path", str(ckpt))
    assert resumed.trainer.global_step == whole.trainer.global_step == 16 and first.trainer.global_step == 8
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # weights and BatchNorm buffers, bit for bit
    opt_a, opt_b = whole.trainer.optimizers[0].state_dict(), resumed.trainer.optimizers[0].state_dict()
    for k in opt_a["state"]:
        assert torch.equal(opt_a["state"][k]["momentum_buffer"], opt_b["state"][k]["momentum_buffer"])
    rows_a = list(csv.DictReader(open(next((tmp_path / "whole").rglob("history.csv")))))
    rows_b = list(csv.DictReader(open(next((tmp_path / "resumed").rglob("history.csv")))))
    metrics = ["epoch", "step", "lr", "train_loss", "val_loss", "val_top1_err"]
    assert [{m: r[m] for m in metrics} for r in rows_a] == [{m: r[m] for m in metrics} for r in rows_b]
