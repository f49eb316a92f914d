"""Preprocessing with known values: every transform preset and every DataModule's train/eval transform.

A fixed image goes through each transform; the output is compared with the expected crop window, flip,
resize geometry and normalised values, computed by hand here (slicing, ``torch.flip``, a hand-made zero
pad, torchvision's functional ``resize`` at a size computed in the test, and ``(x / 255 - mean) / std``).
Random transforms are checked on many seeded draws: each output must equal one of the enumerated
possible crops/flips (CIFAR, Adience), or its crop window, read back from a ramp image, must lie within
the documented RandomResizedCrop range (ImageNet-style training), and the draws must cover that range.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from crl_lightning.data import (
    AdienceDataModule,
    CIFAR10DataModule,
    CIFAR100DataModule,
    CUB200DataModule,
    ImageNetDataModule,
    SVHNDataModule,
)
from crl_lightning.data import transforms as T

#: Published per-channel (mean, std) on [0, 1] pixels of each training set (CIFAR: the values used by
#: e.g. kuangliu/pytorch-cifar and the timm/torchvision recipes; ImageNet: torchvision's reference
#: scripts; SVHN: the values of the common SVHN training scripts).
PUBLISHED = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
#: One uint8 level after normalisation (smallest std): the tolerance where torchvision interpolates.
ONE_LEVEL = 1.0 / 255 / 0.197 + 1e-5


def random_image(height: int, width: int, seed: int = 0) -> tuple[Image.Image, torch.Tensor]:
    """A PIL RGB image of random pixels and the same pixels as a uint8 (3, H, W) tensor."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels), torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def normalized(x: torch.Tensor, stats) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 ``(x / 255 - mean) / std``, the documented normalisation."""
    mean = torch.tensor(stats[0], dtype=torch.float32)[:, None, None]
    std = torch.tensor(stats[1], dtype=torch.float32)[:, None, None]
    return (x.float() / 255 - mean) / std


def pad_crop_flip_candidates(x: torch.Tensor, size: int, padding: int) -> tuple[torch.Tensor, list]:
    """Every (top, left, flip) crop of ``x`` zero-padded by ``padding``: uint8 (K, 3, size, size) and keys."""
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding), value=0)
    return crop_flip_candidates(padded, size)


def crop_flip_candidates(x: torch.Tensor, size: int) -> tuple[torch.Tensor, list]:
    """Every (top, left, flip) ``size`` x ``size`` window of ``x`` (3, H, W), flipped or not."""
    crops, keys = [], []
    for top in range(x.shape[1] - size + 1):
        for left in range(x.shape[2] - size + 1):
            window = x[:, top:top + size, left:left + size]
            for flip in (False, True):
                crops.append(torch.flip(window, dims=[2]) if flip else window)
                keys.append((top, left, flip))
    return torch.stack(crops), keys


def match(out: torch.Tensor, candidates: torch.Tensor, keys: list, atol: float = 1e-5) -> tuple:
    """The key of the one candidate that ``out`` equals (normalised values); fails on none or several."""
    diff = (candidates - out).abs().flatten(1).amax(dim=1)
    hits = torch.nonzero(diff <= atol).flatten().tolist()
    assert len(hits) == 1, f"output equals {len(hits)} of the possible crops/flips (closest: {float(diff.min()):.4f})"
    return keys[hits[0]]


def draws(transform, image, n: int, seed: int = 0) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    return [transform(image) for _ in range(n)]


# ----- the statistics ---------------------------------------------------------------------------------
def test_stats_are_the_published_values():
    assert T.CIFAR10_STATS == PUBLISHED["cifar10"]
    assert T.CIFAR100_STATS == PUBLISHED["cifar100"]
    assert T.SVHN_STATS == PUBLISHED["svhn"]
    assert T.IMAGENET_STATS == PUBLISHED["imagenet"]


def test_to_normalized_tensor_values():
    image, x = random_image(5, 7)
    out = T.to_normalized_tensor(PUBLISHED["cifar10"])(image)
    assert out.shape == (3, 5, 7) and out.dtype == torch.float32
    torch.testing.assert_close(out, normalized(x, PUBLISHED["cifar10"]))
    # one pixel by hand: red 0..255 -> (v / 255 - 0.4914) / 0.2470
    assert float(out[0, 0, 0]) == pytest.approx((int(x[0, 0, 0]) / 255 - 0.4914) / 0.2470, abs=1e-6)


