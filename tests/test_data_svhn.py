"""SVHNDataModule over fixture ``.mat`` files in the real format (X (32, 32, 3, N) uint8, y (N, 1), 10 = 0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_fixtures import trust_svhn_md5, write_svhn_mat
from scipy.io import savemat

from crl_lightning.data import Augmentation, SVHNDataModule, load_svhn

TRAIN_LABELS = [1, 2, 10, 10, 5, 9, 3]  # file labels; 10 is the digit 0
TEST_LABELS = [10, 3, 4]
EXTRA_LABELS = [7, 10]


@pytest.fixture
def svhn_root(tmp_path, monkeypatch):
    root = tmp_path / "svhn"
    images = {
        "train": write_svhn_mat(root, "train", TRAIN_LABELS, seed=1),
        "test": write_svhn_mat(root, "test", TEST_LABELS, seed=2),
        "extra": write_svhn_mat(root, "extra", EXTRA_LABELS, seed=3),
    }
    trust_svhn_md5(monkeypatch, root)
    return root, images


def test_load_maps_10_to_0_and_keeps_pixels(svhn_root):
    root, images = svhn_root
    dataset = load_svhn(root, "train")
    assert dataset.images.shape == (7, 3, 32, 32) and dataset.images.dtype == torch.uint8
    assert dataset.targets == [1, 2, 0, 0, 5, 9, 3]
    np.testing.assert_array_equal(dataset.images.permute(0, 2, 3, 1).numpy(), images["train"])


def test_datamodule_sizes_labels_and_extra(svhn_root):
    root, images = svhn_root
    dm = SVHNDataModule(root, use_extra=True, batch_size=4)
    assert dm.num_classes == 10 and dm.in_chans == 3
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.datasets["train"]) == 9  # train + extra
    assert dm.datasets["train"].targets == [1, 2, 0, 0, 5, 9, 3, 7, 0]
    assert dm.datasets["test"].targets == [0, 3, 4]
    assert len(dm.datasets["val"]) == 3  # val_split 0: validation on test, as the paper
    dm_no_extra = SVHNDataModule(root, use_extra=False)
    dm_no_extra.setup("fit")
    assert len(dm_no_extra.datasets["train"]) == 7


def test_no_augmentation_and_normalisation(svhn_root):
    root, images = svhn_root
    dm = SVHNDataModule(root, use_extra=False)
    dm.setup("fit")
    a, label = dm.datasets["train"][2]
    b, _ = dm.datasets["train"][2]
    assert label == 0
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)  # deterministic: no augmentation (paper)
    mean, std = torch.tensor((0.4377, 0.4438, 0.4728)), torch.tensor((0.1980, 0.2010, 0.1970))
    pixels = torch.from_numpy(images["train"][2]).permute(2, 0, 1).float() / 255
    expected = (pixels - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(a, expected)


def test_train_loader_drops_last_partial_batch(svhn_root):
    root, _ = svhn_root
    dm = SVHNDataModule(root, use_extra=True, batch_size=4)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert [len(b[1]) for b in batches] == [4, 4]  # 9 samples, the last one dropped
    x, y = batches[0]
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.int64


def test_val_split_is_stratified_fraction(tmp_path, monkeypatch):
    labels = [1 + i % 10 for i in range(40)]
    write_svhn_mat(tmp_path, "train", labels)
    trust_svhn_md5(monkeypatch, tmp_path)
    dm = SVHNDataModule(tmp_path, use_extra=False, val_split=0.25)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 30 and len(dm.datasets["val"]) == 10
    assert sorted(dm.datasets["val"].targets) == list(range(10))


def test_missing_file_names_it_and_the_download(tmp_path, monkeypatch):
    write_svhn_mat(tmp_path, "train", [1, 2])
    trust_svhn_md5(monkeypatch, tmp_path)
    dm = SVHNDataModule(tmp_path, use_extra=True)
    with pytest.raises(FileNotFoundError, match=r"extra_32x32\.mat.*--data\.download true"):
        dm.setup("fit")


def test_corrupt_or_foreign_file_fails_the_integrity_check(tmp_path):
    write_svhn_mat(tmp_path, "train", [1, 2])  # not the official file: its MD5 differs
    with pytest.raises(ValueError, match=r"train_32x32\.mat \(\d[\d,]* bytes\) fails torchvision's MD5 integrity"):
        load_svhn(tmp_path, "train")
    (tmp_path / "test_32x32.mat").write_bytes(b"<html>404 not found</html>")
    with pytest.raises(ValueError, match=r"test_32x32\.mat \(26 bytes\) fails .* truncated, corrupt"):
        load_svhn(tmp_path, "test")


def test_labels_outside_1_to_10_are_refused(tmp_path, monkeypatch):
    labels = np.array([[0], [11]], np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": labels})
    trust_svhn_md5(monkeypatch, tmp_path)
    with pytest.raises(ValueError, match=r"y: expected one label in 1\.\.10 per image.*values \[0, 11\]"):
        load_svhn(tmp_path, "train")


def test_bad_split_name(tmp_path):
    with pytest.raises(ValueError, match=r"split: expected one of \['train', 'test', 'extra'\], got 'valid'"):
        load_svhn(tmp_path, "valid")


def test_failed_download_says_what_to_fetch(tmp_path, monkeypatch):
    import urllib.error

    from torchvision.datasets import SVHN

    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(SVHN, "download", offline)
    with pytest.raises(FileNotFoundError, match=r"SVHN: the download failed \(URLError.*train_32x32\.mat by hand"):
        SVHNDataModule(tmp_path, download=True).prepare_data()


def test_device_pipeline_gives_uint8_batches_normalised_on_transfer(svhn_root):
    root, images = svhn_root
    dm = SVHNDataModule(root, use_extra=False, augment=Augmentation(on_device=True), batch_size=7)
    dm.setup("fit")
    raw = next(iter(dm.val_dataloader()))
    assert raw[0].dtype == torch.uint8 and raw[0].shape == (3, 3, 32, 32)
    x, y = dm.on_after_batch_transfer(raw, 0)
    per_image = SVHNDataModule(root, use_extra=False, batch_size=7)
    per_image.setup("fit")
    ref_x, ref_y = next(iter(per_image.val_dataloader()))
    torch.testing.assert_close(x, ref_x, rtol=0, atol=1e-6)
    assert y.tolist() == ref_y.tolist() == [0, 3, 4]
