"""CUB2011 / CUB200DataModule over a fixture tree in the official format, and the real split files."""

from __future__ import annotations

import pytest
import torch
from data_fixtures import REAL_CUB, needs_real_cub, write_cub, write_jpeg
from PIL import Image

from crl_lightning.data import CUB2011, CUB200DataModule
from crl_lightning.data.cub import clip_box, find_cub_root, read_cub_labels, read_cub_split


@pytest.fixture
def cub(tmp_path):
    return write_cub(tmp_path)  # classes 1, 2, 200; 3 train + 2 test each; image 1 gray, 2 CMYK


def test_sizes_label_map_and_order(cub):
    train, test = CUB2011(cub, "train"), CUB2011(cub, "test")
    assert len(train) == 9 and len(test) == 6
    assert train.image_ids == [1, 2, 3, 6, 7, 8, 11, 12, 13]
    assert test.image_ids == [4, 5, 9, 10, 14, 15]
    assert train.targets == [0, 0, 0, 1, 1, 1, 199, 199, 199]  # 1-based class ids -> 0..199
    assert test.targets == [0, 0, 1, 1, 199, 199]
    assert len(CUB2011(cub, "all")) == 15


def test_grayscale_and_cmyk_become_rgb(cub):
    train = CUB2011(cub, "train")
    for i in (0, 1, 2):  # ids 1 (L), 2 (CMYK), 3 (RGB)
        image, _ = train[i]
        assert image.mode == "RGB" and image.size == (20, 16)
    with Image.open(train.paths[0]) as raw:
        assert raw.mode == "L"
    with Image.open(train.paths[1]) as raw:
        assert raw.mode == "CMYK"


def test_bounding_box_crop_is_clipped_to_the_image(cub):
    train = CUB2011(cub, "train", crop_to_bbox=True)
    assert train[0][0].size == (10, 8)  # box 2, 2, 10, 8 inside the 20x16 image
    assert train[2][0].size == (5, 6)  # image 3: box 15, 10, 30, 30 clipped to x 15..20, y 10..16
    assert clip_box((1.5, 2.2, 3.0, 4.0), 100, 100) == (1, 2, 5, 7)  # rounded outwards
    assert clip_box((-5.0, -5.0, 10.0, 10.0), 8, 8) == (0, 0, 5, 5)
    assert clip_box((30.0, 0.0, 5.0, 5.0), 20, 16) is None


def test_box_outside_the_image_raises_naming_it(cub):
    lines = (cub / "bounding_boxes.txt").read_text().splitlines()
    lines[0] = "1 50.0 50.0 5.0 5.0"
    (cub / "bounding_boxes.txt").write_text("\n".join(lines) + "\n")
    train = CUB2011(cub, "train", crop_to_bbox=True)
    with pytest.raises(ValueError, match=r"image 1 .*bounding box \(50.0, 50.0, 5.0, 5.0\) to overlap"):
        train[0]


def test_datamodule_transforms_and_loaders(tmp_path):
    write_cub(tmp_path, size=(40, 30))
    dm = CUB200DataModule(tmp_path, image_size=16, batch_size=4)  # data_dir = parent of CUB_200_2011
    assert dm.num_classes == 200 and dm.in_chans == 3
    dm.setup("fit")
    dm.setup("test")
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 9, "val": 6, "test": 6}
    x, y = dm.datasets["train"][0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    a, b = dm.datasets["test"][0][0], dm.datasets["test"][0][0]
    assert a.shape == (3, 16, 16)
    torch.testing.assert_close(a, b)  # eval: resize + center crop, deterministic
    batches = list(dm.train_dataloader())
    assert [len(t) for _, t in batches] == [4, 4]  # drop_last
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]


def test_default_eval_is_resize_256_center_crop_224(cub):
    dm = CUB200DataModule(cub)  # data_dir = the CUB_200_2011 folder itself
    assert find_cub_root(cub) == cub
    out = dm.eval_transform()(Image.new("RGB", (400, 300)))
    assert out.shape == (3, 224, 224)
    assert dm.train_transform()(Image.new("RGB", (400, 300))).shape == (3, 224, 224)


def test_val_split_stratified(tmp_path):
    cub = write_cub(tmp_path, per_class=(4, 1))
    dm = CUB200DataModule(cub, val_split=0.25, image_size=8)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 9 and sorted(dm.datasets["val"].targets) == [0, 1, 199]


def test_missing_metadata_names_file_and_source(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"images\.txt.*data\.caltech\.edu"):
        CUB200DataModule(tmp_path).setup("fit")


def test_missing_image_files_are_listed(cub):
    (cub / "images" / "002.Laysan_Albatross").rename(cub / "moved")
    with pytest.raises(FileNotFoundError, match=r"train images .*: 3 of 9 are missing.*Laysan"):
        CUB2011(cub, "train")


@pytest.mark.parametrize(
    ("file", "line", "match"),
    [
        ("image_class_labels.txt", "4 201", r"image 4: expected a class id in 1\.\.200, got 201"),
        ("image_class_labels.txt", "4 0", r"expected a class id in 1\.\.200, got 0"),
        ("train_test_split.txt", "4 2", r"image 4: expected is_training_image 0 or 1, got '2'"),
        ("train_test_split.txt", "4", r"train_test_split\.txt:4: expected 2 space-separated fields"),
        ("image_class_labels.txt", "x 1", r"image_class_labels\.txt:4: expected an integer image id, got 'x'"),
        ("bounding_boxes.txt", "4 1 1 0 5", r"image 4: expected a box with width, height > 0"),
    ],
)
def test_malformed_metadata_raises_with_file_and_line(cub, file, line, match):
    lines = (cub / file).read_text().splitlines()
    lines[3] = line
    (cub / file).write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=match):
        CUB2011(cub, "train", crop_to_bbox=True)


def test_ids_must_agree_between_files(cub):
    lines = (cub / "train_test_split.txt").read_text().splitlines()
    (cub / "train_test_split.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ValueError, match=r"same image ids .* 1 only in images\.txt \(e\.g\. \[15\]\)"):
        CUB2011(cub, "train")


def test_corrupt_image_raises_naming_it(cub):
    write_jpeg(cub / "images" / "bad.jpg")
    path = cub / "images" / "bad.jpg"
    path.write_bytes(b"not a jpeg")
    lines = (cub / "images.txt").read_text().splitlines()
    lines[0] = "1 bad.jpg"
    (cub / "images.txt").write_text("\n".join(lines) + "\n")
    dm = CUB200DataModule(cub, image_size=8, batch_size=2)
    dm.setup("fit")
    with pytest.raises(RuntimeError, match=r"cannot decode image .*bad\.jpg"):
        dm.datasets["train"][0]


@needs_real_cub
def test_real_cub_split_files():
    labels = read_cub_labels(REAL_CUB)
    split = read_cub_split(REAL_CUB)
    assert len(labels) == len(split) == 11_788
    assert labels.keys() == split.keys()
    train = [i for i, t in split.items() if t]
    test = [i for i, t in split.items() if not t]
    assert (len(train), len(test)) == (5_994, 5_794)
    assert sorted(set(labels.values())) == list(range(200))
    assert sorted({labels[i] for i in train}) == list(range(200))
    assert sorted({labels[i] for i in test}) == list(range(200))
    assert labels[1] == 0 and labels[11_788] == 199
