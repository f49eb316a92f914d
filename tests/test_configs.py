"""Every YAML in ``examples/configs`` is parsed (``--print_config``) and every experiment config runs a
``fast_dev_run`` with its real network on fixture data in the dataset's real on-disk format.

Experiment configs are the YAMLs with both ``model`` and ``data`` (the paper's tables); the others are
overlays composed after one (criterion swaps, W&B, smoke and speed settings). A new experiment config
whose data class has no fixture writer in `FIXTURES` fails `test_every_data_class_has_a_fixture`.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from cifar_fixtures import trust_fixture_md5, write_cifar10, write_cifar100
from torchvision.datasets import CIFAR10, CIFAR100

from crl_lightning.cli import build_cli, main
from crl_lightning.losses import CompetingRatioLoss, CrossEntropyLoss, FocalLoss

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "examples" / "configs"
README = REPO / "examples" / "README.md"
ALL_YAMLS = sorted(CONFIGS.rglob("*.yaml"))


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def _is_experiment(path: Path) -> bool:
    cfg = _load(path)
    return "class_path" in (cfg.get("model") or {}) and "class_path" in (cfg.get("data") or {})


EXPERIMENTS = [p for p in ALL_YAMLS if _is_experiment(p)]
OVERLAYS = [p for p in ALL_YAMLS if not _is_experiment(p)]
BASE = CONFIGS / "cifar10_resnet_crl.yaml"
DIGITS = CONFIGS / "digits_crl.yaml"


def _id(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


# ----- fixture data per data class ----------------------------------------------------------------
def _cifar(writer: Callable, dataset_cls: type) -> Callable:
    def make(root: Path, monkeypatch) -> list[str]:
        writer(root)
        trust_fixture_md5(monkeypatch, dataset_cls, root)
        return ["--data.init_args.data_dir", str(root)]

    return make


def _svhn(root: Path, monkeypatch) -> list[str]:
    from data_fixtures import trust_svhn_md5, write_svhn_mat

    for split, n in (("train", 6), ("test", 4), ("extra", 4)):
        write_svhn_mat(root, split, [(i % 10) + 1 for i in range(n)], seed=n)
    trust_svhn_md5(monkeypatch, root)
    return ["--data.init_args.data_dir", str(root)]


def _cub(root: Path, monkeypatch) -> list[str]:
    from data_fixtures import write_cub

    write_cub(root)
    return ["--data.init_args.data_dir", str(root), "--data.init_args.image_size", "32"]


def _adience(root: Path, monkeypatch) -> list[str]:
    from data_fixtures import write_adience

    write_adience(root)
    return ["--data.init_args.data_dir", str(root), "--data.init_args.image_size", "32"]


def _imagenet(root: Path, monkeypatch) -> list[str]:
    from data_fixtures import SYNSETS, write_imagenet

    write_imagenet(root)
    return ["--data.init_args.data_dir", str(root), "--data.init_args.image_size", "32",
            "--data.init_args.num_classes", str(len(SYNSETS)), "--model.init_args.top_k", "[1]"]


def _image_folder(root: Path, monkeypatch) -> list[str]:
    from data_fixtures import write_image_folder

    write_image_folder(root, {"train": 50, "test": 2}, size=(32, 32))  # val_split 0.02: >= 1 per class
    return ["--data.init_args.data_dir", str(root), "--data.init_args.train_per_class", "3"]


#: data class_path -> fn(root, monkeypatch) writing fixture files under root and returning CLI overrides.
#: Inputs are reduced to 32x32 where the paper used 224 (CUB, Adience, ImageNet); the networks are the real ones.
FIXTURES: dict[str, Callable[[Path, pytest.MonkeyPatch], list[str]]] = {
    "crl_lightning.data.CIFAR10DataModule": _cifar(write_cifar10, CIFAR10),
    "crl_lightning.data.CIFAR100DataModule": _cifar(write_cifar100, CIFAR100),
    "crl_lightning.data.DigitsDataModule": lambda root, monkeypatch: [],
    "crl_lightning.data.SVHNDataModule": _svhn,
    "crl_lightning.data.CUB200DataModule": _cub,
    "crl_lightning.data.AdienceDataModule": _adience,
    "crl_lightning.data.ImageNetDataModule": _imagenet,
    "crl_lightning.data.ImageFolderDataModule": _image_folder,
}

#: The paper's schedule per data class (Sec. IV-A-2): epochs, lr milestones (x0.1 each), batch size.
#: Adience: /10 after 60 and /100 after 80 is MultiStepLR([60, 80], gamma=0.1). Digits is this project's demo.
SCHEDULES = {
    "crl_lightning.data.CIFAR10DataModule": (300, [150, 225], 256),
    "crl_lightning.data.CIFAR100DataModule": (300, [150, 225], 256),
    "crl_lightning.data.SVHNDataModule": (40, [20, 30], 64),
    "crl_lightning.data.CUB200DataModule": (40, [20, 30], 64),
    "crl_lightning.data.AdienceDataModule": (120, [60, 80], 64),
    "crl_lightning.data.ImageNetDataModule": (90, [30, 60], 256),
    "crl_lightning.data.DigitsDataModule": (30, [15, 22], 64),
}
#: The real-data study configs (not paper experiments): their own short schedules, by config file name.
STUDY_SCHEDULES = {
    "cifar10_jpeg_cpu.yaml": (12, [6, 9], 128),
    "cifar10_jpeg_gpu.yaml": (8, [4, 6], 256),
    "image_folder_cpu.yaml": (16, [8, 12], 64),
}
#: Overrides that let a GPU config run its fast_dev_run on this CPU-only test machine.
CPU_OVERRIDES = {
    "cifar10_jpeg_gpu.yaml": ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true",
                              "--model.init_args.compile", "false", "--data.init_args.pin_memory", "false"],
}


def _schedule(path: Path) -> tuple[int, list[int], int]:
    return STUDY_SCHEDULES.get(path.name) or SCHEDULES[_load(path)["data"]["class_path"]]

#: Exact parameter counts of the networks (see tests/test_models.py for their sources), by (backbone, C).
PARAMS = {
    ("cifar_resnet34", 10): 21_282_122, ("cifar_resnet34", 100): 21_328_292,
    ("cifar_resnet50", 10): 23_520_842, ("cifar_resnet50", 100): 23_705_252,
    ("cifar_resnet101", 10): 42_512_970, ("cifar_resnet101", 100): 42_697_380,
    ("preact_resnet164", 10): 1_703_258, ("preact_resnet164", 100): 1_726_388,
    ("cifar_vgg16_bn", 10): 14_728_266, ("cifar_vgg16_bn", 100): 14_774_436,
    ("cifar_vgg19_bn", 10): 20_040_522, ("cifar_vgg19_bn", 100): 20_086_692,
}
#: torchvision's ImageNet ResNet-34 has 21,797,672 parameters with 1000 classes; its head is Linear(512, C).
TV_RESNET34_BODY = 21_797_672 - 513 * 1000

#: (config, backbone) of the CIFAR experiments of Tables I-III.
CIFAR_NETS = {
    "resnet": "cifar_resnet34", "resnet50": "cifar_resnet50", "resnet101": "cifar_resnet101",
    "resnet164": "preact_resnet164", "vgg16": "cifar_vgg16_bn", "vgg19": "cifar_vgg19_bn",
}


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """LightningCLI warns when pytest's own argv is present beside ``args``; give it a bare one."""
    monkeypatch.setattr("sys.argv", ["crl"])


