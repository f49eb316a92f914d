"""Augmentations set from YAML / the command line: MixUp/CutMix soft targets through CRL, per-image policies, EMA."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml
from torchvision.transforms import v2

from crl_lightning.cli import build_cli, main
from crl_lightning.data import Augmentation, DigitsDataModule

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "examples" / "configs" / "digits_crl.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--test_after_fit", "false"]


class _Training:
    training = True


def _training_batch(dm: DigitsDataModule) -> list[torch.Tensor]:
    dm.setup("fit")
    dm.trainer = _Training()
    return dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)


@pytest.mark.parametrize("option", ["mixup_alpha", "cutmix_alpha"])
def test_mixup_and_cutmix_give_valid_soft_targets(option):
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=32, augment=Augmentation(**{option: 1.0}))
    plain = DigitsDataModule(batch_size=32)
    torch.manual_seed(0)
    images, target = _training_batch(dm)
    torch.manual_seed(0)
    ref_images, ref_target = _training_batch(plain)
    assert target.shape == (32, 10) and target.dtype == torch.float32
    torch.testing.assert_close(target.sum(1), torch.ones(32))
    assert bool((target >= 0).all()) and not bool(((target == 0) | (target == 1)).all())  # really mixed
    assert images.shape == ref_images.shape and not torch.equal(images, ref_images)
    # each row mixes the true class with one other: its true class keeps the largest or second weight
    assert bool((target.gather(1, ref_target[:, None]) > 0).all())


def test_eval_batches_are_not_mixed():
    dm = DigitsDataModule(batch_size=16, augment=Augmentation(mixup_alpha=1.0))
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    assert dm.on_after_batch_transfer(batch, 0)[1].ndim == 1  # no trainer: not training


def test_mixup_trains_through_the_crl_soft_path(tmp_path, monkeypatch):
    import crl_lightning.losses.functional as LF

    calls = []
    composite = LF._crl_composite

    def spy(*args, **kwargs):
        calls.append(args[1].shape)
        return composite(*args, **kwargs)

    monkeypatch.setattr(LF, "_crl_composite", spy)
    main(["fit", "--config", DIGITS, "--data.init_args.augment.mixup_alpha", "0.2", "--trainer.max_epochs", "1",
          "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2",
          "--trainer.default_root_dir", str(tmp_path), *QUIET])
    assert calls and all(shape[1:] == (10,) for shape in calls[:3])  # (N, 10) soft targets in training
    rows = list(csv.DictReader(open(next(tmp_path.rglob("history.csv")))))
    assert "train_top1_err" not in rows[0] and float(rows[0]["train_loss"]) > 0  # left out with soft targets


def test_per_image_policies_are_composed_into_the_training_transform():
    dm = DigitsDataModule(augment=Augmentation(trivial_augment=True, random_erasing=0.25))
    dm.setup("fit")
    steps = dm.datasets["train"].transform.transforms
    assert isinstance(steps[1], v2.TrivialAugmentWide) and isinstance(steps[-1], v2.RandomErasing)
    assert steps[-1].p == 0.25
    assert not any(isinstance(t, v2.TrivialAugmentWide) for t in dm.datasets["val"].transform.transforms)
    x, _ = dm.datasets["train"][0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    with pytest.raises(ValueError, match="expected at most one of them, got both"):
        Augmentation(trivial_augment=True, rand_augment=True)
    with pytest.raises(ValueError, match="augment.on_device: expected no per-image augmentation"):
        Augmentation(rand_augment=True, on_device=True)
    with pytest.raises(ValueError, match=r"augment.random_erasing: expected a probability in \[0, 1\], got 1.5"):
        Augmentation(random_erasing=1.5)


def test_every_new_option_shows_in_print_config(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", DIGITS, "--print_config"])
    augment = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]["augment"]
    assert augment == {"trivial_augment": False, "rand_augment": False, "random_erasing": 0.0, "mixup_alpha": 0.0,
                       "cutmix_alpha": 0.0, "on_device": False}


def _ema_overlay(tmp_path: Path, decay: float) -> str:
    path = tmp_path / "ema.yaml"
    config = yaml.safe_load((ROOT / "examples" / "configs" / "overlays" / "ema.yaml").read_text())
    config["trainer"]["callbacks+"][0]["init_args"]["decay"] = decay
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_ema_overlay_validates_and_tests_the_averaged_weights(tmp_path):
    from lightning.pytorch.callbacks import EMAWeightAveraging

    args = ["fit", "--config", DIGITS, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "15",
            "--trainer.enable_progress_bar", "false", "--test_after_fit", "true"]
    plain = build_cli([*args, "--trainer.default_root_dir", str(tmp_path / "plain")])
    # decay 0.9999: after 15 steps the average is still almost the initial network
    ema = build_cli([*args, "--config", _ema_overlay(tmp_path, 0.9999), "--trainer.default_root_dir",
                     str(tmp_path / "ema")])
    assert any(isinstance(cb, EMAWeightAveraging) for cb in ema.trainer.callbacks)
    history = {name: list(csv.DictReader(open(next((tmp_path / name).rglob("history.csv")))))[-1]
               for name in ("plain", "ema")}
    assert float(history["plain"]["val_top1_err"]) < 40 and float(history["ema"]["val_top1_err"]) > 60
    ema_test = float(ema.trainer.callback_metrics["test_top1_err"])
    plain_test = float(plain.trainer.callback_metrics["test_top1_err"])
    assert plain_test < 40 and ema_test > 60  # the near-initial average was tested
    ckpt = torch.load(next((tmp_path / "ema").rglob("*.ckpt")), weights_only=False)
    assert "current_model_state" in ckpt  # Lightning saved the average as the model's state_dict
