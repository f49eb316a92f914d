"""The options of every DataModule as the ``crl`` command sees them: the loader options declared once on
`ImageDataModule` (forwarded with ``**kwargs``), each subclass's changed defaults, the ``augment`` group
(`Augmentation`) with its types and defaults, and misspelled keys refused."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

import crl_lightning.data as data
from crl_lightning.cli import main
from crl_lightning.data import Augmentation, ImageDataModule

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "examples" / "configs" / "digits_crl.yaml")

#: Every DataModule a config can name (the exported subclasses of ImageDataModule that build a dataset).
MODULES = sorted(
    (cls for cls in map(data.__dict__.get, data.__all__)
     if inspect.isclass(cls) and issubclass(cls, ImageDataModule)
     and cls.build_dataset is not ImageDataModule.build_dataset),
    key=lambda cls: cls.__name__,
)
#: The options declared once, on the base; DigitsDataModule has no files, hence no data_dir.
LOADER_OPTIONS = [name for name in inspect.signature(ImageDataModule).parameters if name not in ("self", "augment")]
#: (batch_size, val_split) defaults, which some modules re-declare: the paper's batch sizes, Adience's and digits'
#: own validation split.
DEFAULTS = {
    "AdienceDataModule": (64, 0.1), "CIFAR100DataModule": (256, 0.0), "CIFAR10DataModule": (256, 0.0),
    "CUB200DataModule": (64, 0.0), "DigitsDataModule": (64, 0.1), "ImageFolderDataModule": (128, 0.0),
    "ImageNetDataModule": (256, 0.0), "SVHNDataModule": (64, 0.0),
}


def test_the_module_list_is_complete():
    assert [cls.__name__ for cls in MODULES] == sorted(DEFAULTS)
    assert LOADER_OPTIONS == ["data_dir", "batch_size", "num_workers", "pin_memory", "persistent_workers", "seed",
                              "val_split", "predict_dir", "bad_images"]


def _class_path(cls: type) -> str:
    return f"crl_lightning.data.{cls.__name__}"


@pytest.mark.parametrize("cls", MODULES, ids=lambda cls: cls.__name__)
def test_help_lists_every_base_option_and_the_augment_group(cls, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--data.help", _class_path(cls)])
    # the option entries after the usage lines, unwrapped (help lines are wrapped at the terminal width)
    text = " ".join(capsys.readouterr().out.split("Help for --data.help=")[1].split())
    for name in LOADER_OPTIONS:
        if name == "data_dir" and cls is data.DigitsDataModule:
            assert "--data.data_dir" not in text
        else:
            assert f"--data.{name} " in text, name
    batch_size, val_split = DEFAULTS[cls.__name__]
    assert f"(type: int, default: {batch_size})" in _entry(text, "--data.batch_size")
    assert f"(type: float, default: {val_split})" in _entry(text, "--data.val_split")
    assert "(type: Literal['raise', 'skip'], default: raise)" in _entry(text, "--data.bad_images")
    for field in dataclasses.fields(Augmentation):
        entry = _entry(text, f"--data.augment.{field.name}")
        assert f"(type: {field.type}, default: {field.default})" in entry, (field.name, entry)


def _entry(text: str, option: str) -> str:
    """The help entry of ``option`` in ``text``: from its name to the next option."""
    assert f"{option} " in text, option
    return text.split(f"{option} ")[1].split("--data.")[0]


@pytest.mark.parametrize("cls", MODULES, ids=lambda cls: cls.__name__)
def test_print_config_shows_the_options_with_their_defaults(cls, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--data", _class_path(cls), "--print_config"])
    init_args = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]
    expected = [name for name in LOADER_OPTIONS if not (name == "data_dir" and cls is data.DigitsDataModule)]
    assert set(expected) <= set(init_args)
    assert (init_args["batch_size"], init_args["val_split"]) == DEFAULTS[cls.__name__]
    assert init_args["num_workers"] == 0 and init_args["bad_images"] == "raise" and init_args["predict_dir"] is None
    assert init_args["augment"] == dataclasses.asdict(Augmentation())


@pytest.mark.parametrize("cls", MODULES, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("key", ["batch_sise", "augment.mixup_alfa"])
def test_a_misspelled_option_is_refused(cls, key):
    with pytest.raises((argparse.ArgumentError, SystemExit)) as err:
        main(["fit", "--data", _class_path(cls), f"--data.init_args.{key}", "3", "--print_config"])
    assert key.rsplit(".", 1)[-1] in str(err.value)


def test_the_config_file_keys_reach_the_module(tmp_path):
    """``data.init_args.augment.*`` in a YAML file (the form the example configs use) builds the Augmentation."""
    from crl_lightning.cli import build_cli

    overlay = tmp_path / "augment.yaml"
    overlay.write_text(yaml.safe_dump({"data": {"init_args": {"batch_size": 16, "augment": {"cutmix_alpha": 0.5}}}}))
    cli = build_cli(["fit", "--config", DIGITS, "--config", str(overlay), "--trainer.fast_dev_run", "1",
                     "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                     "--test_after_fit", "false"])
    assert cli.datamodule.augment == Augmentation(cutmix_alpha=0.5) and cli.datamodule.batch_size == 16
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"data": {"init_args": {"augment": {"mixup_alph": 0.2}}}}))
    with pytest.raises(argparse.ArgumentError, match="does not accept option 'mixup_alph'"):
        build_cli(["fit", "--config", DIGITS, "--config", str(bad), "--print_config"])


def test_augmentation_fields_are_validated():
    checks = {
        "augment.trivial_augment: expected true or false, got 'yes'": {"trivial_augment": "yes"},
        "augment.mixup_alpha: expected a number, got True": {"mixup_alpha": True},
        r"augment.cutmix_alpha: expected >= 0 \(0: off\), got -0.1": {"cutmix_alpha": -0.1},
        r"augment.random_erasing: expected a probability in \[0, 1\], got -0.5": {"random_erasing": -0.5},
    }
    for message, kwargs in checks.items():
        with pytest.raises(ValueError, match=message):
            Augmentation(**kwargs)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Augmentation().mixup_alpha = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="augment: expected an Augmentation, got dict"):
        data.DigitsDataModule(augment={"mixup_alpha": 0.2})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="augment.on_device: expected false for CUB200DataModule"):
        data.CUB200DataModule(augment=Augmentation(on_device=True))
    with pytest.raises(ValueError, match="bad_images: expected 'raise' or 'skip', got 'ignore'"):
        data.DigitsDataModule(bad_images="ignore")  # type: ignore[arg-type]


class _Recording(data.DigitsDataModule):
    """Digits that records each `wrap_dataset` call: (split, dataset length, number of indices or None)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls: list[tuple[str, int, int | None]] = []

    def wrap_dataset(self, split, dataset, indices=None):
        self.calls.append((split, len(dataset), None if indices is None else len(indices)))
        return super().wrap_dataset(split, dataset, indices)


def test_setup_wraps_each_split_once_through_the_hook_train_first():
    dm = _Recording()  # 1,797 digits: 360 test; 1,437 split 1,293 / 144 (val_split 0.1)
    dm.setup("fit")
    dm.setup("test")
    assert dm.calls == [("train", 1437, 1293), ("val", 1437, 144), ("test", 360, None)]
    assert len(dm.datasets["train"]) == 1293 and dm.datasets["val"] is not dm.datasets["test"]
    on_test = _Recording(val_split=0.0)  # validation on the test split: one dataset for both loaders
    on_test.setup("fit")
    on_test.setup("test")
    assert on_test.calls == [("train", 1437, None), ("val", 360, None)]
    assert on_test.datasets["val"] is on_test.datasets["test"]