def print_config(args: list[str], capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def top1_err(model: torch.nn.Module, loader, batches: int | None = None, datamodule=None) -> float:
    """Percent of wrong top-1 predictions of ``model`` (eval mode) on the first ``batches`` of ``loader``.

    ``datamodule``: its ``on_after_batch_transfer`` is applied to each batch (uint8 batches normalised there).
    """
    model.eval()
    wrong = total = 0
    with torch.no_grad():
        for k, batch in enumerate(loader):
            if batches is not None and k == batches:
                break
            images, target = datamodule.on_after_batch_transfer(batch, 0) if datamodule is not None else batch
            wrong += int((model(images).argmax(dim=1) != target).sum())
            total += len(target)
    return 100.0 * wrong / total


def fast_args(tmp_path: Path) -> list[str]:
    return ["--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--trainer.enable_progress_bar", "false", "--data.init_args.batch_size", "2",
            "--data.init_args.num_workers", "0", "--data.init_args.pin_memory", "false"]


# ----- inventory ----------------------------------------------------------------------------------
def test_inventory_covers_the_paper_tables():
    names = {p.name for p in EXPERIMENTS}
    expected = {f"cifar{d}_{net}_crl.yaml" for d in (10, 100) for net in CIFAR_NETS}
    assert expected <= names, f"missing CIFAR configs: {sorted(expected - names)}"
    assert {"ce.yaml", "focal.yaml", "smoke.yaml", "speed.yaml"} <= {p.name for p in OVERLAYS}
    # Table IV (written with the datasets): one config per dataset
    for prefix in ("svhn", "cub", "adience_age", "imagenet"):
        assert any(n.startswith(prefix) for n in names), f"no Table IV config for {prefix}"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=_id)
