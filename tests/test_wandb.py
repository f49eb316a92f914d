"""W&B: the overlay config runs offline (no login, no network), names and groups runs; sweeps parse."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from crl_lightning.cli import main as crl
from crl_lightning.runs import METRICS_FILENAME

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "examples" / "configs" / "digits_crl.yaml")
WANDB = str(ROOT / "examples" / "configs" / "wandb.yaml")
SWEEPS = sorted((ROOT / "examples" / "sweeps").glob("*.yaml"))


def test_importing_the_package_does_not_import_wandb():
    code = (
        "import sys, crl_lightning, crl_lightning.cli, crl_lightning.callbacks, crl_lightning.compare, "
        "crl_lightning.figures, crl_lightning.metrics\n"
        "print(sorted(m for m in sys.modules if m == 'wandb' or m.startswith('wandb.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_offline_wandb_run_writes_its_folder_and_finishes(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true",
                       "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true", "WANDB_CONSOLE": "off"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # a login prompt would fail on EOF
    root = tmp_path / "run"
    try:
        crl(["fit", "--config", DIGITS, "--config", WANDB, "--trainer.default_root_dir", str(root),
             "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
             "--trainer.limit_test_batches", "2", "--trainer.enable_progress_bar", "false"])
        run = wandb.run
        assert run is not None and run.offline
        label = "Digits/preact_resnet20/CRL(alpha=1.5, beta=1)"
        group = f"{label} #{run.config['crl']['experiment']['id']}"  # the experiment's name
        assert (run.group, run.name, run.job_type) == (group, label + "/seed0", "fit")
        assert set(run.tags) == {"Digits", "preact_resnet20", "CRL(alpha=1.5, beta=1)",
                                 run.config["crl"]["experiment"]["id"]}
        config = dict(run.config)
        assert config["trainer"]["max_epochs"] == 1 and config["seed_everything"] == 0  # the resolved config
        assert config["model"]["init_args"]["criterion"]["init_args"] == {
            **config["model"]["init_args"]["criterion"]["init_args"], "alpha": 1.5, "beta": 1.0}
        assert config["crl"]["criterion"]["label"] == "CRL(alpha=1.5, beta=1)"
        run_id, summary = run.id, dict(run.summary)
    finally:
        wandb.finish()
    assert wandb.run is None  # finished
    (run_dir,) = (root / "wandb").glob(f"offline-run-*-{run_id}")
    # The run's record log, for `wandb sync`. wandb's service process writes it and may still be flushing it
    # when finish() returns on a busy machine (seen on 2 loaded cores), so wait for it, with a deadline.
    expected = (b"test_top1_err", b"val_top1_err", group.encode())
    deadline = time.monotonic() + 120
    while True:
        records = (run_dir / f"run-{run_id}.wandb").read_bytes()
        if all(e in records for e in expected) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [e for e in expected if e not in records] == []
    report = json.loads((root / "crl_lightning" / run_id / METRICS_FILENAME).read_text())  # next to checkpoints
    assert summary["test_top1_err"] == pytest.approx(report["metrics"]["test_top1_err"])
    assert group == f"{report['experiment']['label']} #{report['experiment']['id']}"  # as crl compare pools it
    assert list((root / "crl_lightning" / run_id / "checkpoints").glob("*.ckpt"))
    images = sorted(p.name.split("_")[0] for p in (run_dir / "files" / "media" / "images" / "test").glob("*.png"))
    assert images == ["confusion", "reliability", "softmax"]
    assert list((run_dir / "files" / "media" / "table" / "test").glob("per_class_acc*.table.json"))


def sweep_commands(path: Path) -> tuple[dict, list[list[str]]]:
    """The sweep config and the command line of each grid point (W&B's ${args} as --key=value)."""
    sweep = yaml.safe_load(path.read_text())
    names = list(sweep["parameters"])
    values = [p["values"] if "values" in p else [p["value"]] for p in sweep["parameters"].values()]
    commands = []
    for point in itertools.product(*values):
        args = [f"--{k}={v}" for k, v in zip(names, point, strict=True)]
        command = []
        for item in sweep["command"]:
            command += args if item == "${args}" else [item]
        commands.append(command)
    return sweep, commands


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_sweep_grid_points_parse(path, monkeypatch):
    sweep, commands = sweep_commands(path)
    assert sweep["method"] == "grid" and sweep["metric"]["name"] == "test_top1_err"
    expected_size = {"table1_alpha_beta": 15, "seeds": 10}[path.stem]
    assert len(commands) == expected_size
    monkeypatch.chdir(ROOT)  # the sweep's config paths are relative to the repository root
    for command in (commands[0], commands[-1]):
        assert command[0] == "crl"
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
            crl([*command[1:], "--print_config"])
        assert exit_info.value.code == 0
        config = yaml.safe_load(out.getvalue())
        assert config["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.WandbLogger"
        criterion = config["model"]["init_args"]["criterion"]
        for arg in command:
            key, _, value = arg.removeprefix("--").partition("=")
            if key == "model.init_args.criterion.init_args.alpha":
                assert criterion["init_args"]["alpha"] == float(value)
            elif key == "model.init_args.criterion.init_args.beta":
                assert criterion["init_args"]["beta"] == float(value)
            elif key == "model.init_args.criterion":
                assert criterion["class_path"] == value
            elif key == "seed_everything":
                assert config["seed_everything"] == int(value)
        if path.stem == "seeds":  # a class_path switch keeps only the new class's arguments
            crl_arm = criterion["class_path"].endswith("CompetingRatioLoss")
            assert (criterion["init_args"].get("alpha"), criterion["init_args"].get("beta")) == (
                (1.5, 1.0) if crl_arm else (None, None))


def test_configure_wandb_loggers_keeps_user_values(tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import WandbLogger

    from crl_lightning import ImageClassifier
    from crl_lightning.data import DigitsDataModule
    from crl_lightning.losses import CrossEntropyLoss
    from crl_lightning.wandb_naming import configure_wandb_loggers

    L.seed_everything(3)
    model = ImageClassifier("preact_resnet20", num_classes=10, in_chans=1, criterion=CrossEntropyLoss())
    auto, user = WandbLogger(project="p"), WandbLogger(project="p", name="mine", group="g", save_dir=str(tmp_path))
    trainer = L.Trainer(logger=[auto, user], default_root_dir=tmp_path / "root", enable_progress_bar=False)
    configure_wandb_loggers(trainer, model, DigitsDataModule(), job_type="fit")  # starts no W&B run
    assert auto._experiment is None
    init = auto._wandb_init
    experiment = init["config"]["crl"]["experiment"]
    assert experiment["label"] == "Digits/preact_resnet20/CE"
    assert (init["group"], init["name"], init["job_type"]) == (
        f"Digits/preact_resnet20/CE #{experiment['id']}", "Digits/preact_resnet20/CE/seed3", "fit")
    assert init["tags"] == ["Digits", "preact_resnet20", "CE", experiment["id"]] and init["config"]["crl"]["seed"] == 3
    assert init["dir"] == auto.save_dir == str(tmp_path / "root")  # the run folder follows default_root_dir
    assert (user._wandb_init["name"], user._wandb_init["group"], user.save_dir) == ("mine", "g", str(tmp_path))
