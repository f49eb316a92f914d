"""Exact resume: a run resumed from an epoch-end checkpoint equals the uninterrupted run (`RandomState`), also
after a ``crl fit`` process is killed mid-epoch and resumed with ``--ckpt_path last``."""

from __future__ import annotations

import csv
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crl_lightning.cli import build_cli, main
from crl_lightning.runs import newest_last_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "examples" / "configs" / "digits_crl.yaml")


def _fit(root: Path, epochs: int, *extra: str):
    return build_cli(["fit", "--config", DIGITS, "--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches",
                      "4", "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false",
                      "--test_after_fit", "false", "--model.init_args.lr_scheduler.init_args.milestones", "[2, 3]",
                      "--data.init_args.augment.mixup_alpha", "0.4", "--trainer.default_root_dir", str(root), *extra])


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


def _crl_fit(root: Path, *extra: str) -> list[str]:
    """``crl fit``: 3 digits epochs (20 steps each, lr /10 after epochs 1 and 2), CSV logs flushed every step."""
    return [sys.executable, "-m", "crl_lightning", "fit", "--config", DIGITS, "--trainer.max_epochs", "3",
            "--model.init_args.lr_scheduler.init_args.milestones", "[1, 2]", "--test_after_fit", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(root),
            "--trainer.logger.flush_logs_every_n_steps", "1", "--trainer.default_root_dir", str(root), *extra]


def _logged_epochs(metrics_csv: Path) -> set[int]:
    """Epochs with a logged training step in a CSVLogger file being written (complete lines only)."""
    text = metrics_csv.read_text() if metrics_csv.exists() else ""
    rows = csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1]))
    return {int(row["epoch"]) for row in rows if row.get("train_loss_step")}


def _wait(process: subprocess.Popen, condition, what: str) -> None:
    deadline = time.monotonic() + 300
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the crl fit process ended or timed out before {what}:\n{process.communicate()[0][-3000:]}")
        time.sleep(0.02)


@pytest.mark.slow
def test_a_fit_killed_mid_epoch_resumes_with_ckpt_path_last_to_the_same_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same threads in every process: same float sums
    run = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True, "env": env}
    whole = subprocess.Popen(_crl_fit(tmp_path / "whole"), **run)
    killed = subprocess.Popen(_crl_fit(tmp_path / "killed"), **run)
    version_0 = tmp_path / "killed" / "lightning_logs" / "version_0"
    _wait(killed, lambda: 1 in _logged_epochs(version_0 / "metrics.csv"), "a training step of epoch 1")
    killed.send_signal(signal.SIGTERM)  # Lightning stops after the current batch
    output = killed.communicate(timeout=120)[0]
    assert "Received SIGTERM" in output and "max_epochs=3` reached" not in output
    saved = torch.load(version_0 / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 20  # the end of epoch 0; epoch 1 was cut short
    # a new run folder (version_1): only --ckpt_path last finds version_0's checkpoint
    resumed = subprocess.run(_crl_fit(tmp_path / "killed", "--ckpt_path", "last"), **run, check=False)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"Restoring states from the checkpoint path at {version_0 / 'checkpoints' / 'last.ckpt'}" in resumed.stdout
    assert _logged_epochs(version_0.with_name("version_1") / "metrics.csv") == {1, 2}
    assert whole.wait(timeout=300) == 0, whole.communicate()[0][-3000:]
    final = [torch.load(newest_last_checkpoint(tmp_path / name), weights_only=True) for name in ("whole", "killed")]
    assert "version_1" in str(newest_last_checkpoint(tmp_path / "killed"))
    assert final[0]["global_step"] == final[1]["global_step"] == 60
    a, b = final[0]["state_dict"], final[1]["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    assert final[0]["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-3)  # both milestones


def test_ckpt_path_last_without_a_checkpoint_says_where_it_looked(tmp_path, plain_argv):
    expected = f"ckpt_path: expected a last.ckpt under trainer.default_root_dir ({tmp_path}) to resume from, found none"
    with pytest.raises(FileNotFoundError, match=re.escape(expected)):
        main(["fit", "--config", DIGITS, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", "last"])


def test_newest_last_checkpoint_is_the_latest_over_all_run_folders(tmp_path):
    files = [tmp_path / "lightning_logs" / f"version_{v}" / "checkpoints" / "last.ckpt" for v in range(3)]
    for k, path in enumerate(files):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
        os.utime(path, (1000 + k, [1000, 3000, 2000][k]))
    (tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "epoch=9-step=90.ckpt").write_bytes(b"")
    assert newest_last_checkpoint(tmp_path) == files[1]
    assert newest_last_checkpoint(tmp_path / "absent") is None