def test_every_data_class_has_a_fixture(path):
    data = _load(path)["data"]["class_path"]
    assert data in FIXTURES, f"{_id(path)}: no fixture writer for {data}; add one to FIXTURES in {__file__}"
    assert data in SCHEDULES or path.name in STUDY_SCHEDULES, f"{_id(path)}: no schedule for {data} in SCHEDULES"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=_id)
def test_every_experiment_saves_last_ckpt_at_every_epoch_end(path):
    """What ``crl fit ... --ckpt_path last`` resumes from: the end of the last finished epoch (exact resume)."""
    listed = _load(path)["trainer"]["callbacks"]
    callbacks = {cb["class_path"].rsplit(".", 1)[-1]: cb.get("init_args") or {} for cb in listed}
    assert callbacks["ModelCheckpoint"]["save_last"] is True
    mid_epoch = {"monitor", "every_n_train_steps", "train_time_interval", "save_on_exception"}
    assert not [key for key, value in callbacks["ModelCheckpoint"].items() if key in mid_epoch and value]
    assert callbacks["ModelCheckpoint"].get("every_n_epochs", 1) == 1
    assert "OnExceptionCheckpoint" not in callbacks  # Lightning would resume every fit from its mid-epoch file


@pytest.mark.parametrize("path", EXPERIMENTS, ids=_id)
def test_every_experiment_is_documented_in_examples_readme(path):
    text = README.read_text()
    assert f"examples/configs/{_id(path)}" in text, f"{_id(path)} has no command in {README}"


# ----- print_config of every YAML -----------------------------------------------------------------
@pytest.mark.parametrize("path", EXPERIMENTS, ids=_id)
def test_experiment_print_config_has_the_paper_schedule(path, capsys):
    cfg = print_config(["--config", str(path)], capsys)
    model, data, trainer = cfg["model"]["init_args"], cfg["data"], cfg["trainer"]
    epochs, milestones, batch = _schedule(path)
    assert trainer["max_epochs"] == epochs
    assert data["init_args"]["batch_size"] == batch
    assert model["optimizer"]["class_path"] == "torch.optim.SGD"
    sgd = model["optimizer"]["init_args"]
    assert (sgd["lr"], sgd["momentum"], sgd["nesterov"], sgd["weight_decay"]) == (0.1, 0.9, True, 1e-4)
    assert model["lr_scheduler"]["class_path"] == "torch.optim.lr_scheduler.MultiStepLR"
    assert model["lr_scheduler"]["init_args"]["milestones"] == milestones
    assert model["lr_scheduler"]["init_args"]["gamma"] == 0.1
    criterion = model["criterion"]
    assert criterion["class_path"] == "crl_lightning.losses.CompetingRatioLoss"
    assert (criterion["init_args"]["alpha"], criterion["init_args"]["beta"]) == (1.5, 1.0)
    assert cfg["seed_everything"] == 0


@pytest.mark.parametrize("dataset", [10, 100])
@pytest.mark.parametrize("net", sorted(CIFAR_NETS))
def test_cifar_config_network_and_data(dataset, net, capsys):
    cfg = print_config(["--config", str(CONFIGS / f"cifar{dataset}_{net}_crl.yaml")], capsys)
    assert cfg["model"]["init_args"]["backbone"] == CIFAR_NETS[net]
    assert cfg["data"]["class_path"] == f"crl_lightning.data.CIFAR{dataset}DataModule"
    assert cfg["data"]["init_args"]["val_split"] == 0.0
    assert cfg["test_after_fit"] is True


