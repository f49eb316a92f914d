"""What the ``crl`` command does, observed: which weights ``--test_after_fit`` tests, which W&B job type
each subcommand gets, and the numbers a short run must produce (digits config, CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from crl_lightning import ImageClassifier
from crl_lightning.cli import build_cli
from crl_lightning.runs import METRICS_FILENAME

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "examples" / "configs" / "digits_crl.yaml")
WANDB = str(ROOT / "examples" / "configs" / "wandb.yaml")


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["crl"])


class SpoilLastEpoch(L.Callback):
    """Zero the classifier head when the last epoch's validation starts: every prediction becomes class 0.

    The last epoch's validation error then is that of a constant guess (about 90 % on the digits), so a
    checkpoint that monitors ``val_top1_err`` keeps an earlier epoch, while the weights in memory at the
    end of fit are the spoiled ones.
    """

    final_weights: dict | None = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == trainer.max_epochs - 1:
            with torch.no_grad():
                pl_module.backbone.fc.weight.zero_()
                pl_module.backbone.fc.bias.zero_()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.final_weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def top1_err(model: torch.nn.Module, loader) -> float:
    """Test top-1 error in percent of ``model`` on ``loader``, counted here sample by sample."""
    model.eval()
    wrong = total = 0
    with torch.no_grad():
        for images, target in loader:
            wrong += int((model(images).argmax(dim=1) != target).sum())
            total += len(target)
    return 100.0 * wrong / total


def test_test_after_fit_tests_the_monitored_best_checkpoint(tmp_path):
    overlay = tmp_path / "best.yaml"
    overlay.write_text(yaml.safe_dump({"trainer": {"callbacks": [
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"monitor": "val_top1_err", "mode": "min", "save_top_k": 1}},
        {"class_path": f"{__name__}.SpoilLastEpoch"},
    ]}}))
    cli = build_cli(["fit", "--config", DIGITS, "--config", str(overlay), "--test_after_fit", "true",
                     "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "10",
                     "--trainer.num_sanity_val_steps", "0", "--trainer.default_root_dir", str(tmp_path / "run"),
                     "--trainer.enable_progress_bar", "false"])
    trainer, checkpoint = cli.trainer, cli.trainer.checkpoint_callback
    assert checkpoint.monitor == "val_top1_err"
    assert Path(checkpoint.best_model_path).name == "epoch=0-step=10.ckpt"  # the spoiled epoch 1 is worse
    assert trainer.global_step == 20
    loader = cli.datamodule.test_dataloader()
    best = ImageClassifier.load_from_checkpoint(checkpoint.best_model_path)
    (spoiler,) = [cb for cb in trainer.callbacks if isinstance(cb, SpoilLastEpoch)]
    final = ImageClassifier.load_from_checkpoint(checkpoint.best_model_path)
    final.load_state_dict(spoiler.final_weights)
    best_err, final_err = top1_err(best, loader), top1_err(final, loader)
    targets = torch.cat([y for _, y in loader])
    assert final_err == pytest.approx(100.0 * float((targets != 0).float().mean()))  # a constant guess of 0
    assert best_err < 60.0 < final_err  # 10 steps of SGD learnt something
    tested = float(trainer.callback_metrics["test_top1_err"])
    assert tested == pytest.approx(best_err, abs=1e-4)  # the best checkpoint was tested, not the final weights
    report = json.loads(next((tmp_path / "run").rglob(METRICS_FILENAME)).read_text())
    assert report["ckpt_path"] == checkpoint.best_model_path and report["num_samples"] == 360
    assert report["metrics"]["test_top1_err"] == pytest.approx(best_err, abs=1e-4)


def test_test_after_fit_without_monitor_tests_the_last_epoch(tmp_path):
    """Without a monitor the saved checkpoint is the last epoch's: the final weights are tested."""
    cli = build_cli(["fit", "--config", DIGITS, "--test_after_fit", "true", "--trainer.max_epochs", "1",
                     "--trainer.limit_train_batches", "10", "--trainer.num_sanity_val_steps", "0",
                     "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar", "false",
                     "--model.init_args.test_report", "false"])
    checkpoint = cli.trainer.checkpoint_callback
    assert checkpoint.monitor is None and Path(checkpoint.best_model_path).name == "epoch=0-step=10.ckpt"
    err = top1_err(cli.model, cli.datamodule.test_dataloader())
    assert float(cli.trainer.callback_metrics["test_top1_err"]) == pytest.approx(err, abs=1e-4)
    assert err < 60.0  # 10 steps of SGD on the digits: far better than the 90 % of a constant guess


# ----- W&B: job_type is the subcommand --------------------------------------------------------------------
@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_wandb_job_type_is_the_subcommand(subcommand, tmp_path, monkeypatch):
    """The value handed to ``wandb.init``, read before any W&B run starts (the Trainer method is stubbed)."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    calls = []
    monkeypatch.setattr(L.Trainer, subcommand, lambda self, *args, **kwargs: calls.append(subcommand))
    extra = ["--test_after_fit", "false"] if subcommand == "fit" else []
    cli = build_cli([subcommand, "--config", DIGITS, "--config", WANDB, *extra,
                     "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])
    assert calls == [subcommand]
    (logger,) = cli.trainer.loggers
    assert logger._experiment is None  # nothing started
    init = logger._wandb_init
    assert init["job_type"] == subcommand
    label = "Digits/preact_resnet20/CRL(alpha=1.5, beta=1)"
    assert init["group"] == f"{label} #{init['config']['crl']['experiment']['id']}" and init["name"] == label + "/seed0"
