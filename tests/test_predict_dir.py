"""``crl predict --data.predict_dir`` on a folder of any images: sizes, grey and RGB, an unreadable JPEG.

Every DataModule resizes the folder's images to its training input and converts them to the model's
channels (one log line counts it), ``--data.bad_images skip`` leaves the unreadable file out, and
``predictions.csv`` has one row per readable image; a predict that fails leaves no run folder.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import truncate, write_image_folder
from PIL import Image

from crl_lightning.cli import build_cli, main
from crl_lightning.data.datasets import CorruptImageError
from crl_lightning.runs import PREDICTIONS_FILENAME, remove_config_only_run_dir

CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"
PROB = re.compile(r"^[01]\.\d{6}$")


def write_mixed_folder(folder: Path) -> list[str]:
    """Grey and RGB images of four sizes (PNG and JPEG, in a sub-folder too) and one truncated JPEG.

    Returns:
        The readable files, sorted as ``list_image_files`` lists them.
    """
    rng = np.random.default_rng(0)
    images = {
        "a/grey_8.png": Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L"),
        "a/rgb_32.png": Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)),
        "grey_40x24.jpg": Image.fromarray(rng.integers(0, 256, (24, 40), dtype=np.uint8), "L"),
        "rgb_17x50.jpg": Image.fromarray(rng.integers(0, 256, (50, 17, 3), dtype=np.uint8)),
        "z_cut.jpg": Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
    }
    for name, image in images.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / name)
    truncate(folder / "z_cut.jpg")
    return sorted(str(folder / name) for name in images if name != "z_cut.jpg")


def _folder_args(root: Path) -> list[str]:
    write_image_folder(root, {"train": 4, "test": 2}, size=(32, 32))
    return ["--data.init_args.data_dir", str(root)]


#: config -> (arguments writing its training data under a root, (C, H, W) of its input, log line counts)
CASES = {
    "digits_crl.yaml": (lambda root: [], (1, 8, 8), "4 images, 3 resized to 8x8, 2 converted to L"),
    "cifar10_jpeg_cpu.yaml": (lambda root: [*_folder_args(root), "--data.init_args.train_per_class", "2",
                                            "--data.init_args.val_split", "0"],
                              (3, 32, 32), "4 images, 3 resized to 32x32, 2 converted to RGB"),
    "image_folder_cpu.yaml": (_folder_args, (3, 32, 32), "4 images, 3 resized to 32x32, 2 converted to RGB"),
}


@pytest.mark.usefixtures("plain_argv")
@pytest.mark.parametrize("config", list(CASES))
def test_predict_dir_gives_one_row_per_readable_image_of_any_size_and_mode(config, tmp_path, caplog):
    data_args, shape, counts = CASES[config]
    files = write_mixed_folder(tmp_path / "mixed")
    caplog.set_level(logging.INFO, logger="crl_lightning")
    cli = build_cli(["predict", "--config", str(CONFIGS / config), *data_args(tmp_path / "data"),
                     "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
                     "--data.init_args.predict_dir", str(tmp_path / "mixed"), "--data.init_args.bad_images", "skip"])
    images = next(iter(cli.datamodule.predict_dataloader()))[0]
    assert tuple(images.shape[1:]) == shape
    assert [r.getMessage() for r in caplog.records if r.name == "crl_lightning.data.base"] == [
        f"{type(cli.datamodule).__name__}: predict_dir {tmp_path / 'mixed'}: {counts}, 1 unreadable skipped"]
    with open(tmp_path / "runs" / "lightning_logs" / "version_0" / PREDICTIONS_FILENAME, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = list(reader.fieldnames or []), list(reader)
    assert header[:7] == ["index", "path", "target", "target_name", "top1_class", "top1_name", "top1_prob"]
    assert "predicted" not in header and [r["path"] for r in rows] == files
    assert all(r["target"] == r["target_name"] == "" and PROB.match(r["top1_prob"]) for r in rows)


@pytest.mark.usefixtures("plain_argv")
def test_predict_of_the_test_split_writes_the_true_labels(tmp_path):
    cli = build_cli(["predict", "--config", str(CONFIGS / "digits_crl.yaml"), "--trainer.default_root_dir",
                     str(tmp_path), "--trainer.enable_progress_bar", "false"])
    with open(tmp_path / "lightning_logs" / "version_0" / PREDICTIONS_FILENAME, newline="") as f:
        rows = list(csv.DictReader(f))
    targets = cli.datamodule.datasets["test"].targets
    assert [int(r["target"]) for r in rows] == targets and [r["target_name"] for r in rows] == [str(t) for t in targets]
    assert all(PROB.match(r[f"top{i}_prob"]) for r in rows for i in range(1, 6))


@pytest.mark.usefixtures("plain_argv")
def test_a_failed_predict_leaves_no_run_folder(tmp_path):
    folder = tmp_path / "cut"
    folder.mkdir()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(folder / "cut.jpg", quality=95)
    truncate(folder / "cut.jpg", 0.3)
    with pytest.raises(CorruptImageError, match="cut.jpg"):
        main(["predict", "--config", str(CONFIGS / "digits_crl.yaml"), "--trainer.default_root_dir",
              str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
              "--data.init_args.predict_dir", str(folder)])
    assert list((tmp_path / "runs" / "lightning_logs").iterdir()) == []


def test_only_a_folder_holding_nothing_but_its_config_is_removed(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("x")
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "config.yaml").write_text("x")
    (tmp_path / "kept" / "predictions.csv").write_text("x")
    assert remove_config_only_run_dir(tmp_path / "run") and not (tmp_path / "run").exists()
    assert not remove_config_only_run_dir(tmp_path / "kept") and (tmp_path / "kept" / "config.yaml").is_file()
    assert not remove_config_only_run_dir(tmp_path / "missing")


@pytest.mark.usefixtures("plain_argv")
def test_predict_of_a_labelled_split_with_an_unreadable_image_skips_it_and_keeps_rows_aligned(tmp_path):
    """Without predict_dir the test split is predicted; a truncated file there is left out under skip, and every
    row still names its own file and true class (the batches are not shifted by the skipped image)."""
    root = tmp_path / "data"
    write_image_folder(root, {"train": 4, "test": 3}, size=(32, 32))
    cut = sorted((root / "test").rglob("*.png"))[1]
    truncate(cut)
    cli = build_cli(["predict", "--config", str(CONFIGS / "image_folder_cpu.yaml"), "--data.init_args.data_dir",
                     str(root), "--data.init_args.batch_size", "4", "--data.init_args.bad_images", "skip",
                     "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false"])
    with open(tmp_path / "runs" / "lightning_logs" / "version_0" / PREDICTIONS_FILENAME, newline="") as f:
        rows = list(csv.DictReader(f))
    classes = cli.datamodule.classes
    expected = [p for p in sorted((root / "test").rglob("*.png")) if p != cut]
    assert [r["path"] for r in rows] == [str(p) for p in expected]
    assert [r["target_name"] for r in rows] == [p.parent.name for p in expected]
    assert [int(r["target"]) for r in rows] == [classes.index(p.parent.name) for p in expected]
    assert [int(r["index"]) for r in rows] == list(range(len(expected)))


def test_prediction_writer_refuses_a_batch_that_lost_samples():
    from crl_lightning.callbacks import PredictionWriter

    writer = PredictionWriter()
    probs = torch.tensor([[0.5, 0.3125, 0.1875], [0.125, 0.25, 0.625]])
    with pytest.raises(ValueError, match=r"predict batch 7: .* got 2 predictions for 3 indices"):
        writer.write_on_batch_end(None, None, probs, [0, 1, 2], [probs, torch.tensor([0, 1])], 7, 0)
    writer.write_on_batch_end(None, None, probs, [4, 5], [probs, torch.tensor([2, 0])], 8, 0)
    assert writer._rows == [(4, 2, [0, 1, 2], [0.5, 0.3125, 0.1875]), (5, 0, [2, 1, 0], [0.625, 0.25, 0.125])]


@pytest.mark.usefixtures("plain_argv")
def test_predict_of_a_test_split_with_no_readable_image_fails_and_leaves_no_run_folder(tmp_path):
    root = tmp_path / "data"
    write_image_folder(root, {"train": 2, "test": 1}, size=(32, 32))
    for image in (root / "test").rglob("*.png"):
        truncate(image)
    with pytest.raises(ValueError, match=r"^ImageFolderDataModule: expected at least one readable image in the test "
                                         r"split to predict, got none of 3 \(bad_images='skip'"):
        main(["predict", "--config", str(CONFIGS / "image_folder_cpu.yaml"), "--data.init_args.data_dir", str(root),
              "--data.init_args.bad_images", "skip", "--trainer.default_root_dir", str(tmp_path / "runs"),
              "--trainer.enable_progress_bar", "false"])
    assert list((tmp_path / "runs" / "lightning_logs").iterdir()) == []
