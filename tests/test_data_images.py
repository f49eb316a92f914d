"""Image files in the base module: RGB loading, corrupt/truncated files (raise or skip and count)."""

from __future__ import annotations

import logging

import pytest
import torch
from data_fixtures import truncate, write_imagenet, write_jpeg
from torch.utils.data import DataLoader

from crl_lightning.data import CorruptImageError, DigitsDataModule, ImageFileDataset, ImageNetDataModule
from crl_lightning.data.datasets import TransformedSubset, load_rgb_image, skip_none_collate


def test_load_rgb_image_converts_modes(tmp_path):
    for mode in ("L", "CMYK", "RGB"):
        image = load_rgb_image(write_jpeg(tmp_path / f"{mode}.jpg", (12, 10), mode))
        assert image.mode == "RGB" and image.size == (12, 10)


def test_truncated_and_garbage_files_raise_naming_the_file(tmp_path):
    bad = truncate(write_jpeg(tmp_path / "cut.jpg", (64, 64)), keep=0.4)
    with pytest.raises(CorruptImageError, match=r"cannot decode image .*cut\.jpg .*truncated"):
        load_rgb_image(bad)
    (tmp_path / "junk.jpg").write_bytes(b"\x00" * 100)
    with pytest.raises(CorruptImageError, match=r"junk\.jpg.*--data\.bad_images skip"):
        load_rgb_image(tmp_path / "junk.jpg")
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*nope\.jpg"):
        load_rgb_image(tmp_path / "nope.jpg")


def test_worker_error_names_the_file(tmp_path):
    good = write_jpeg(tmp_path / "good.jpg")
    bad = truncate(write_jpeg(tmp_path / "bad.jpg", (64, 64)), keep=0.4)
    dataset = TransformedSubset(ImageFileDataset([good, bad], [0, 1]), transform=lambda im: torch.zeros(1))
    batches = iter(DataLoader(dataset, batch_size=2, num_workers=1))
    with pytest.raises(CorruptImageError, match=r"bad\.jpg"):  # same type and file name, not a bare worker crash
        next(batches)
    batches._shutdown_workers()  # do not leave the worker to the garbage collector (a 5 s join)


def test_skip_policy_returns_none_and_counts(tmp_path):
    good = write_jpeg(tmp_path / "good.jpg")
    bad = truncate(write_jpeg(tmp_path / "bad.jpg", (64, 64)), keep=0.4)
    dataset = ImageFileDataset([good, bad, good], [0, 1, 2], bad_images="skip")
    assert dataset[1] is None and dataset.num_skipped == 1
    assert dataset[0][1] == 0 and dataset.num_skipped == 1
    assert TransformedSubset(dataset, [1], transform=lambda im: im)[0] is None
    batch = skip_none_collate([(torch.ones(2), 0), None, (torch.zeros(2), 2)])
    assert batch[0].shape == (2, 2) and batch[1].tolist() == [0, 2]
    with pytest.raises(CorruptImageError, match="all 2 images of a batch were unreadable"):
        skip_none_collate([None, None])


def test_datamodule_skip_counts_across_workers(tmp_path, caplog):
    written = write_imagenet(tmp_path, train_per_class=3)
    truncate(tmp_path / "train" / "n01443537" / "n01443537_1.JPEG", keep=0.3)
    truncate(tmp_path / "train" / "n02119789" / "n02119789_0.JPEG", keep=0.3)
    raising = ImageNetDataModule(tmp_path, num_classes=3, image_size=8, batch_size=9)
    raising.setup("fit")
    with pytest.raises(CorruptImageError, match=r"(n01443537_1|n02119789_0)\.JPEG \(OSError"):
        list(raising.train_dataloader())
    dm = ImageNetDataModule(tmp_path, num_classes=3, image_size=8, batch_size=3, num_workers=2, bad_images="skip")
    dm.setup("fit")
    with caplog.at_level(logging.WARNING):
        sizes = [len(y) for _, y in dm.train_dataloader()]
        assert sum(sizes) == 7 and len(sizes) == 3 and len(written["train"]) == 9
        assert dm.num_skipped_images() == 2  # counted in the workers, read in the main process
        dm.teardown("fit")
    assert "ImageNetDataModule: skipped 2 unreadable image reads" in caplog.text


def test_existing_modules_keep_default_collate():
    dm = DigitsDataModule(batch_size=32)
    assert dm.collate_fn() is None
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and dm.num_skipped_images() == 0