@pytest.mark.parametrize("path", OVERLAYS, ids=_id)
def test_overlay_print_config_composes_with_an_experiment(path, capsys):
    base = print_config(["--config", str(BASE)], capsys)
    cfg = print_config(["--config", str(BASE), "--config", str(path)], capsys)
    assert cfg["data"]["class_path"] == base["data"]["class_path"]
    assert cfg["model"]["init_args"]["backbone"] == base["model"]["init_args"]["backbone"]


def test_ce_overlay_gives_exactly_cross_entropy(capsys):
    base = print_config(["--config", str(BASE)], capsys)
    cfg = print_config(["--config", str(BASE), "--config", str(CONFIGS / "overlays" / "ce.yaml")], capsys)
    criterion = cfg["model"]["init_args"]["criterion"]
    assert criterion["class_path"] == "crl_lightning.losses.CrossEntropyLoss"
    assert set(criterion["init_args"]) == {"weight", "ignore_index", "reduction", "label_smoothing"}
    assert criterion["init_args"] == {"weight": None, "ignore_index": -100, "reduction": "mean", "label_smoothing": 0.0}
    # nothing but the criterion changes
    base["model"]["init_args"].pop("criterion")
    cfg["model"]["init_args"].pop("criterion")
    assert cfg == base


def test_focal_overlay_gives_focal_loss_without_leaked_alpha(capsys):
    cfg = print_config(["--config", str(CONFIGS / "cifar10_resnet164_crl.yaml"),
                        "--config", str(CONFIGS / "overlays" / "focal.yaml")], capsys)
    criterion = cfg["model"]["init_args"]["criterion"]
    assert criterion["class_path"] == "crl_lightning.losses.FocalLoss"
    assert criterion["init_args"]["gamma"] == 2.0 and criterion["init_args"]["alpha"] is None
    assert "beta" not in criterion["init_args"]


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 0.25), (2.0, 0.0)])
def test_table1_grid_cell_overrides(alpha, beta, capsys):
    cfg = print_config(["--config", str(CONFIGS / "cifar100_resnet_crl.yaml"),
                        "--model.init_args.criterion.init_args.alpha", str(alpha),
                        "--model.init_args.criterion.init_args.beta", str(beta)], capsys)
    init = cfg["model"]["init_args"]["criterion"]["init_args"]
    assert (init["alpha"], init["beta"]) == (alpha, beta)


def test_readme_lists_all_table1_cells():
    text = README.read_text()
    cells = set(re.findall(r"cifar(10|100)_resnet_crl\.yaml[^\n]*?alpha ([\d.]+)[^\n]*?beta ([\d.]+)", text))
    expected = {(d, a, b) for d in ("10", "100") for a in ("1", "1.5", "2") for b in ("0", "0.25", "0.5", "0.75", "1")}
    assert expected <= cells, f"missing Table I commands: {sorted(expected - cells)}"


# ----- fast_dev_run of every experiment -----------------------------------------------------------
def _expected_params(backbone: str, num_classes: int) -> int | None:
    if backbone == "torchvision:resnet34":
        return TV_RESNET34_BODY + 513 * num_classes
    return PARAMS.get((backbone, num_classes))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=_id)