# ----- CIFAR: pad-4 random crop + horizontal flip -----------------------------------------------------
def test_cifar_train_is_a_zero_padded_crop_and_flip_of_the_image():
    image, x = random_image(32, 32, seed=1)
    stats = PUBLISHED["cifar10"]
    candidates, keys = pad_crop_flip_candidates(x, 32, 4)
    candidates = normalized(candidates, stats)
    seen = [match(out, candidates, keys) for out in draws(T.cifar_train(stats), image, 300)]
    tops, lefts, flips = zip(*seen, strict=True)
    assert set(tops) == set(lefts) == set(range(9))  # every offset of the 4-pixel pad occurs, no other
    assert 0.4 < np.mean(flips) < 0.6  # p = 0.5
    assert len(set(seen)) > 100  # of 162 possible windows


@pytest.mark.parametrize(("cls", "name"), [(CIFAR10DataModule, "cifar10"), (CIFAR100DataModule, "cifar100")])
def test_cifar_datamodule_train_and_eval_transforms(cls, name, tmp_path):
    image, x = random_image(32, 32, seed=2)
    dm = cls(tmp_path)
    stats = PUBLISHED[name]
    other = PUBLISHED["cifar100" if name == "cifar10" else "cifar10"]
    candidates, keys = pad_crop_flip_candidates(x, 32, 4)
    train_out = draws(dm.train_transform(), image, 40)
    seen = [match(out, normalized(candidates, stats), keys) for out in train_out]
    assert len(set(seen)) > 20 and {f for *_, f in seen} == {False, True}
    # eval: no crop, no flip, the same normalisation (and not the other CIFAR's statistics)
    for split in ("val", "test"):
        out = dm.transform(split)(image)
        torch.testing.assert_close(out, normalized(x, stats))
        assert not torch.allclose(out, normalized(x, other), atol=1e-3)
    assert dm.transform("train") is not None and dm.transform("train")(image).shape == (3, 32, 32)


# ----- SVHN: no augmentation --------------------------------------------------------------------------
def test_svhn_train_and_eval_are_the_plain_normalisation(tmp_path):
    image, x = random_image(32, 32, seed=3)
    dm = SVHNDataModule(tmp_path)
    expected = normalized(x, PUBLISHED["svhn"])
    torch.manual_seed(0)
    for split in ("train", "train", "val", "test"):
        torch.testing.assert_close(dm.transform(split)(image), expected)


# ----- ImageNet-style evaluation: short side to round(size * 8 / 7), centre crop ------------------------
def test_imagenet_eval_centre_crop_without_resize_is_exact_pixels():
    image, x = random_image(20, 30, seed=4)  # short side already 20: the resize keeps every pixel
    out = T.imagenet_eval(size=16, resize=20)(image)
    # centre 16 x 16 window of 20 x 30: rows 2..17, columns 7..22
    torch.testing.assert_close(out, normalized(x[:, 2:18, 7:23], PUBLISHED["imagenet"]))


@pytest.mark.parametrize(("height", "width", "resized", "top", "left"), [
    (45, 60, (18, 24), 1, 4),  # landscape: short side 45 -> 18 (= round(16 * 8 / 7)), long 60 -> 24
    (60, 45, (24, 18), 4, 1),  # portrait
])
def test_imagenet_eval_keeps_the_aspect_ratio_then_crops_the_centre(height, width, resized, top, left):
    image, x = random_image(height, width, seed=5)
    out = T.imagenet_eval(size=16)(image)
    assert round(16 * 8 / 7) == 18
    reference = F.resize(x, list(resized), antialias=True)[:, top:top + 16, left:left + 16]
    torch.testing.assert_close(out, normalized(reference, PUBLISHED["imagenet"]), atol=ONE_LEVEL, rtol=0)


def test_imagenet_eval_default_is_resize_256_crop_224():
    image, x = random_image(300, 400, seed=6)
    out = T.imagenet_eval()(image)
    reference = F.resize(x, [256, 341], antialias=True)[:, 16:240, 58:282]  # 400 * 256 / 300 = 341.3
    torch.testing.assert_close(out, normalized(reference, PUBLISHED["imagenet"]), atol=ONE_LEVEL, rtol=0)


# ----- ImageNet-style training: RandomResizedCrop + flip, read back from a ramp image -----------------
RAMP = 64


def ramp_image() -> Image.Image:
    """Red = 4 * column, green = 4 * row, blue = 128: a crop window can be read back from the output."""
    rows, cols = np.mgrid[0:RAMP, 0:RAMP]
    pixels = np.stack([4 * cols, 4 * rows, np.full_like(cols, 128)], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels)


