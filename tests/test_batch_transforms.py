"""Whole-batch augmentation on the device (crl_lightning.data.batch_transforms) and the DataModule path using it."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from scipy import stats
from torchvision.transforms import v2

from crl_lightning.data.batch_transforms import normalize, random_crop_flip

H = W = 6
PAD = 2


def _pattern(n: int) -> torch.Tensor:
    """n copies of a (1, H, W) uint8 image whose pixels are 1..H*W (0 only appears as padding)."""
    return (torch.arange(1, H * W + 1, dtype=torch.uint8).view(1, 1, H, W)).repeat(n, 1, 1, 1)


def _candidates() -> dict[tuple[int, int, bool], torch.Tensor]:
    padded = torch.nn.functional.pad(_pattern(1)[0], (PAD, PAD, PAD, PAD))
    out = {}
    for top in range(2 * PAD + 1):
        for left in range(2 * PAD + 1):
            crop = padded[:, top:top + H, left:left + W]
            out[(top, left, False)] = crop
            out[(top, left, True)] = crop.flip(2)
    return out


def _identify(images: torch.Tensor) -> list[tuple[int, int, bool]]:
    candidates = _candidates()
    keys = list(candidates)
    stacked = torch.stack([candidates[k] for k in keys])  # (K, 1, H, W)
    found = []
    for image in images:
        match = (stacked == image).flatten(1).all(1).nonzero()
        assert len(match) == 1, "every output must be exactly one crop/flip of the padded image"
        found.append(keys[int(match[0])])
    return found


def _check_uniform(draws: list[tuple[int, int, bool]]) -> None:
    n = len(draws)
    for axis in (0, 1):
        counts = Counter(d[axis] for d in draws)
        observed = [counts.get(k, 0) for k in range(2 * PAD + 1)]
        assert stats.chisquare(observed).pvalue > 1e-3, observed
    flips = sum(d[2] for d in draws)
    assert abs(flips / n - 0.5) < 4 * (0.25 / n) ** 0.5


def test_batched_crop_flip_draws_like_the_per_image_pipeline():
    n = 4000
    torch.manual_seed(0)
    batched = _identify(random_crop_flip(_pattern(n), padding=PAD, flip=True))
    per_image = v2.Compose([v2.RandomCrop((H, W), padding=PAD), v2.RandomHorizontalFlip()])
    torch.manual_seed(1)
    reference = _identify(torch.stack([per_image(img) for img in _pattern(n)]))
    _check_uniform(batched)
    _check_uniform(reference)
    # same support: all (2p + 1)^2 offsets x 2 flips occur in both
    assert set(batched) == set(reference) and len(set(batched)) == 2 * (2 * PAD + 1) ** 2
    # offsets of the two axes are independent (as in v2.RandomCrop)
    table = [[sum(1 for d in batched if d[0] == t and d[1] == left) for left in range(5)] for t in range(5)]
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_crop_flip_options_and_errors():
    x = _pattern(3)
    torch.testing.assert_close(random_crop_flip(x, padding=0, flip=False), x)
    g = torch.Generator().manual_seed(0)
    flipped_only = random_crop_flip(x, padding=0, flip=True, generator=g)
    assert all(torch.equal(a, x[0]) or torch.equal(a, x[0].flip(2)) for a in flipped_only)
    assert random_crop_flip(x.float(), padding=1).dtype == torch.float32
    with pytest.raises(ValueError, match=r"expected a \(N, C, H, W\) batch, got shape \(6, 6\)"):
        random_crop_flip(torch.zeros(6, 6))
    with pytest.raises(ValueError, match="padding: expected >= 0 pixels, got -1"):
        random_crop_flip(x, padding=-1)


def test_normalize_matches_the_per_image_transform():
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    reference = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])(images)
    out = normalize(images, mean, std)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="expected 3 per-channel values, got 1 and 3"):
        normalize(images, (0.5,), std)


def test_datamodule_device_pipeline_equals_the_per_image_one_on_eval_batches(tmp_path):
    from data_fixtures import write_image_folder

    from crl_lightning.data import Augmentation, ImageFolderDataModule

    write_image_folder(tmp_path, {"train": 4, "test": 2})
    per_image = ImageFolderDataModule(tmp_path, in_memory=True, batch_size=6)
    device = ImageFolderDataModule(tmp_path, in_memory=True, augment=Augmentation(on_device=True), batch_size=6)
    for dm in (per_image, device):
        dm.setup("fit")
    assert device.datasets["train"].transform is None and device.datasets["train"].batched
    raw = next(iter(device.val_dataloader()))
    assert raw[0].dtype == torch.uint8 and raw[0].shape == (6, 3, 8, 8)  # one slice, no per-image collate
    images, target = device.on_after_batch_transfer(raw, 0)  # no trainer: not training, normalise only
    ref_images, ref_target = next(iter(per_image.val_dataloader()))
    torch.testing.assert_close(images, ref_images, rtol=0, atol=1e-6)
    assert torch.equal(target, ref_target)


def test_device_pipeline_needs_in_memory_cifar_preset(tmp_path):
    from data_fixtures import write_image_folder

    from crl_lightning.data import Augmentation, ImageFolderDataModule

    write_image_folder(tmp_path, {"train": 2, "test": 1})
    with pytest.raises(ValueError, match="augment.on_device: expected in_memory: true, preset: cifar"):
        ImageFolderDataModule(tmp_path, augment=Augmentation(on_device=True))
