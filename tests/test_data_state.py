"""The DataModule's state in a checkpoint: the normalisation (and input size) it was trained with.

``crl test``/``crl predict`` of a checkpoint take it back before setup, so they do not read the training images
again: the tests make every training image unreadable after fitting and still test and predict.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import CONFIGS, truncate, write_image_folder
from torchvision.transforms import v2

from crl_lightning.cli import build_cli
from crl_lightning.data import DigitsDataModule, ImageFolderDataModule
from crl_lightning.runs import PREDICTIONS_FILENAME

#: config -> extra arguments for a quick fit on the fixture folder
FOLDER_CONFIGS = {
    "image_folder_cpu.yaml": [],
    "cifar10_jpeg_cpu.yaml": ["--data.init_args.train_per_class", "3", "--data.init_args.val_split", "0"],
}


def _normalize_of(transform) -> v2.Normalize:
    return next(t for t in transform.transforms[-1].transforms if isinstance(t, v2.Normalize))


def test_state_dict_round_trip_gives_the_stats_and_input_size(tmp_path):
    write_image_folder(tmp_path, {"train": 3, "test": 1}, size=(12, 10))
    trained = ImageFolderDataModule(tmp_path)
    trained.setup("fit")
    state = trained.state_dict()
    assert state == {"stats": {"mean": list(trained.stats[0]), "std": list(trained.stats[1])}, "input_size": [10, 12]}
    json.dumps(state)  # plain numbers only: checkpoints load with weights_only=True
    fresh = ImageFolderDataModule(tmp_path)
    fresh.load_state_dict(state)
    assert fresh.stats == trained.stats and fresh.input_size() == (10, 12)
    assert ImageFolderDataModule(tmp_path).state_dict() == {}  # nothing known before setup


def test_load_state_dict_refuses_malformed_stats_and_sizes(tmp_path):
    write_image_folder(tmp_path, {"train": 1, "test": 1})
    dm = ImageFolderDataModule(tmp_path)
    with pytest.raises(ValueError, match=r"^ImageFolderDataModule checkpoint state 'stats': expected .* got"):
        dm.load_state_dict({"stats": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.0, 0.2]}})
    with pytest.raises(ValueError, match=r"'stats': expected .* got \{'mean': \[0.5\]\}"):
        dm.load_state_dict({"stats": {"mean": [0.5]}})
    with pytest.raises(ValueError, match=r"'input_size': expected \[H, W\] in pixels, got \[32\]"):
        dm.load_state_dict({"input_size": [32]})
    for bad in ({"mean": ["a"] * 3, "std": [0.2] * 3}, {"mean": [0.5] * 3, "std": [None] * 3},
                {"mean": [0.5] * 2, "std": [0.2] * 2}, {"mean": [0.5], "std": [0.2]},
                {"mean": [float("nan")] * 3, "std": [0.2] * 3}, {"mean": [0.5] * 3, "std": [True] * 3}):
        with pytest.raises(ValueError, match=r"^ImageFolderDataModule checkpoint state 'stats': expected .* of 3 "
                                             r"finite numbers each \(one per input channel\), std > 0, got"):
            dm.load_state_dict({"stats": bad})
    with pytest.raises(ValueError, match=r"^ImageFolderDataModule checkpoint state: expected a dict, got list"):
        dm.load_state_dict([0.5, 0.2])
    assert dm.stats is None
    dm.load_state_dict({})  # a checkpoint of an older version: nothing to take
    assert dm.stats is None


def test_restored_stats_replace_those_of_splits_set_up_before_with_a_warning(tmp_path, caplog):
    """Lightning restores the checkpoint after setup (Trainer.test(ckpt_path=...)): the test transform follows."""
    write_image_folder(tmp_path, {"train": 2, "test": 1})
    dm = ImageFolderDataModule(tmp_path)
    dm.setup("test")
    assert _normalize_of(dm.datasets["test"].transform).mean == list(dm.stats[0])
    with caplog.at_level(logging.WARNING, logger="crl_lightning"):
        dm.load_state_dict({"stats": {"mean": [0.25, 0.5, 0.75], "std": [0.5, 0.5, 0.5]}})
    assert dm.stats == ((0.25, 0.5, 0.75), (0.5, 0.5, 0.5))
    normalize = _normalize_of(dm.datasets["test"].transform)
    assert normalize.mean == [0.25, 0.5, 0.75] and normalize.std == [0.5, 0.5, 0.5]
    assert ["the checkpoint's normalisation (mean [0.25, 0.5, 0.75], std [0.5, 0.5, 0.5]) replaces" in r.getMessage()
            for r in caplog.records] == [True]


def test_digits_keep_restored_stats():
    dm = DigitsDataModule()
    dm.load_state_dict({"stats": {"mean": [0.25], "std": [0.5]}})
    dm.setup("test")
    assert dm.stats == ((0.25,), (0.5,))
    fresh = DigitsDataModule()
    fresh.setup("test")
    train = fresh.build_dataset("train").images.double() / 255  # its own training images' mean without a state
    assert fresh.state_dict()["stats"]["mean"] == [pytest.approx(train.mean().item(), abs=1e-12)]


@pytest.mark.usefixtures("plain_argv")
@pytest.mark.parametrize("config", list(FOLDER_CONFIGS))
def test_test_and_predict_of_a_checkpoint_do_not_read_the_training_images(config, tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, {"train": 3, "test": 2}, size=(32, 32))
    common = ["--config", str(CONFIGS / config), "--data.init_args.data_dir", str(root),
              *FOLDER_CONFIGS[config], "--trainer.default_root_dir", str(tmp_path / "runs"),
              "--trainer.enable_progress_bar", "false"]
    fit = build_cli(["fit", *common, "--trainer.max_epochs", "1", "--test_after_fit", "false"])
    trained = fit.datamodule.stats
    ckpt = next((tmp_path / "runs").rglob("last.ckpt"))
    assert torch.load(ckpt, weights_only=True)["ImageFolderDataModule"]["stats"]["mean"] == list(trained[0])
    for image in (root / "train").rglob("*.png"):
        truncate(image, 0.1)  # any read of a training image now raises CorruptImageError
    tested = build_cli(["test", *common, "--ckpt_path", str(ckpt)])
    assert tested.datamodule.stats == trained and "train" not in tested.datamodule.datasets
    assert np.isfinite(tested.trainer.callback_metrics["test_top1_err"].item())
    validated = build_cli(["validate", *common, "--ckpt_path", str(ckpt)])
    assert "train" not in validated.datamodule.datasets
    assert np.isfinite(validated.trainer.callback_metrics["val_top1_err"].item())
    predicted = build_cli(["predict", *common, "--ckpt_path", str(ckpt)])
    assert "train" not in predicted.datamodule.datasets
    out = next(Path(predicted.trainer.log_dir).glob(PREDICTIONS_FILENAME))
    with open(out, newline="") as f:
        assert len(list(csv.DictReader(f))) == 3 * 2  # every test image, three classes