def test_experiment_fast_dev_run_on_fixture_data(path, tmp_path, monkeypatch):
    data = _load(path)["data"]["class_path"]
    if data not in FIXTURES:
        pytest.fail(f"no fixture writer for {data}")
    data_args = FIXTURES[data](tmp_path / "data", monkeypatch)
    # test_after_fit runs once per config family below (the CIFAR-10 ResNet-34 one); here fit only.
    cli = build_cli(["fit", "--config", str(path), *data_args, *fast_args(tmp_path), "--test_after_fit", "false",
                     *CPU_OVERRIDES.get(path.name, [])])
    model, trainer = cli.model, cli.trainer
    hp = model.hparams
    assert hp.num_classes == cli.datamodule.num_classes and hp.in_chans == cli.datamodule.in_chans
    expected = _expected_params(hp.backbone, hp.num_classes)
    if expected is not None:
        assert sum(p.numel() for p in model.backbone.parameters()) == expected
    assert isinstance(model.criterion, CompetingRatioLoss)
    assert (model.criterion.alpha, model.criterion.beta) == (1.5, 1.0)
    group = trainer.optimizers[0].param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 1e-4)
    assert trainer.lr_scheduler_configs[0].scheduler.milestones == Counter(_schedule(path)[1])
    assert trainer.global_step == 1
    metrics = trainer.callback_metrics
    # CRL(1.5, 1) >= log 1.5 for any logits; from fresh weights the one training batch sees near-uniform
    # predictions, where CRL is log C + log(2.5 - 1/C) (measured within 1.1 nats for every config)
    train_loss, num_classes = float(metrics["train_loss"]), hp.num_classes
    assert math.isfinite(train_loss) and train_loss >= math.log(1.5) - 1e-6
    assert abs(train_loss - math.log(num_classes) - math.log(2.5 - 1 / num_classes)) < 1.5
    # the one validation batch, recounted with the weights after the step (these are not meaningful
    # after one step of lr 0.1 on 2 images, and may be NaN for the ImageNet-style nets, which argmax
    # and the metric both count as class 0; what is checked is that the metric counts what it says)
    loader = cli.datamodule.val_dataloader()
    assert float(metrics["val_top1_err"]) == pytest.approx(top1_err(model, loader, 1, cli.datamodule))


# ----- the quick-start config (cifar10_resnet_crl.yaml) -------------------------------------------
def test_cifar10_quickstart_with_short_data_dir_flag_fits_and_tests(tmp_path, monkeypatch):
    root = write_cifar10(tmp_path / "data")
    trust_fixture_md5(monkeypatch, CIFAR10, root)
    cli = build_cli(["fit", "--config", str(BASE), "--data.data_dir", str(root), "--trainer.fast_dev_run", "1",
                     "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
                     "--data.init_args.num_workers", "0", "--data.init_args.pin_memory", "false"])
    assert cli.datamodule.data_dir == root and cli.datamodule.batch_size == 256
    assert len(cli.datamodule.datasets["train"]) == 20 and len(cli.datamodule.datasets["test"]) == 10
    # test_after_fit ran on the 10 test images (one batch; no checkpoint under fast_dev_run: the final weights)
    metrics = cli.trainer.callback_metrics
    assert float(metrics["test_top1_err"]) == pytest.approx(top1_err(cli.model, cli.datamodule.test_dataloader()))
    assert float(metrics["test_top5_err"]) <= float(metrics["test_top1_err"])


def test_cifar_configs_test_the_last_epoch(tmp_path, monkeypatch):
    """No checkpoint monitor: one is saved every epoch and test_after_fit tests the last epoch's weights."""
    root = write_cifar10(tmp_path / "data")
    trust_fixture_md5(monkeypatch, CIFAR10, root)
    cli = build_cli(["fit", "--config", str(CONFIGS / "cifar10_vgg16_crl.yaml"), "--data.data_dir", str(root),
                     "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1",
                     "--trainer.default_root_dir", str(tmp_path / "runs"),
                     "--trainer.enable_progress_bar", "false", "--data.init_args.batch_size", "10",
                     "--data.init_args.num_workers", "0", "--data.init_args.pin_memory", "false"])
    checkpoint = cli.trainer.checkpoint_callback
    assert checkpoint.monitor is None
    # 20 train images, batches of 10: 2 steps per epoch; the tested checkpoint is the second epoch's
    assert Path(checkpoint.best_model_path).name == "epoch=1-step=4.ckpt"
    assert torch.load(checkpoint.best_model_path, weights_only=False)["epoch"] == 1
    assert torch.load(checkpoint.last_model_path, weights_only=False)["global_step"] == 4
    # the last epoch's checkpoint holds the final weights: recount the test error of the model in memory
    err = top1_err(cli.model, cli.datamodule.test_dataloader())
    assert float(cli.trainer.callback_metrics["test_top1_err"]) == pytest.approx(err)


