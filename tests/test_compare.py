"""`crl compare`: Table II (rows dataset/backbone, columns criteria, mean ± std over seeds) from run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crl_lightning.cli import main as crl
from crl_lightning.compare import comparison_table, load_records
from crl_lightning.losses import CompetingRatioLoss, CrossEntropyLoss, FocalLoss
from crl_lightning.runs import METRICS_FILENAME, METRICS_FORMAT, criterion_info, experiment_identity

DIGITS = str(Path(__file__).resolve().parents[1] / "examples" / "configs" / "digits_crl.yaml")
CRL = {"name": "CompetingRatioLoss", "params": {"alpha": 1.5, "beta": 1.0}, "label": "CRL(alpha=1.5, beta=1)"}
CE = {"name": "CrossEntropyLoss", "params": {}, "label": "CE"}


def write_run(folder: Path, dataset: str, backbone: str, criterion: dict, seed: int, err: float, created: str = "",
              config: dict | None = None, command: str = "fit", trained_by: dict | None = None, **metrics) -> None:
    """A ``test_metrics.json`` as `TestReport` writes it (format 2, its experiment from ``config``)."""
    folder.mkdir(parents=True)
    fold = ((config or {}).get("data") or {}).get("init_args", {}).get("fold")
    record = {"format": METRICS_FORMAT, "dataset": dataset, "backbone": backbone, "criterion": criterion,
              "seed": seed, "fold": fold, "command": command, "trained_by": trained_by,
              "experiment": experiment_identity(config, dataset=dataset, network=backbone, criterion=criterion),
              "metrics": {"test_top1_err": err, **metrics}, "created": created, "config": config}
    (folder / METRICS_FILENAME).write_text(json.dumps(record))


@pytest.fixture
def two_run_folders(tmp_path):
    """Two folders as two users would have them: CIFAR-10 runs in one, CIFAR-100 runs in another."""
    a, b = tmp_path / "a", tmp_path / "b"
    write_run(a / "lightning_logs" / "version_0", "CIFAR10DataModule", "cifar_resnet34", CE, 0, 6.5, test_ece=0.04)
    write_run(a / "lightning_logs" / "version_1", "CIFAR10DataModule", "cifar_resnet34", CE, 1, 6.7, test_ece=0.05)
    write_run(a / "lightning_logs" / "version_2", "CIFAR10DataModule", "cifar_resnet34", CRL, 0, 5.9)
    write_run(a / "lightning_logs" / "version_3", "CIFAR10DataModule", "cifar_resnet34", CRL, 1, 6.1)
    write_run(a / "lightning_logs" / "version_4", "CIFAR10DataModule", "cifar_resnet34", CRL, 2, 6.0)
    write_run(b / "crl_lightning" / "x1y2z3", "CIFAR100DataModule", "cifar_resnet34", CRL, 0, 27.34)
    return a, b


CAPTION = "mean ± std over seeds or CV folds (n runs); a row is one experiment but for its criterion"
EXPECTED = f"""\
test_top1_err (%): {CAPTION}

