"""End-to-end checks of the ``crl`` command on the digits config: fit, print_config, criterion swap,
checkpoint round-trip, and a user subclass."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from crl_lightning import ImageClassifier
from crl_lightning.cli import build_cli, main
from crl_lightning.losses import CompetingRatioLoss, FocalLoss

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "examples" / "configs" / "digits_crl.yaml")


def fast(tmp_path: Path) -> list[str]:
    return ["--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
            "--test_after_fit", "false"]


def print_config(args: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_fit_fast_dev_run_on_digits(tmp_path):
    cli = build_cli(["fit", "--config", DIGITS, *fast(tmp_path), "--trainer.fast_dev_run", "1"])
    trainer, model = cli.trainer, cli.model
    # fast_dev_run saves no checkpoint of its own; Lightning 2.6's ModelCheckpoint(save_last=True) still writes
    # last.ckpt when training ends
    assert trainer.global_step == 1 and [p.name for p in tmp_path.rglob("*.ckpt")] == ["last.ckpt"]
    # one step from the initial weights: predictions still near uniform, where CRL(1.5, 1) is
    # log 10 + log(1.5 + 1 - 1/10) = 3.18 (cross-entropy alone would be log 10 = 2.30)
    assert abs(float(trainer.callback_metrics["train_loss"]) - (math.log(10) + math.log(2.4))) < 0.3
    # val_top1_err: percent wrong on the one validation batch of 64, recounted here
    images, target = next(iter(cli.datamodule.val_dataloader()))
    model.eval()
    with torch.no_grad():
        wrong = int((model(images).argmax(dim=1) != target).sum())
    assert len(target) == 64 and float(trainer.callback_metrics["val_top1_err"]) == pytest.approx(100 * wrong / 64)
    assert "test_top1_err" not in trainer.callback_metrics  # --test_after_fit false


def test_print_config_round_trips(tmp_path, capsys):
    cfg = print_config(["--config", DIGITS], capsys)
    criterion = cfg["model"]["init_args"]["criterion"]
    assert criterion["class_path"] == "crl_lightning.losses.CompetingRatioLoss"
    assert criterion["init_args"]["alpha"] == 1.5 and criterion["init_args"]["beta"] == 1.0
    assert cfg["data"]["class_path"] == "crl_lightning.data.DigitsDataModule"
    saved = tmp_path / "round.yaml"
    saved.write_text(yaml.safe_dump(cfg))
    assert print_config(["--config", str(saved)], capsys) == cfg


def test_criterion_swap_to_cross_entropy_does_not_leak_init_args(capsys):
    cfg = print_config(["--config", DIGITS, "--model.init_args.criterion", "torch.nn.CrossEntropyLoss"], capsys)
    criterion = cfg["model"]["init_args"]["criterion"]
    assert criterion["class_path"] == "torch.nn.CrossEntropyLoss"
    assert "alpha" not in criterion.get("init_args", {}) and "beta" not in criterion.get("init_args", {})


def test_checkpoint_restores_the_criterion(tmp_path):
    main(["fit", "--config", DIGITS, *fast(tmp_path), "--trainer.max_epochs", "1",
          "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
          "--model.init_args.criterion", "crl_lightning.losses.FocalLoss",
          "--model.init_args.criterion.init_args.gamma", "3.0"])
    ckpt = next(tmp_path.rglob("*.ckpt"))
    model = ImageClassifier.load_from_checkpoint(ckpt)
    assert isinstance(model.criterion, FocalLoss) and model.criterion.gamma == 3.0
    assert model.hparams.in_chans == 1 and model.hparams.num_classes == 10
    # the optimizer and scheduler of the config are restored too
    group = model.optimizer_factory(model.parameters()).param_groups[0]
    assert (group["lr"], group["nesterov"], group["weight_decay"]) == (0.1, True, 1e-4)


def test_plain_python_checkpoint_refuses_a_silent_criterion_default(tmp_path):
    import lightning as L

    from crl_lightning.data import DigitsDataModule

    model = ImageClassifier("preact_resnet20", num_classes=10, in_chans=1, criterion=FocalLoss(gamma=1.0))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, default_root_dir=tmp_path,
                        enable_progress_bar=False, logger=False, enable_model_summary=False)
    trainer.fit(model, DigitsDataModule(batch_size=16))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    with pytest.raises(ValueError, match="trained with FocalLoss"):
        ImageClassifier.load_from_checkpoint(path)
    restored = ImageClassifier.load_from_checkpoint(path, criterion=FocalLoss(gamma=1.0))
    assert restored.criterion.gamma == 1.0


def test_default_criterion_and_schedule():
    model = ImageClassifier("preact_resnet20", num_classes=10)
    assert isinstance(model.criterion, CompetingRatioLoss)
    assert (model.criterion.alpha, model.criterion.beta) == (1.5, 1.0)

    class FakeTrainer:
        max_epochs = 300

    model._trainer = FakeTrainer()
    config = model.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.1, 0.9, True, 1e-4)
    assert dict(sched.milestones) == {150: 1, 225: 1} and sched.gamma == 0.1


def test_top_k_larger_than_num_classes_is_a_config_error():
    with pytest.raises(ValueError, match="top_k: expected 1 <= k <= num_classes=2, got 5"):
        ImageClassifier("preact_resnet20", num_classes=2, top_k=(1, 5))
    assert ImageClassifier("preact_resnet20", num_classes=2).top_k == (1,)  # the default adapts
    assert ImageClassifier("preact_resnet20", num_classes=10).top_k == (1, 5)


def test_criterion_must_be_a_module():
    with pytest.raises(TypeError, match=r"criterion: expected an nn.Module.*create_criterion\('crl'\), got str 'crl'"):
        ImageClassifier("preact_resnet20", num_classes=10, criterion="crl")


def test_checkpoint_loads_with_either_compile_setting():
    plain = ImageClassifier("preact_resnet20", num_classes=10)
    compiled = ImageClassifier("preact_resnet20", num_classes=10, compile=True)
    assert all(k.startswith(("backbone.", "train_", "val_", "test_")) for k in compiled.state_dict())
    plain.load_state_dict(compiled.state_dict())
    compiled.load_state_dict(plain.state_dict())


def test_subclass_runs_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    cli = build_cli(["fit", "--config", DIGITS, *fast(tmp_path), "--trainer.fast_dev_run", "1",
                     "--model", "subclass_classifier.ConfidencePenaltyClassifier", "--model.init_args.penalty", "0.2"])
    from subclass_classifier import ConfidencePenaltyClassifier

    assert type(cli.model) is ConfidencePenaltyClassifier and cli.model.penalty == 0.2
    assert isinstance(cli.model.criterion, CompetingRatioLoss) and cli.trainer.global_step == 1

    model = ConfidencePenaltyClassifier(penalty=0.5, backbone="preact_resnet20", num_classes=10, in_chans=1)
    logits, target = torch.zeros(4, 10), torch.tensor([0, 1, 2, 3])
    entropy = torch.log(torch.tensor(10.0))
    want = model.criterion(logits, target) - 0.5 * entropy
    torch.testing.assert_close(model.compute_loss(logits, target, None), want)


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "crl_lightning", "fit", "--help"], capture_output=True, text=True,
                         timeout=120, check=True)
    assert "--model.help" in out.stdout or "--model CONFIG" in out.stdout