def crop_window(out: torch.Tensor, size: int) -> tuple[float, float, float, float, bool]:
    """(left, top, width, height, flipped) of the ramp-image window that became ``out``, in input pixels.

    Bilinear resizing keeps a linear ramp linear away from the borders: an output column ``j`` of a
    crop starting at ``left``, ``w`` wide, has red ``4 * (left + (j + 0.5) * w / size - 0.5)``.
    """
    mean = torch.tensor(PUBLISHED["imagenet"][0])[:, None, None]
    std = torch.tensor(PUBLISHED["imagenet"][1])[:, None, None]
    raw = ((out * std + mean) * 255).double().numpy()
    inner = np.arange(2, size - 2)
    red = raw[0][:, 2:-2].mean(axis=0)
    green = raw[1][2:-2, :].mean(axis=1)
    slope_x, at0_x = np.polyfit(inner, red, 1)
    slope_y, at0_y = np.polyfit(inner, green, 1)
    flipped = slope_x < 0
    width, height = abs(slope_x) * size / 4, slope_y * size / 4
    left = (at0_x + (slope_x * (size - 1) if flipped else 0)) / 4 + 0.5 - 0.5 * width / size
    top = at0_y / 4 + 0.5 - 0.5 * height / size
    return left, top, width, height, flipped


def check_random_resized_crops(transform, size: int, n: int) -> None:
    """The documented RandomResizedCrop(size) + flip + ImageNet normalisation, over ``n`` seeded draws."""
    blue = (128 / 255 - 0.406) / 0.225
    areas, flips = [], []
    for out in draws(transform, ramp_image(), n):
        assert out.shape == (3, size, size) and out.dtype == torch.float32
        torch.testing.assert_close(out[2], torch.full((size, size), blue))  # ImageNet mean/std of channel 2
        left, top, width, height, flipped = crop_window(out, size)
        area = width * height / RAMP**2
        assert 0.08 * 0.9 < area < 1.02, area  # scale (0.08, 1)
        assert 0.75 * 0.95 < width / height < 4 / 3 * 1.05, width / height  # ratio (3/4, 4/3)
        assert -1 < left and left + width < RAMP + 1 and -1 < top and top + height < RAMP + 1
        areas.append(area)
        flips.append(flipped)
    assert min(areas) < 0.3 and max(areas) > 0.7  # random scale, not a fixed resize or crop
    assert 0.3 < np.mean(flips) < 0.7


def test_imagenet_train_random_resized_crop_window_flip_and_normalisation():
    check_random_resized_crops(T.imagenet_train(16), 16, 150)


# ----- file DataModules: CUB and ImageNet (imagenet_train / imagenet_eval), Adience ------------------
FILE_MODULES = {
    "cub": lambda root: CUB200DataModule(root, image_size=16),
    "imagenet": lambda root: ImageNetDataModule(root, num_classes=3, image_size=16),
    "adience": lambda root: AdienceDataModule(root, image_size=16),
}


@pytest.mark.parametrize("name", sorted(FILE_MODULES))
def test_file_datamodule_eval_is_short_side_resize_and_centre_crop(name, tmp_path):
    dm = FILE_MODULES[name](tmp_path)
    assert dm.resize_size == 18  # round(16 * 8 / 7)
    image, x = random_image(45, 60, seed=7)
    reference = normalized(F.resize(x, [18, 24], antialias=True)[:, 1:17, 4:20], PUBLISHED["imagenet"])
    for split in ("val", "test"):
        torch.testing.assert_close(dm.transform(split)(image), reference, atol=ONE_LEVEL, rtol=0)
    explicit = FILE_MODULES[name](tmp_path)
    explicit.resize_size = 20  # a given resize_size is used as is
    image, x = random_image(20, 30, seed=8)
    torch.testing.assert_close(explicit.eval_transform()(image), normalized(x[:, 2:18, 7:23], PUBLISHED["imagenet"]))


@pytest.mark.parametrize("name", ["cub", "imagenet"])
def test_cub_and_imagenet_train_is_random_resized_crop(name, tmp_path):
    check_random_resized_crops(FILE_MODULES[name](tmp_path).train_transform(), 16, 60)


def test_adience_train_is_resize_then_random_crop_and_flip(tmp_path):
    """Levi & Hassner: short side to resize_size, a random image_size crop of that, flip; ImageNet stats."""
    dm = AdienceDataModule(tmp_path, image_size=16)
    image, x = random_image(36, 54, seed=9)
    resized = F.resize(x, [18, 27], antialias=True)  # short side 36 -> 18
    candidates, keys = crop_flip_candidates(resized, 16)
    candidates = normalized(candidates, PUBLISHED["imagenet"])
    seen = []
    for out in draws(dm.train_transform(), image, 120):
        diff = (candidates - out).abs().flatten(1).amax(dim=1)
        assert float(diff.min()) <= ONE_LEVEL, "output is not a 16 x 16 crop of the 18 x 27 resized image"
        seen.append(keys[int(diff.argmin())])
    tops, lefts, flips = zip(*seen, strict=True)
    assert set(tops) == {0, 1, 2} and set(lefts) == set(range(12))
    assert 0.3 < np.mean(flips) < 0.7