| experiment | CE | CRL(alpha=1.5, beta=1) |
|---|---|---|
| CIFAR10 / cifar_resnet34 | 6.60 ± 0.14 (n=2) | 6.00 ± 0.10 (n=3) |
| CIFAR100 / cifar_resnet34 | – | 27.34 (n=1) |
"""


def test_compare_two_fake_run_folders_prints_the_table(two_run_folders, capsys):
    crl(["compare", *map(str, two_run_folders)])
    assert capsys.readouterr().out == EXPECTED


def test_compare_several_metrics_and_digits(two_run_folders, capsys):
    crl(["compare", str(two_run_folders[0]), "--metric", "test_ece", "--digits", "3"])
    assert capsys.readouterr().out == (
        f"test_ece (fraction): {CAPTION}\n\n"
        "| experiment | CE |\n|---|---|\n"
        "| CIFAR10 / cifar_resnet34 | 0.045 ± 0.007 (n=2) |\n"
    )


def test_compare_temperature_scaled_metrics_have_the_raw_units_and_digits(tmp_path, capsys):
    for seed, (nll, nll_ts) in enumerate(((0.31, 0.25), (0.33, 0.27))):
        write_run(tmp_path / f"v{seed}", "DigitsDataModule", "preact_resnet20", CE, seed, 1.0, test_nll=nll,
                  test_nll_ts=nll_ts, test_ece_ts=0.01 + seed / 100)
    crl(["compare", str(tmp_path), "--metric", "test_nll_ts", "--metric", "test_ece_ts"])
    assert capsys.readouterr().out == (
        f"test_nll_ts (nats): {CAPTION}\n\n| experiment | CE |\n|---|---|\n"
        "| Digits / preact_resnet20 | 0.2600 ± 0.0141 (n=2) |\n\n"
        f"test_ece_ts (fraction): {CAPTION}\n\n| experiment | CE |\n|---|---|\n"
        "| Digits / preact_resnet20 | 0.0150 ± 0.0071 (n=2) |\n"
    )


def test_compare_errors(two_run_folders, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        crl(["compare", str(two_run_folders[0]), "--metric", "test_bogus"])
    assert exit_info.value.code == 2
    assert "expected one of ['test_ece', 'test_top1_err'], got 'test_bogus'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        crl(["compare", str(tmp_path / "missing")])
    assert "expected a run folder or a test_metrics.json file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        crl(["compare", str(tmp_path / "empty")])
    assert "no test_metrics.json under" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    bad = tmp_path / "bad" / METRICS_FILENAME
    bad.write_text(json.dumps({"format": METRICS_FORMAT, "metrics": {}}))
    assert load_records([tmp_path / "bad"]) == []
    assert capsys.readouterr().err == (f"warning: skipping {bad}: expected the keys dataset, backbone, criterion, "
                                       "metrics; missing ['dataset', 'backbone', 'criterion']\n")
    bad.write_text(json.dumps({"format": "someone_else/3", "metrics": {}}))
    assert load_records([tmp_path / "bad"]) == []
    assert capsys.readouterr().err == (f"warning: skipping {bad}: expected a metrics file of format "
                                       f"{METRICS_FORMAT} (or crl_lightning.test_metrics/1), got format "
                                       "'someone_else/3'\n")


def test_compare_names_and_skips_a_truncated_metrics_file(two_run_folders, capsys):
    cut = two_run_folders[0] / "lightning_logs" / "version_1" / METRICS_FILENAME  # CE seed 1, 6.7
    cut.write_text(cut.read_text()[:50])
    crl(["compare", *map(str, two_run_folders)])
    captured = capsys.readouterr()
    (warning,) = captured.err.splitlines()
    assert warning.startswith(f"warning: skipping {cut}: expected JSON, got a parse error: ")
    assert "| CIFAR10 / cifar_resnet34 | 6.50 (n=1) | 6.00 ± 0.10 (n=3) |" in captured.out


def test_compare_counts_a_rerun_once(two_run_folders, tmp_path, capsys):
    """A second run of CE seed 0 is a rerun, not a third seed: the newest counts and the cell says so."""
    write_run(tmp_path / "again", "CIFAR10DataModule", "cifar_resnet34", CE, 0, 6.9, created="2027-01-01T00:00:00")
    crl(["compare", str(two_run_folders[0]), str(tmp_path / "again")])
    captured = capsys.readouterr()
    # seeds 0 (the rerun's 6.9, newer than 6.5) and 1 (6.7): 6.80 +- 0.14, n=2
    assert "| CIFAR10 / cifar_resnet34 | 6.80 ± 0.14 (n=2; 1 rerun left out) | 6.00 ± 0.10 (n=3) |" in captured.out


def test_compare_labels_cross_validation_folds(tmp_path, capsys):
    def config(fold):
        return {"data": {"class_path": "crl_lightning.data.AdienceDataModule", "init_args": {"fold": fold}}}

    for fold, err in enumerate([30.0, 32.0, 34.0, 36.0]):  # crl cv records: the fold is in the config
        write_run(tmp_path / "cv" / f"fold_{fold}" / "lightning_logs" / "version_0", "AdienceDataModule",
                  "cifar_resnet34", CRL, 0, err, config=config(fold))
    write_run(tmp_path / "again" / "fold_3", "AdienceDataModule", "cifar_resnet34", CRL, 0, 38.0, created="2027",
              config=config(3))  # fold 3 again, newer: a rerun
    crl(["compare", str(tmp_path)])
    assert capsys.readouterr().out.splitlines()[-1] == (
        "| Adience / cifar_resnet34 | 33.50 ± 3.42 (4 folds; 1 rerun left out) |")  # 30, 32, 34 and 38


def test_criterion_labels():
    assert criterion_info(CompetingRatioLoss(alpha=1.5, beta=1.0))["label"] == "CRL(alpha=1.5, beta=1)"
    assert criterion_info(CompetingRatioLoss(alpha=2, beta=0.25))["params"] == {"alpha": 2.0, "beta": 0.25}
    assert criterion_info(CrossEntropyLoss())["label"] == "CE"
    assert criterion_info(CrossEntropyLoss(label_smoothing=0.1))["label"] == "CE(label_smoothing=0.1)"
    assert criterion_info(FocalLoss())["label"].startswith("Focal(")
    assert criterion_info(None)["label"] == "unknown"


def test_crl_test_writes_the_file_that_compare_reads(tmp_path, capsys):
    root = tmp_path / "run"
    for _ in range(2):  # a run and its rerun
        crl(["test", "--config", DIGITS, "--trainer.default_root_dir", str(root), "--trainer.limit_test_batches",
             "2", "--trainer.enable_progress_bar", "false", "--model.init_args.criterion.init_args.beta", "0.5"])
    path, rerun = sorted(root.rglob(METRICS_FILENAME))
    assert path.parent == root / "lightning_logs" / "version_0"  # the run folder of the default logger
    assert rerun.parent == root / "lightning_logs" / "version_1"
    record = json.loads(path.read_text())
    assert (record["dataset"], record["backbone"], record["seed"]) == ("DigitsDataModule", "preact_resnet20", 0)
    assert record["criterion"]["label"] == "CRL(alpha=1.5, beta=0.5)"
    assert record["num_samples"] == 128  # 2 batches of 64
    assert record["config"]["model"]["init_args"]["criterion"]["init_args"]["beta"] == 0.5
    assert record["config"]["trainer"]["limit_test_batches"] == 2
    for name in ("softmax_heatmap", "reliability_diagram", "confusion_matrix"):
        png = path.parent / record["files"]["figures"][name]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header, *rows = [line.split(",") for line in (path.parent / "confusion_matrix.csv").read_text().splitlines()]
    assert header[1:] == [str(d) for d in range(10)] and sum(int(v) for row in rows for v in row[1:]) == 128
    capsys.readouterr()
    crl(["compare", str(root)])
    err = record["metrics"]["test_top1_err"]
    last = capsys.readouterr().out.splitlines()[-1]
    # one run, not two seeds; a `crl test` is not a fit's result: a row of its own
    assert last == f"| Digits / preact_resnet20 [crl test] | {err:.2f} (n=1; 1 rerun left out) |"
    assert (record["command"], record["epochs"], record["trained_by"]) == ("test", 0, {"run_dir": None,
                                                                                       "ckpt_path": None})
    assert comparison_table(load_records([root]), "test_nll").endswith(  # NLL with the study's 4 decimals
        f"| {record['metrics']['test_nll']:.4f} (n=1; 1 rerun left out) |")


# ----- one experiment identity: the scenarios a user met, end to end on digits -------------------------------
QUICK = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_test_batches", "2",
         "--trainer.enable_progress_bar", "false"]
EXAMPLES = str(Path(__file__).resolve().parents[1] / "examples")


@pytest.fixture(scope="module")
def users_runs(tmp_path_factory):
    """One run folder as a user fills it: the demo, a rerun, a subclass, another batch size, a test of a checkpoint."""
    import sys

    root = tmp_path_factory.mktemp("users") / "digits_crl"
    common = ["--config", DIGITS, "--trainer.default_root_dir", str(root), *QUICK]
    crl(["fit", *common])                                                  # version_0: the demo (1 epoch)
    crl(["fit", *common])                                                  # version_1: its rerun
    sys.path.insert(0, EXAMPLES)
    try:
        crl(["fit", *common, "--model", "subclass_classifier.ConfidencePenaltyClassifier",
             "--model.init_args.penalty", "0.1"])                         # version_2: another model
    finally:
        sys.path.remove(EXAMPLES)
    crl(["fit", *common, "--data.init_args.batch_size", "16"])             # version_3: another batch size
    ckpt = root / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    crl(["test", *common, "--ckpt_path", str(ckpt)])                       # version_4: a test of a checkpoint
    records = {int(p.parent.name.split("_")[1]): json.loads(p.read_text()) for p in root.rglob(METRICS_FILENAME)}
    return root, records


def test_each_experiment_is_a_row_and_only_identical_reruns_are_left_out(users_runs, capsys):
    root, records = users_runs
    err = {v: f"{r['metrics']['test_top1_err']:.2f}" for v, r in records.items()}
    capsys.readouterr()
    crl(["compare", str(root)])
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows == [
        "| experiment | CRL(alpha=1.5, beta=1) |", "|---|---|",
        f"| Digits / preact_resnet20 | {err[1]} (n=1; 1 rerun left out) |",  # the demo; its rerun left out
        f"| Digits / preact_resnet20 (ConfidencePenaltyClassifier(penalty=0.1)) | {err[2]} (n=1) |",
        f"| Digits / preact_resnet20 (batch_size=16) | {err[3]} (n=1) |",
        f"| Digits / preact_resnet20 [crl test] | {err[4]} (n=1) |",  # not a rerun of the run it tests
    ]
    assert records[1]["metrics"] == records[0]["metrics"]  # a deterministic rerun: the same numbers
    assert records[2]["experiment"]["label"] == (
        "ConfidencePenaltyClassifier/Digits/preact_resnet20/CRL(alpha=1.5, beta=1)")
    assert len({r["experiment"]["id"] for r in records.values()}) == 3  # demo (x2, and its test), subclass, batch 16


def test_a_test_of_a_checkpoint_takes_the_identity_of_the_run_that_trained_it(users_runs):
    root, records = users_runs
    tested, trained = records[4], records[1]
    assert tested["command"] == "test" and trained["command"] == "fit"
    assert tested["experiment"]["id"] == trained["experiment"]["id"]
    assert (tested["seed"], tested["epochs"], trained["epochs"]) == (0, 1, 1)
    assert tested["trained_by"] == {"run_dir": str(root / "lightning_logs" / "version_1"),
                                    "ckpt_path": str(root / "lightning_logs" / "version_1" / "checkpoints" /
                                                     "last.ckpt")}


def test_experiment_filter(users_runs, capsys):
    root, records = users_runs
    subclass = records[2]["experiment"]
    for wanted in (subclass["id"], subclass["id"][:6], subclass["label"]):
        capsys.readouterr()
        crl(["compare", str(root), "--experiment", wanted])
        assert capsys.readouterr().out.splitlines()[4:] == [
            f"| Digits / preact_resnet20 | {records[2]['metrics']['test_top1_err']:.2f} (n=1) |"]
    with pytest.raises(SystemExit):
        crl(["compare", str(root), "--experiment", "nonesuch"])
    assert "--experiment: expected an experiment id or label of these runs [" in capsys.readouterr().err


def test_a_run_of_a_subclass_with_its_own_network_is_named_by_that_network():
    import lightning as L
    from torch import nn

    from crl_lightning import ImageClassifier
    from crl_lightning.runs import run_identity

    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1))

    class OwnNetwork(ImageClassifier):
        def build_backbone(self):
            return TinyNet()

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    own = run_identity(trainer, OwnNetwork(in_chans=1))
    plain = run_identity(trainer, ImageClassifier(in_chans=1))
    assert (own["backbone"], own["model"]) == ("TinyNet", "OwnNetwork")
    assert plain["backbone"] == "preact_resnet20"  # the default name, used by the plain model only
    assert own["experiment"]["id"] != plain["experiment"]["id"]  # the model class takes part


@pytest.mark.parametrize(("option", "value"), [("--trainer.max_epochs", "0"), ("--trainer.max_steps", "0")])
def test_fit_refuses_to_train_nothing(tmp_path, option, value):
    from crl_lightning.cli import ConfigError

    with pytest.raises(ConfigError, match=rf"{option[2:]}: expected at least 1 \(or -1 for no limit\), got 0"):
        crl(["fit", "--config", DIGITS, "--trainer.default_root_dir", str(tmp_path), option, value])
    assert not list(tmp_path.rglob(METRICS_FILENAME))


def test_experiment_settings_leave_out_seed_fold_paths_and_display():
    from crl_lightning.runs import config_changes, experiment_id, experiment_settings

    base = {"seed_everything": 0, "ckpt_path": None,
            "trainer": {"max_epochs": 5, "default_root_dir": "runs/a", "logger": True, "enable_progress_bar": True,
                        "callbacks": [{"class_path": "lightning.pytorch.callbacks.TQDMProgressBar"},
                                      {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                       "init_args": {"dirpath": "x", "save_last": True}}]},
            "data": {"class_path": "crl_lightning.data.CIFAR10DataModule",
                     "init_args": {"data_dir": "data", "seed": 0, "fold": 1, "batch_size": 128}},
            "model": {"class_path": "crl_lightning.ImageClassifier", "init_args": {"backbone": "preact_resnet20"}}}
    other = json.loads(json.dumps(base))
    other.update(seed_everything=7)
    other["trainer"].update(default_root_dir="elsewhere", logger=False, enable_progress_bar=False, callbacks=[
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"dirpath": "y", "save_last": True}}])
    other["data"]["init_args"].update(data_dir="/mnt/data", seed=7, fold=3)
    a, b = experiment_settings(base), experiment_settings(other)
    assert a == b and experiment_id(a) == experiment_id(b)
    assert a["trainer"]["callbacks"] == [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                          "init_args": {"save_last": True}}]
    other["data"]["init_args"]["batch_size"] = 16
    other["trainer"]["max_epochs"] = 6
    changed = experiment_settings(other)
    assert experiment_id(changed) != experiment_id(a)
    assert config_changes(a, changed) == "data.init_args.batch_size: 128 -> 16; trainer.max_epochs: 5 -> 6"


def test_criteria_that_differ_beyond_their_label_get_rows_of_their_own(tmp_path):
    """Guards against pooling by criterion label: CRL with and without class weights share the label
    ``CRL(alpha=1.5, beta=1)`` (numbers only) but are two experiments; CE beside them still shares one row."""

    def config(criterion):
        return {"model": {"class_path": "crl_lightning.ImageClassifier",
                          "init_args": {"backbone": "preact_resnet20", "criterion": criterion}},
                "data": {"class_path": "crl_lightning.data.DigitsDataModule", "init_args": {"batch_size": 64}},
                "trainer": {"max_epochs": 5}}

    crl_path = "crl_lightning.losses.CompetingRatioLoss"
    plain = config({"class_path": crl_path, "init_args": {"alpha": 1.5, "beta": 1.0, "weight": None}})
    weighted = config({"class_path": crl_path, "init_args": {"alpha": 1.5, "beta": 1.0, "weight": [1.0, 5.0]}})
    ce = config({"class_path": "crl_lightning.losses.CrossEntropyLoss", "init_args": {}})
    write_run(tmp_path / "plain", "DigitsDataModule", "preact_resnet20", CRL, 0, 1.0, config=plain)
    write_run(tmp_path / "weighted", "DigitsDataModule", "preact_resnet20", CRL, 0, 9.0, config=weighted)
    for seed, err in ((0, 2.0), (1, 4.0)):
        write_run(tmp_path / f"ce{seed}", "DigitsDataModule", "preact_resnet20", CE, seed, err, config=ce)
    table = comparison_table(load_records([tmp_path]))
    assert table.splitlines()[2:] == [
        "| experiment | CE | CRL(alpha=1.5, beta=1) |",
        "|---|---|---|",
        "| Digits / preact_resnet20 | 3.00 ± 1.41 (n=2) | – |",
        "| Digits / preact_resnet20 (weight=[1.0, 5.0]) | – | 9.00 (n=1) |",
        "| Digits / preact_resnet20 (weight=null) | – | 1.00 (n=1) |",
    ]
