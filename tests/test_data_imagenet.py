"""ImageNetDataModule: train class folders, flat val + LOC_val_solution.csv or val class folders."""

from __future__ import annotations

import pytest
import torch
from data_fixtures import SYNSETS, write_imagenet, write_jpeg
from PIL import Image

from crl_lightning.data import ImageNetDataModule


def test_flat_val_with_loc_csv(tmp_path):
    written = write_imagenet(tmp_path, flat_val=True)
    dm = ImageNetDataModule(tmp_path, num_classes=3, image_size=8, batch_size=2)
    dm.setup("fit")
    dm.setup("test")
    assert dm.class_to_idx == {"n01440764": 0, "n01443537": 1, "n02119789": 2}  # sorted synsets
    assert len(dm.datasets["train"]) == 9 and dm.datasets["train"].targets == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    test = dm.datasets["test"]
    assert len(test) == 6
    assert test.dataset.paths == [p for p, _ in written["val"]]  # sorted by file name
    assert test.targets == [2, 1, 0, 2, 1, 0]  # first synset of PredictionString, train order
    assert test.targets == [SYNSETS.index(s) for _, s in written["val"]]
    assert dm.datasets["val"].targets == test.targets  # val_split 0: validate on ImageNet val


def test_val_class_folders_share_the_train_index(tmp_path):
    write_imagenet(tmp_path, flat_val=False)
    dm = ImageNetDataModule(tmp_path, num_classes=3)
    dm.setup("test")
    assert dm.datasets["test"].targets == [0, 0, 1, 1, 2, 2]


def test_val_subset_of_classes_and_csv_inside_val(tmp_path):
    write_imagenet(tmp_path, flat_val=True)
    (tmp_path / "LOC_val_solution.csv").rename(tmp_path / "val" / "LOC_val_solution.csv")
    dm = ImageNetDataModule(tmp_path, num_classes=3)
    dm.setup("test")
    assert len(dm.datasets["test"]) == 6


def test_transforms(tmp_path):
    write_imagenet(tmp_path, size=(40, 30))
    dm = ImageNetDataModule(tmp_path, num_classes=3, image_size=16, batch_size=4)
    dm.setup("fit")
    x, y = dm.datasets["train"][0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 0
    a, b = dm.datasets["val"][0][0], dm.datasets["val"][0][0]
    torch.testing.assert_close(a, b)
    paper = ImageNetDataModule(tmp_path, num_classes=3)
    assert paper.train_transform()(Image.new("RGB", (500, 375))).shape == (3, 224, 224)
    resize = paper.eval_transform().transforms[1]
    assert resize.size == [256]  # resize 256 + center crop 224
    assert paper.eval_transform()(Image.new("RGB", (500, 375))).shape == (3, 224, 224)
    batches = list(dm.train_dataloader())
    assert [len(t) for _, t in batches] == [4, 4]  # 9 images, drop_last


def test_num_classes_must_match_the_folders(tmp_path):
    write_imagenet(tmp_path)
    dm = ImageNetDataModule(tmp_path)  # default 1000
    assert dm.num_classes == 1000
    with pytest.raises(ValueError, match=r"expected 1000 class folders .* got 3; pass --data.num_classes 3"):
        dm.setup("fit")


def test_missing_labels_csv(tmp_path):
    write_imagenet(tmp_path)
    (tmp_path / "LOC_val_solution.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"flat val folder .* needs its labels file .*LOC_val_solution\.csv"):
        ImageNetDataModule(tmp_path, num_classes=3).setup("test")


def test_csv_unknown_synset_and_mismatched_rows(tmp_path):
    write_imagenet(tmp_path)
    csv = tmp_path / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines + ["ILSVRC2012_val_00000099,n09999999 1 2 3 4"]) + "\n")
    with pytest.raises(ValueError, match=r"LOC_val_solution\.csv:8: expected a synset among the 3 .* got 'n09999999'"):
        ImageNetDataModule(tmp_path, num_classes=3).setup("test")
    csv.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"1 images have no row \(e\.g\. \['ILSVRC2012_val_00000001'\]\), 0 rows"):
        ImageNetDataModule(tmp_path, num_classes=3).setup("test")
    csv.write_text("ImageId;PredictionString\n")
    with pytest.raises(ValueError, match=r"expected the header ImageId,PredictionString"):
        ImageNetDataModule(tmp_path, num_classes=3).setup("test")


def test_mixed_or_unknown_val_layout(tmp_path):
    write_imagenet(tmp_path)
    write_jpeg(tmp_path / "val" / "n01440764" / "x.JPEG")
    with pytest.raises(ValueError, match="expected either class folders or a flat folder of images, got both"):
        ImageNetDataModule(tmp_path, num_classes=3).setup("test")


def test_val_folder_with_unknown_synset(tmp_path):
    write_imagenet(tmp_path, flat_val=False)
    write_jpeg(tmp_path / "val" / "n07777777" / "x.JPEG")
    with pytest.raises(ValueError, match=r"unknown ones, e\.g\. \['n07777777'\]"):
        ImageNetDataModule(tmp_path, num_classes=3).setup("test")


def test_empty_class_folder_and_missing_train(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected the folder .*train.*image-net\.org"):
        ImageNetDataModule(tmp_path, num_classes=3).setup("fit")
    write_imagenet(tmp_path)
    (tmp_path / "train" / "n09000000").mkdir()
    with pytest.raises(ValueError, match=r"n09000000: expected image files"):
        ImageNetDataModule(tmp_path, num_classes=4).setup("fit")


def test_devkit_ground_truth_is_refused():
    with pytest.raises(ValueError, match="ILSVRC ids"):
        ImageNetDataModule(val_labels="ILSVRC2012_validation_ground_truth.txt")
