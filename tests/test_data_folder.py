"""ImageFolderDataModule on fixture trees in torchvision's ImageFolder layout."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import truncate, write_image_folder
from torchvision.transforms import v2

from crl_lightning.data import ImageFolderDataModule, class_balanced_subset
from crl_lightning.data.datasets import CorruptImageError

SORTED = ["Zebra", "apple", "mango"]


def test_classes_are_the_sorted_folder_names_with_exact_targets(tmp_path):
    written = write_image_folder(tmp_path)
    dm = ImageFolderDataModule(tmp_path, mean=[0.5] * 3, std=[0.25] * 3)
    assert dm.classes == SORTED and dm.num_classes == 3 and dm.in_chans == 3
    dm.setup("fit")
    train = dm.datasets["train"]
    assert len(train) == 30 and len(dm.datasets["val"]) == 12  # val_split 0: validation on test/
    expected = {path: SORTED.index(name) for path, name, _ in written["train"]}
    got = {train.dataset.paths[i]: train.targets[k] for k, i in enumerate(train.indices)}
    assert got == expected
    # eval images are only normalised, with the given stats
    val = dm.datasets["val"]
    x, y = val[5]
    path, name, pixels = written["test"][[p for p, _, _ in written["test"]].index(val.dataset.paths[5])]
    assert y == SORTED.index(name) and x.shape == (3, 8, 8) and x.dtype == torch.float32
    want = (torch.from_numpy(pixels).permute(2, 0, 1) / 255.0 - 0.5) / 0.25
    torch.testing.assert_close(x, want, rtol=0, atol=1e-6)


def test_train_per_class_is_balanced_seeded_and_drawn_after_the_val_split(tmp_path):
    write_image_folder(tmp_path, {"train": 20, "test": 2})

    def split(seed):
        dm = ImageFolderDataModule(tmp_path, train_per_class=6, val_split=0.25, seed=seed, mean=[0] * 3, std=[1] * 3)
        dm.setup("fit")
        return dm.datasets["train"], dm.datasets["val"]

    train, val = split(seed=3)
    assert Counter(train.targets) == {0: 6, 1: 6, 2: 6}
    assert Counter(val.targets) == {0: 5, 1: 5, 2: 5}  # stratified: 25 % of 20 per class
    assert not set(train.indices) & set(val.indices)  # disjoint
    again, _ = split(seed=3)
    other, other_val = split(seed=4)
    assert again.indices == train.indices
    assert other.indices != train.indices and other_val.indices != val.indices


def test_class_balanced_subset_errors_name_the_short_class():
    targets = [0] * 5 + [1] * 2
    assert class_balanced_subset(targets, 2, seed=0, indices=[0, 1, 2, 5, 6]) in (
        [0, 1, 5, 6], [0, 2, 5, 6], [1, 2, 5, 6])
    with pytest.raises(ValueError, match="expected at least 3 samples of class 1, got 2"):
        class_balanced_subset(targets, 3, seed=0)


def test_in_memory_gives_the_same_tensors_as_decoding_on_the_fly(tmp_path):
    write_image_folder(tmp_path, {"train": 6, "test": 3}, fmt="JPEG")
    files = ImageFolderDataModule(tmp_path, val_split=0.5, seed=1)
    memory = ImageFolderDataModule(tmp_path, val_split=0.5, seed=1, in_memory=True)
    for dm in (files, memory):
        dm.setup("fit")
        dm.setup("test")
    assert files.stats[0] == pytest.approx(memory.stats[0]) and files.stats[1] == pytest.approx(memory.stats[1])
    for split in ("val", "test"):  # deterministic eval transforms: identical float tensors
        a, b = files.datasets[split], memory.datasets[split]
        assert len(a) == len(b) and a.targets == b.targets
        for i in range(len(a)):
            torch.testing.assert_close(a[i][0], b[i][0], rtol=0, atol=0)
    images = memory.datasets["train"].dataset.images
    assert images.dtype == torch.uint8 and images.shape == (9, 3, 8, 8)


def test_mean_std_are_computed_from_the_training_images_used(tmp_path):
    written = write_image_folder(tmp_path, {"train": 4, "test": 1})
    dm = ImageFolderDataModule(tmp_path, train_per_class=2, seed=0)
    dm.setup("fit")
    train = dm.datasets["train"]
    used = {train.dataset.paths[i] for i in train.indices}
    pixels = np.stack([p for path, _, p in written["train"] if path in used]).astype(np.float64) / 255
    assert dm.stats[0] == pytest.approx(pixels.mean(axis=(0, 1, 2)).tolist(), abs=1e-9)
    assert dm.stats[1] == pytest.approx(pixels.std(axis=(0, 1, 2)).tolist(), abs=1e-9)


def test_cifar_preset_crops_with_padding_and_flips_at_native_size(tmp_path):
    write_image_folder(tmp_path, {"train": 2, "test": 1}, size=(12, 12))
    dm = ImageFolderDataModule(tmp_path, mean=[0] * 3, std=[1] * 3)
    dm.setup("fit")
    transform = dm.datasets["train"].transform
    crops = [t for t in transform.transforms if isinstance(t, v2.RandomCrop)]
    assert len(crops) == 1 and crops[0].size == (12, 12) and crops[0].padding == [4, 4, 4, 4]
    assert any(isinstance(t, v2.RandomHorizontalFlip) and t.p == 0.5 for t in transform.transforms)
    assert dm.datasets["train"][0][0].shape == (3, 12, 12)


def test_imagenet_preset_and_explicit_image_size(tmp_path):
    write_image_folder(tmp_path, {"train": 2, "test": 1}, size=(20, 16))
    dm = ImageFolderDataModule(tmp_path, preset="imagenet", image_size=8, mean=[0] * 3, std=[1] * 3)
    dm.setup("fit")
    assert dm.datasets["train"][0][0].shape == (3, 8, 8)
    assert dm.datasets["val"][0][0].shape == (3, 8, 8)


def test_test_split_may_lack_a_class_and_keeps_the_train_index(tmp_path):
    write_image_folder(tmp_path, {"train": 2, "test": 1})
    for f in (tmp_path / "test" / "Zebra").iterdir():
        f.unlink()
    (tmp_path / "test" / "Zebra").rmdir()
    dm = ImageFolderDataModule(tmp_path, mean=[0] * 3, std=[1] * 3)
    dm.setup("test")
    assert dm.num_classes == 3 and dm.datasets["test"].targets == [1, 2]  # apple, mango


def test_val_folder_is_used_when_present(tmp_path):
    write_image_folder(tmp_path, {"train": 3, "val": 2, "test": 1})
    dm = ImageFolderDataModule(tmp_path, val_split=0.5, mean=[0] * 3, std=[1] * 3)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 9 and len(dm.datasets["val"]) == 6
    assert all("/val/" in p for p in dm.datasets["val"].dataset.paths)


def test_errors_name_the_folder_and_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected the folder .*train"):
        ImageFolderDataModule(tmp_path / "nothing")
    write_image_folder(tmp_path, {"train": 2, "test": 1})
    (tmp_path / "test" / "kiwi").mkdir()
    from data_fixtures import write_jpeg

    write_jpeg(tmp_path / "test" / "kiwi" / "0.jpg")
    dm = ImageFolderDataModule(tmp_path, mean=[0] * 3, std=[1] * 3)
    with pytest.raises(ValueError, match=r"test: expected class folders among the 3 training classes, got 1 unknown "
                                         r"ones, e\.g\. \['kiwi'\]"):
        dm.setup("fit")
    (tmp_path / "test" / "kiwi" / "0.jpg").unlink()
    (tmp_path / "test" / "kiwi").rmdir()
    (tmp_path / "test" / "apple" / "000.png").unlink()  # an empty class folder
    with pytest.raises(ValueError, match=r"test/apple: expected image files \(\.jpg.*got none"):
        ImageFolderDataModule(tmp_path, mean=[0] * 3, std=[1] * 3).setup("fit")
    with pytest.raises(ValueError, match="mean/std: expected both or neither"):
        ImageFolderDataModule(tmp_path, mean=[0.5] * 3)
    with pytest.raises(ValueError, match="preset: expected 'cifar' or 'imagenet', got 'svhn'"):
        ImageFolderDataModule(tmp_path, preset="svhn")


def test_in_memory_refuses_mixed_sizes(tmp_path):
    write_image_folder(tmp_path, {"train": 2, "test": 1})
    from data_fixtures import write_jpeg

    odd = write_jpeg(tmp_path / "train" / "apple" / "odd.jpg", size=(9, 8))
    dm = ImageFolderDataModule(tmp_path, in_memory=True, mean=[0] * 3, std=[1] * 3)
    with pytest.raises(ValueError, match=rf"expected every image to have one size, got 8x8 .* and 9x8 \({odd}\)"):
        dm.setup("fit")


def test_images_of_another_size_are_resized_to_the_first_training_image(tmp_path):
    write_image_folder(tmp_path, {"train": 2, "test": 1})  # 8x8
    from data_fixtures import write_jpeg

    write_jpeg(tmp_path / "train" / "apple" / "wide.jpg", size=(20, 12))
    write_jpeg(tmp_path / "test" / "mango" / "big.jpg", size=(40, 40))
    dm = ImageFolderDataModule(tmp_path, mean=[0] * 3, std=[1] * 3)
    dm.setup("fit")
    train, val = dm.datasets["train"], dm.datasets["val"]  # val_split 0: validation on test/
    assert {tuple(train[i][0].shape) for i in range(len(train))} == {(3, 8, 8)}
    assert {tuple(val[i][0].shape) for i in range(len(val))} == {(3, 8, 8)}
    images, _ = next(iter(dm.val_dataloader()))
    assert images.shape == (len(val), 3, 8, 8)


def test_val_split_that_leaves_a_class_out_names_the_field(tmp_path):
    write_image_folder(tmp_path, {"train": 10, "test": 1})  # 3 classes x 10
    for fraction in (0.01, 0.99):
        dm = ImageFolderDataModule(tmp_path, val_split=fraction, mean=[0] * 3, std=[1] * 3)
        with pytest.raises(ValueError, match=rf"val_split: expected a fraction that leaves at least one image per "
                                             rf"class .* the 30 training images of 3 classes, got {fraction}"):
            dm.setup("fit")


@pytest.mark.parametrize("in_memory", [False, True])
def test_bad_images_follow_the_policy(tmp_path, in_memory):
    written = write_image_folder(tmp_path, {"train": 3, "test": 1}, fmt="JPEG")
    bad = truncate(Path(written["train"][0][0]), keep=0.3)
    strict = ImageFolderDataModule(tmp_path, in_memory=in_memory, mean=[0] * 3, std=[1] * 3, batch_size=4)
    with pytest.raises(CorruptImageError, match=str(bad)):
        strict.setup("fit")
        list(strict.train_dataloader())
    lenient = ImageFolderDataModule(tmp_path, in_memory=in_memory, bad_images="skip", mean=[0] * 3, std=[1] * 3,
                                    batch_size=16)
    lenient.setup("fit")
    batch = next(iter(lenient.train_dataloader()))
    assert batch[0].shape[0] == 8  # 9 files, 1 unreadable
    assert lenient.num_skipped_images() == 1
