"""CIFAR-10/100 DataModules on fixture pickles in the real format: in-memory tensors, coarse labels, errors."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from cifar_fixtures import CIFAR100_COARSE_OF_FINE, trust_fixture_md5, write_cifar10, write_cifar100
from torchvision.datasets import CIFAR10, CIFAR100

from crl_lightning.data import Augmentation, CIFAR10DataModule, CIFAR100DataModule


@pytest.fixture
def cifar100(tmp_path, monkeypatch):
    root = write_cifar100(tmp_path, n_train=100, n_test=10)
    trust_fixture_md5(monkeypatch, CIFAR100, root)
    return root


def test_cifar100_coarse_labels_are_the_files_coarse_labels(cifar100):
    fine = CIFAR100DataModule(cifar100)
    coarse = CIFAR100DataModule(cifar100, target_type="coarse")
    assert (fine.num_classes, coarse.num_classes) == (100, 20)
    for dm in (fine, coarse):
        dm.setup("fit")
    fine_targets, coarse_targets = fine.datasets["train"].targets, coarse.datasets["train"].targets
    assert fine_targets == [i * 7 % 100 for i in range(100)]  # every fine class once
    coarse_of = dict(zip(fine_targets, coarse_targets, strict=True))
    assert [coarse_of[f] for f in range(5)] == [4, 1, 14, 8, 0]  # apple, aquarium_fish, baby, bear, beaver
    assert [coarse_of[f] for f in range(100)] == CIFAR100_COARSE_OF_FINE
    assert sorted(Counter(coarse_of.values()).values()) == [5] * 20  # 20 superclasses of 5 fine classes
    assert coarse.classes[4] == "fruit_and_vegetables" and len(coarse.classes) == 20
    assert fine.classes[:2] == ["fine_0", "fine_1"] and len(fine.classes) == 100
    with pytest.raises(ValueError, match="target_type: expected 'fine' or 'coarse', got 'super'"):
        CIFAR100DataModule(cifar100, target_type="super")


def test_coarse_config_links_20_classes_into_the_model(cifar100, tmp_path):
    from crl_lightning.cli import build_cli

    cli = build_cli(["fit", "--config", "examples/configs/cifar100_resnet_crl.yaml", "--data.data_dir", str(cifar100),
                     "--data.init_args.target_type", "coarse", "--trainer.fast_dev_run", "1",
                     "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
                     "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
                     "--data.init_args.pin_memory", "false", "--model.init_args.backbone", "preact_resnet20",
                     "--test_after_fit", "false"])
    assert cli.model.hparams.num_classes == 20 and cli.model.backbone.fc.out_features == 20


def test_images_are_held_as_uint8_tensors_and_match_torchvision(tmp_path, monkeypatch):
    root = write_cifar10(tmp_path)
    trust_fixture_md5(monkeypatch, CIFAR10, root)
    dm = CIFAR10DataModule(root)
    dm.setup("fit")
    train = dm.datasets["train"].dataset
    reference = CIFAR10(str(root), train=True)
    assert train.images.dtype == torch.uint8 and train.images.shape == (20, 3, 32, 32)
    assert torch.equal(train.images[3], torch.from_numpy(reference.data[3]).permute(2, 0, 1))
    assert train.targets == reference.targets
    # the per-image training transform gives the same crop/flip on the tensor as on torchvision's PIL image
    torch.manual_seed(5)
    from_tensor = dm.datasets["train"][3][0]
    torch.manual_seed(5)
    from_pil = dm.train_transform()(reference[3][0])
    torch.testing.assert_close(from_tensor, from_pil, rtol=0, atol=0)


def test_corrupt_and_missing_files_are_told_apart(tmp_path, monkeypatch):
    root = write_cifar10(tmp_path)
    trust_fixture_md5(monkeypatch, CIFAR10, root)
    batch = root / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:100])  # a truncated download
    with pytest.raises(ValueError, match=r"got \['data_batch_2'\] failing the MD5 integrity check .* download"):
        CIFAR10DataModule(root).setup("fit")
    batch.unlink()
    with pytest.raises(FileNotFoundError, match=r"missing \['data_batch_2'\].*--data\.download true"):
        CIFAR10DataModule(root).setup("fit")


def test_device_pipeline_crops_flips_and_normalises_training_batches(tmp_path, monkeypatch):
    """The fixture has no black pixel (``min_pixel=1``), so a pixel at the normalised black level can only be
    padding: guards against the padding check being met by dark fixture pixels while the crop never pads (or pads
    somewhere other than a border frame of at most 4 rows and columns)."""
    root = write_cifar10(tmp_path, min_pixel=1)
    trust_fixture_md5(monkeypatch, CIFAR10, root)
    dm = CIFAR10DataModule(root, augment=Augmentation(on_device=True), batch_size=20)
    dm.setup("fit")
    assert dm.batch_augment() == (4, True)
    images, target = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8

    class Training:
        training = True

    dm.trainer = Training()
    torch.manual_seed(0)
    out, out_target = dm.on_after_batch_transfer([images, target], 0)
    assert out.dtype == torch.float32 and out.shape == (20, 3, 32, 32) and torch.equal(out_target, target)
    mean = torch.tensor(CIFAR10DataModule.stats[0]).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10DataModule.stats[1]).view(1, 3, 1, 1)
    padding_value = (0 - mean) / std  # black padding, normalised
    assert not bool((((images.float() / 255 - mean) / std) == padding_value).any())  # no padding-like pixel in the data
    pad = (out == padding_value).all(dim=1)  # (N, H, W): every channel at the black level
    assert bool(pad.any())  # some crops reach into the padding
    for mask in pad:  # the padding is a frame: whole rows at the top or bottom, whole columns left or right
        rows, cols = mask.all(dim=1), mask.all(dim=0)
        assert torch.equal(mask, rows[:, None] | cols[None, :])
        for line in (rows, cols):
            k = int(line.sum())
            assert k <= 4 and (bool(line[:k].all()) or bool(line[32 - k:].all()))
    assert not torch.allclose(out, (images.float() / 255 - mean) / std)  # training batches are augmented
