"""`crl compare`: Table II (rows dataset/backbone, columns criteria, mean ± std over seeds) from run folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crl_lightning.cli import main as crl
from crl_lightning.compare import comparison_table, load_records
from crl_lightning.losses import CompetingRatioLoss, CrossEntropyLoss, FocalLoss
from crl_lightning.runs import METRICS_FILENAME, criterion_info

DIGITS = str(Path(__file__).resolve().parents[1] / "examples" / "configs" / "digits_crl.yaml")
CRL = {"name": "CompetingRatioLoss", "params": {"alpha": 1.5, "beta": 1.0}, "label": "CRL(alpha=1.5, beta=1)"}
CE = {"name": "CrossEntropyLoss", "params": {}, "label": "CE"}


def write_run(folder: Path, dataset: str, backbone: str, criterion: dict, seed: int, err: float, created: str = "",
              config: dict | None = None, **metrics) -> None:
    folder.mkdir(parents=True)
    record = {"dataset": dataset, "backbone": backbone, "criterion": criterion, "seed": seed,
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


EXPECTED = """\
test_top1_err (%): mean ± std over seeds or CV folds (n runs)

| dataset / backbone | CE | CRL(alpha=1.5, beta=1) |
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
        "test_ece (fraction): mean ± std over seeds or CV folds (n runs)\n\n"
        "| dataset / backbone | CE |\n|---|---|\n"
        "| CIFAR10 / cifar_resnet34 | 0.045 ± 0.007 (n=2) |\n"
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
    (tmp_path / "bad" / METRICS_FILENAME).write_text('{"metrics": {}}')
    with pytest.raises(ValueError, match="missing \\['dataset', 'backbone', 'criterion'\\]"):
        load_records([tmp_path / "bad"])


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
    for fold, err in enumerate([30.0, 32.0, 34.0]):  # crl cv records: the fold is in the config
        write_run(tmp_path / "cv" / f"fold_{fold}" / "lightning_logs" / "version_0", "AdienceDataModule",
                  "cifar_resnet34", CRL, 0, err, config={"data": {"init_args": {"fold": fold}}})
    write_run(tmp_path / "old" / "fold_3", "AdienceDataModule", "cifar_resnet34", CRL, 0, 36.0)  # fold from the path
    write_run(tmp_path / "again" / "fold_3", "AdienceDataModule", "cifar_resnet34", CRL, 0, 38.0, created="2027")
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
    assert last == f"| Digits / preact_resnet20 | {err:.2f} (n=1; 1 rerun left out) |"  # one run, not two seeds
    assert comparison_table(load_records([root]), "test_nll").endswith(
        f"| {record['metrics']['test_nll']:.2f} (n=1; 1 rerun left out) |")