def test_cifar10_quickstart_on_an_empty_folder_says_where_it_looked(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(empty / "cifar-10-batches-py"))) as info:
        main(["fit", "--config", str(BASE), "--data.data_dir", str(empty), "--trainer.fast_dev_run", "1",
              "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.enable_progress_bar", "false",
              "--data.init_args.num_workers", "0"])
    assert "--data.download true" in str(info.value)


# ----- overlays that run ------------------------------------------------------------------------
def test_ce_overlay_fast_dev_run_builds_torch_cross_entropy(tmp_path, monkeypatch):
    root = write_cifar100(tmp_path / "data")
    trust_fixture_md5(monkeypatch, CIFAR100, root)
    cli = build_cli(["fit", "--config", str(CONFIGS / "cifar100_vgg16_crl.yaml"),
                     "--config", str(CONFIGS / "overlays" / "ce.yaml"), "--data.data_dir", str(root),
                     *fast_args(tmp_path), "--test_after_fit", "false"])
    criterion = cli.model.criterion
    assert type(criterion) is CrossEntropyLoss and isinstance(criterion, torch.nn.CrossEntropyLoss)
    assert criterion.weight is None and criterion.label_smoothing == 0.0 and criterion.reduction == "mean"
    assert not hasattr(criterion, "alpha") and not hasattr(criterion, "beta")


def test_focal_overlay_fast_dev_run(tmp_path):
    cli = build_cli(["fit", "--config", str(DIGITS), "--config", str(CONFIGS / "overlays" / "focal.yaml"),
                     *fast_args(tmp_path), "--test_after_fit", "false"])
    assert type(cli.model.criterion) is FocalLoss and cli.model.criterion.gamma == 2.0
    assert cli.model.criterion.weight is None


def test_smoke_overlay_runs_one_short_epoch(tmp_path):
    cli = build_cli(["fit", "--config", str(DIGITS), "--config", str(CONFIGS / "overlays" / "smoke.yaml"),
                     "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])
    trainer = cli.trainer
    assert trainer.current_epoch == 1 and trainer.global_step == 4  # max_epochs 1, limit_train_batches 4
    assert cli.datamodule.batch_size == 16
    # test_after_fit of the digits config ran on limit_test_batches=2 batches of 16, with the final weights
    err = top1_err(cli.model, cli.datamodule.test_dataloader(), batches=2)
    assert float(trainer.callback_metrics["test_top1_err"]) == pytest.approx(err)
    (report,) = tmp_path.rglob("test_metrics.json")
    record = json.loads(report.read_text())
    assert record["num_samples"] == 32 and record["metrics"]["test_top1_err"] == pytest.approx(err)


@pytest.mark.parametrize(("precision", "on_cpu", "native", "warned"), [
    ("bf16-mixed", True, False, True), ("bf16-true", True, False, True), ("bf16-mixed", True, True, False),
    ("bf16-mixed", False, False, False), ("32-true", True, False, False), ("16-mixed", True, False, False)])
def test_emulated_bf16_warning_only_for_bf16_on_a_cpu_without_it(precision, on_cpu, native, warned, recwarn):
    from crl_lightning.config_checks import warn_emulated_bf16

    message = warn_emulated_bf16(precision, on_cpu, native_bf16=native)
    assert (message is not None) is warned and len(recwarn) == int(warned)
    if warned:
        assert message.startswith(f"trainer.precision {precision}: this CPU has no native bf16")
        assert message.endswith("set --trainer.precision 32-true") and str(recwarn[0].message) == message


@pytest.mark.parametrize("native", [False, True])
def test_speed_overlay_sets_bf16_and_channels_last(tmp_path, monkeypatch, recwarn, native):
    monkeypatch.setattr("crl_lightning.config_checks.cpu_has_native_bf16", lambda: native)
    cli = build_cli(["fit", "--config", str(DIGITS), "--config", str(CONFIGS / "overlays" / "speed.yaml"),
                     *fast_args(tmp_path), "--test_after_fit", "false"])
    assert cli.model.hparams.channels_last is True
    assert cli.trainer.precision == "bf16-mixed"
    assert cli.model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert math.isfinite(float(cli.trainer.callback_metrics["train_loss"]))
    emulated = [w for w in recwarn if "no native bf16" in str(w.message)]
    assert len(emulated) == int(not native)  # the CLI warns once, only where bf16 would be emulated
