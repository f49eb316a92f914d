"""``crl test|fit --ckpt_path C`` with model values that differ from C's hyper-parameters: refused, one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crl_lightning.cli import ConfigError, build_cli, main
from crl_lightning.console import error_message

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "examples" / "configs" / "digits_crl.yaml")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real ``crl fit`` checkpoint of the digits config (preact_resnet20, CRL alpha 1.5), after one step."""
    root = tmp_path_factory.mktemp("fit")
    main(["fit", "--config", DIGITS, "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar",
          "false", "--test_after_fit", "false", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
          "--trainer.limit_val_batches", "1"])
    return next(root.rglob("last.ckpt"))


def run_test(ckpt: Path, *args: str):
    return build_cli(["test", "--config", DIGITS, "--ckpt_path", str(ckpt), "--trainer.default_root_dir",
                      str(ckpt.parent), "--trainer.enable_progress_bar", "false", "--trainer.limit_test_batches", "1",
                      *args])


@pytest.mark.usefixtures("plain_argv")
@pytest.mark.parametrize(("args", "line"), [
    (["--model.init_args.backbone", "preact_resnet56"],
     "model.init_args.backbone: expected the checkpoint's value 'preact_resnet20' ({ckpt}), got 'preact_resnet56'"),
    (["--model.init_args.criterion.init_args.alpha", "2"],
     "model.init_args.criterion.init_args.alpha: expected the checkpoint's value 1.5 ({ckpt}), got 2.0"),
    (["--model.init_args.criterion", "torch.nn.CrossEntropyLoss"],
     "model.init_args.criterion.class_path: expected the checkpoint's value 'crl_lightning.losses.CompetingRatioLoss' "
     "({ckpt}), got 'torch.nn.CrossEntropyLoss'"),
])
def test_a_model_value_other_than_the_checkpoints_is_refused(checkpoint, args, line):
    with pytest.raises(ConfigError) as raised:
        run_test(checkpoint, *args)
    message = error_message(raised.value)
    assert message.startswith(line.format(ckpt=checkpoint)) and "\n" not in message
    assert not (checkpoint.parent / "lightning_logs").exists()  # refused before anything ran


@pytest.mark.usefixtures("plain_argv")
def test_values_equal_to_the_checkpoints_or_left_at_the_default_run(checkpoint, tmp_path):
    """The config's own values match the checkpoint; an unset (default) value takes the checkpoint's."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["hyper_parameters"]["calibration_bins"] = 20  # the class default is 15, which the config leaves
    edited = tmp_path / "bins20.ckpt"
    torch.save(state, edited)
    cli = run_test(edited)
    assert cli.model.hparams.calibration_bins == 20 and cli.model.hparams.backbone == "preact_resnet20"
    assert "test_top1_err" in cli.trainer.callback_metrics
    with pytest.raises(ConfigError, match=r"^model.init_args.calibration_bins: expected the checkpoint's value 20 "):
        run_test(edited, "--model.init_args.calibration_bins", "30")


@pytest.mark.usefixtures("plain_argv")
def test_a_class_path_that_names_the_same_class_is_not_a_difference(checkpoint, tmp_path):
    """A ``crl study`` checkpoint saves the criterion's defining module (``crl_lightning.losses.modules.X``), the
    configs write the re-export (``crl_lightning.losses.X``): the same class, so the README's predict command with
    the config runs on a study checkpoint. Guards against comparing class paths as strings."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    criterion = state["hyper_parameters"]["criterion"]
    assert criterion["class_path"] == "crl_lightning.losses.CompetingRatioLoss"
    criterion["class_path"] = "crl_lightning.losses.modules.CompetingRatioLoss"
    edited = tmp_path / "modules_path.ckpt"
    torch.save(state, edited)
    cli = run_test(edited)
    assert "test_top1_err" in cli.trainer.callback_metrics
    with pytest.raises(ConfigError, match=r"^model.init_args.criterion.class_path: expected the checkpoint's value "
                                          r"'crl_lightning.losses.modules.CompetingRatioLoss' .* got 'crl_lightning."
                                          r"losses.FocalLoss'"):
        run_test(edited, "--model.init_args.criterion", "crl_lightning.losses.FocalLoss")
