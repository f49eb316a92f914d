"""``crl study`` (paired runs, resumability, report; the statistics themselves: test_statistics.py); ``history.csv``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from crl_lightning.cli import main
from crl_lightning.statistics import holm_adjust, min_detectable_difference
from crl_lightning.study import criterion_arguments, first_epoch_overhead, parse_seeds, study_report

ROOT = Path(__file__).resolve().parents[1]
DIGITS = str(ROOT / "examples" / "configs" / "digits_crl.yaml")
CRITERIA = ["ce", "focal", "crl"]
QUICK = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.enable_progress_bar", "false"]


# ----- the report and the study's helpers ---------------------------------------------------------
def test_fewer_than_three_pairs_give_no_test():
    runs = [{"criterion": c, "seed": s, "metrics": {"test_top1_err": v}, "fingerprint": {}}
            for c, s, v in (("ce", 0, 10.0), ("crl", 0, 9.0), ("ce", 1, 12.0), ("crl", 1, 12.5))]
    c = study_report(runs, ["ce", "crl"], [0, 1])["paired"]["crl"]["test_top1_err"]
    assert c["note"] == "n < 3: no test is meaningful" and c["power"] is None and c["t_pvalue_holm"] is None
    assert c["diffs"] == [-1.0, 0.5] and c["mean_diff"] == pytest.approx(-0.25)


def test_first_epoch_overhead_from_history(tmp_path):
    history = tmp_path / "history.csv"
    history.write_text("epoch,step,lr,epoch_time_s\n1,2,0.1,30.0\n2,4,0.1,5.0\n3,6,0.1,7.0\n4,8,0.1,6.0\n")
    assert first_epoch_overhead(history) == {"first_epoch_s": 30.0, "later_median_s": 6.0, "overhead_s": 24.0}
    history.write_text("epoch,step,lr,epoch_time_s\n1,2,0.1,30.0\n")
    assert first_epoch_overhead(history) == {"first_epoch_s": 30.0, "later_median_s": None, "overhead_s": None}


def test_parse_seeds_and_criteria():
    assert parse_seeds(["0-4"]) == [0, 1, 2, 3, 4]
    assert parse_seeds(["3", "0-1,7"]) == [3, 0, 1, 7]
    for bad, message in ((["4-2"], "increasing range"), (["1", "0-2"], r"distinct seeds, got \[1\]"),
                         (["a"], "integers or ranges"),
                         (["0-100000000"], r"at most 1000 seeds .* got more with '0-100000000'"),
                         (["0-999", "1000"], r"at most 1000 seeds .* got more with '1000'")):
        with pytest.raises(ValueError, match=message):
            parse_seeds(bad)
    label, args = criterion_arguments("ce")
    assert label == "ce" and args[0] == "--model.init_args.criterion"
    assert json.loads(args[1])["class_path"] == "crl_lightning.losses.modules.CrossEntropyLoss"
    crl = json.loads(criterion_arguments("crl")[1][1])
    assert (crl["init_args"]["alpha"], crl["init_args"]["beta"]) == (1.5, 1.0)
    focal = str(ROOT / "examples" / "configs" / "overlays" / "focal.yaml")
    assert criterion_arguments(focal) == ("focal", ["--config", focal])
    with pytest.raises(ValueError, match=r"expected a registry name \[.*\] or a .yaml overlay, got 'crll'"):
        criterion_arguments("crll")


# ----- the study, end to end on digits ------------------------------------------------------------
def _initial_weights_digest(seed: int) -> str:
    import lightning as L

    from crl_lightning import ImageClassifier
    from crl_lightning.study import _digest

    L.seed_everything(seed, verbose=False)
    model = ImageClassifier("preact_resnet20", num_classes=10, in_chans=1)
    return _digest([t for t in model.state_dict().values() if t.is_floating_point()])


@pytest.fixture(scope="module")
def digits_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    main(["study", "--config", DIGITS, "--criteria", *CRITERIA, "--seeds", "0-2", "--out", str(out), *QUICK])
    return out


def test_study_writes_its_files_and_is_paired(digits_study, capsys):
    out = digits_study
    study = json.loads((out / "study.json").read_text())
    assert study["criteria"] == CRITERIA and study["seeds"] == [0, 1, 2] and study["complete"] is True
    assert [(r["criterion"], r["seed"]) for r in study["runs"]] == [(c, s) for s in range(3) for c in CRITERIA]
    for r in study["runs"]:
        metrics = json.loads(Path(r["files"]["test_metrics"]).read_text())["metrics"]
        assert r["metrics"] == metrics and 0 <= metrics["test_top1_err"] < 90  # 3 steps already beat chance
        assert Path(r["files"]["test_metrics"]).is_relative_to(out / r["criterion"] / f"seed_{r['seed']}")
    prints = {(r["criterion"], r["seed"]): r["fingerprint"] for r in study["runs"]}
    assert all(prints[("ce", s)] == prints[(c, s)] for s in range(3) for c in CRITERIA)
    assert prints[("ce", 0)]["weights"] != prints[("ce", 1)]["weights"]
    assert prints[("ce", 0)]["weights"] == _initial_weights_digest(0)  # the fingerprint is the seed's init
    assert study["pairing"]["ok"] is True
    summary = study["summary"]["crl"]["test_top1_err"]
    values = [r["metrics"]["test_top1_err"] for r in study["runs"] if r["criterion"] == "crl"]
    assert summary["n"] == 3 and summary["mean"] == pytest.approx(sum(values) / 3)
    paired = study["paired"]["crl"]["test_top1_err"]
    diffs = [b["metrics"]["test_top1_err"] - a["metrics"]["test_top1_err"]
             for a, b in zip(study["runs"][::3], study["runs"][2::3], strict=True)]
    assert paired["diffs"] == pytest.approx(diffs) and paired["mean_diff"] == pytest.approx(sum(diffs) / 3)
    md = (out / "study.md").read_text()
    assert "| crl | test top-1 error (%) | 3 |" in md and "same initial weights" in md
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(out / "curves.png").shape[2] in (3, 4)
    rows = list(csv.DictReader(open(study["runs"][0]["files"]["history"])))
    assert [row["epoch"] for row in rows] == ["1"] and float(rows[0]["val_top1_err"]) < 90


def test_second_invocation_skips_finished_runs(digits_study, monkeypatch):
    import crl_lightning.cli

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(crl_lightning.cli, "build_cli", no_training)  # resolve_config still parses
    before = (digits_study / "study.json").read_text()
    main(["study", "--config", DIGITS, "--criteria", *CRITERIA, "--seeds", "0-2", "--out", str(digits_study), *QUICK])
    after = json.loads((digits_study / "study.json").read_text())
    assert [r["metrics"] for r in after["runs"]] == [r["metrics"] for r in json.loads(before)["runs"]]


def test_study_reports_temperature_scaling_holm_power_and_where_it_helps(digits_study):
    study = json.loads((digits_study / "study.json").read_text())
    for r in study["runs"]:  # T fitted on the digits validation split (144 images), the _ts metrics beside the raw
        assert r["temperature"] > 0 and r["temperature_note"].startswith("fitted on the 144 validation samples")
        assert {"test_nll", "test_nll_ts", "test_ece", "test_ece_ts"} <= set(r["metrics"])
    assert study["summary"]["crl"]["test_nll_ts"]["n"] == 3
    comparisons = [study["paired"][c][m] for c in ("focal", "crl") for m in study["paired"][c]]
    assert len(comparisons) == 10 and study["correction"]["method"] == "holm"
    raw = [c["t_pvalue"] for c in comparisons]
    assert [c["t_pvalue_holm"] for c in comparisons] == pytest.approx(holm_adjust(raw))  # one family of 10
    assert all(c["power"]["mdd_80"] == pytest.approx(min_detectable_difference(c["std_diff"], 3))
               for c in comparisons)
    md = (digits_study / "study.md").read_text()
    assert "| paired t p | Holm t p | Wilcoxon p | Holm Wilcoxon p |" in md
    assert f"Holm's step-down correction over the {study['correction']['tests']} paired t-tests" in md
    assert "- focal, test top-1 error: with n = 3 seeds the smallest difference detectable at 80 % power is" in md
    assert "test NLL, temperature-scaled (nats)" in md and "T does not change the top-1 error" in md
    per_class = study["per_class"]["crl"]
    assert len(per_class) == 3 and all(r["name"] == str(r["class"]) and r["n"] == 3 for r in per_class)
    assert abs(per_class[0]["mean_diff"]) >= abs(per_class[2]["mean_diff"])
    assert "## Where it helps" in md and f"| crl | {per_class[0]['name']} |" in md
    import matplotlib.image

    image = matplotlib.image.imread(digits_study / "paired_differences.png")
    assert image.shape[0] > image.shape[1]  # 10 rows, one per criterion x metric
    assert study["files"]["paired_differences"] == "paired_differences.png" and "paired_differences.png" in md


def test_each_run_gets_its_seed_split_criterion_and_arguments(digits_study):
    """Guards against per-run plumbing bugs: a seed that does not reach the data split (every seed trained on
    split 0), a criterion label that trains another criterion, extra arguments dropped."""
    from crl_lightning.data import DigitsDataModule

    study = json.loads((digits_study / "study.json").read_text())
    classes = {"ce": "crl_lightning.losses.modules.CrossEntropyLoss",
               "focal": "crl_lightning.losses.modules.FocalLoss",
               "crl": "crl_lightning.losses.modules.CompetingRatioLoss"}
    for r in study["runs"]:
        record = json.loads(Path(r["files"]["test_metrics"]).read_text())
        config = record["config"]
        assert (record["seed"], config["seed_everything"], config["data"]["init_args"]["seed"]) == (r["seed"],) * 3
        assert config["model"]["init_args"]["criterion"]["class_path"] == classes[r["criterion"]]
        assert (config["trainer"]["max_epochs"], config["trainer"]["limit_train_batches"]) == (1, 3)
        assert r["experiment"]["id"] == record["experiment"]["id"]  # resolved before the run = recorded by it
    prints = {(r["criterion"], r["seed"]): r["fingerprint"] for r in study["runs"]}
    assert prints[("ce", 0)]["first_batch"] != prints[("ce", 1)]["first_batch"]  # another split and order
    splits = []
    for seed in (0, 1):
        dm = DigitsDataModule(seed=seed)
        dm.setup("fit")
        splits.append(sorted(dm.datasets["val"].indices))
    assert splits[0] != splits[1]  # what the seed changes: the validation images drawn from train


def test_changed_arguments_are_refused_naming_the_keys(digits_study):
    base = ["study", "--config", DIGITS, "--criteria", "ce", "--seeds", "0", "--out", str(digits_study), *QUICK]
    with pytest.raises(ValueError) as err:
        main([*base, "--trainer.max_epochs", "2"])
    assert str(err.value) == (f"{digits_study / 'ce' / 'seed_0'}: expected a run of this experiment, got one of "
                              "another: trainer.max_epochs: 1 -> 2; use another --out, or delete the folder to redo it")
    with pytest.raises(ValueError, match=r"another: data.init_args.batch_size: 64 -> 16; use another --out"):
        main([*base, "--data.init_args.batch_size", "16"])


def test_a_changed_config_file_is_refused_and_a_comment_is_not_a_change(tmp_path):
    config = tmp_path / "digits.yaml"
    config.write_text(Path(DIGITS).read_text())
    args = ["study", "--config", str(config), "--criteria", "ce", "--seeds", "0", "--out", str(tmp_path / "out"),
            *QUICK]
    main(args)
    config.write_text(Path(DIGITS).read_text() + "\n# a comment changes nothing\n")
    main(args)  # the same experiment: the finished run is reused
    config.write_text(Path(DIGITS).read_text().replace("lr: 0.1", "lr: 0.5"))
    with pytest.raises(ValueError, match=r"another: model.init_args.optimizer.init_args.lr: 0.1 -> 0.5; use"):
        main(args)


def test_fast_dev_run_is_refused(tmp_path):
    with pytest.raises(ValueError, match="got trainer.fast_dev_run, under which nothing is written"):
        main(["study", "--config", DIGITS, "--criteria", "ce", "--seeds", "0", "--out", str(tmp_path),
              "--trainer.fast_dev_run", "true"])


def test_interrupted_runs_are_redone_or_resumed(tmp_path):
    args = ["study", "--config", DIGITS, "--criteria", "ce", "--seeds", "0", "--out", str(tmp_path), *QUICK]
    main(args)
    run = tmp_path / "ce" / "seed_0"
    record = json.loads((run / "run.json").read_text())
    # killed after its checkpoint: resumed from it (fit has nothing left to do, the test runs again)
    (ckpt,) = run.rglob("last.ckpt")  # ModelCheckpoint(save_last=True) of the digits config
    (run / "run.json").write_text(json.dumps({**record, "status": "running"}))
    (tmp_path / "study.json").unlink()
    main(args)
    resumed = json.loads((run / "run.json").read_text())
    assert resumed["status"] == "done" and resumed["resumed_from"] == str(ckpt)
    assert resumed["metrics"]["test_top1_err"] == pytest.approx(record["metrics"]["test_top1_err"])
    # killed before any checkpoint, with a half-written metrics file: redone from scratch
    for path in run.rglob("*.ckpt"):
        path.unlink()
    metrics_file = Path(resumed["files"]["test_metrics"])
    metrics_file.write_text(metrics_file.read_text()[:40])
    (run / "run.json").write_text(json.dumps({**record, "status": "running"}))
    main(args)
    redone = json.loads((run / "run.json").read_text())
    assert redone["status"] == "done" and redone["resumed_from"] is None
    assert redone["metrics"] == record["metrics"]  # deterministic digits run, same seed
    assert len(list(run.rglob("test_metrics.json"))) == 1  # the interrupted run's folder was cleared


def test_a_foreign_folder_is_not_deleted(tmp_path):
    (tmp_path / "ce" / "seed_0").mkdir(parents=True)
    keep = tmp_path / "ce" / "seed_0" / "notes.txt"
    keep.write_text("mine")
    with pytest.raises(ValueError, match="without one; use another --out"):
        main(["study", "--config", DIGITS, "--criteria", "ce", "--seeds", "0", "--out", str(tmp_path), *QUICK])
    assert keep.read_text() == "mine"


# ----- history.csv ----------------------------------------------------------------------------------
def test_history_has_one_row_per_epoch_and_survives_a_resume(tmp_path):
    common = ["fit", "--config", DIGITS, "--trainer.limit_train_batches", "2", "--trainer.enable_progress_bar",
              "false", "--test_after_fit", "false", "--model.init_args.lr_scheduler.init_args.milestones", "[1, 2]"]
    main([*common, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(tmp_path / "a")])
    first = next((tmp_path / "a").rglob("history.csv"))
    rows = list(csv.DictReader(open(first)))
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["step"] for r in rows] == ["2", "4"]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.1, 0.01])
    assert list(rows[0])[:4] == ["epoch", "step", "lr", "epoch_time_s"]
    assert {"train_loss", "train_top1_err", "val_loss", "val_top1_err", "val_top5_err"} <= set(rows[0])
    ckpt = next((tmp_path / "a").rglob("*.ckpt"))
    main([*common, "--trainer.max_epochs", "3", "--trainer.default_root_dir", str(tmp_path / "b"),
          "--ckpt_path", str(ckpt)])
    resumed = list(csv.DictReader(open(next((tmp_path / "b").rglob("history.csv")))))
    assert [r["epoch"] for r in resumed] == ["1", "2", "3"] and resumed[:2] == rows[:2]
    assert float(resumed[2]["lr"]) == pytest.approx(0.001)


# ----- the GPU study script, at toy size on the CPU -------------------------------------------------
def test_gpu_study_script_runs_at_toy_size_on_the_cpu(tmp_path):
    import hashlib
    import os
    import subprocess
    import sys
    import tarfile

    from data_fixtures import write_image_folder

    write_image_folder(tmp_path / "src" / "cifar10_jpeg", {"train": 4, "test": 2}, size=(32, 32), fmt="JPEG")
    tarball = tmp_path / "cifar10_jpeg.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar10_jpeg", arcname="cifar10_jpeg")
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    out = tmp_path / "out"
    env = {**os.environ, "SEEDS": "0-1", "PYTHON": sys.executable}
    toy = ["--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--model.init_args.compile", "false",
           "--trainer.max_epochs", "2", "--data.init_args.pin_memory", "false", "--data.init_args.batch_size", "4"]
    script = str(ROOT / "scripts" / "gpu_study.sh")
    # a budget too small for two runs: the first run still starts, then it stops cleanly with exit code 3
    first = subprocess.run([script, str(tarball), str(out), "--budget-min", "0.0001", *toy],
                           capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 3, first.stderr[-3000:]
    partial = json.loads((out / "study.json").read_text())
    assert partial["complete"] is False and [(r["criterion"], r["seed"]) for r in partial["runs"]] == [("ce", 0)]
    assert partial["remaining"] == [{"criterion": "crl", "seed": 0}, {"criterion": "ce", "seed": 1},
                                    {"criterion": "crl", "seed": 1}]
    assert "(INCOMPLETE)" in (out / "study.md").read_text() and "run the same command again to resume" in first.stdout
    overhead = partial["first_run_overhead"]
    assert overhead["overhead_s"] == pytest.approx(overhead["first_epoch_s"] - overhead["later_median_s"])
    assert "of warm-up (torch.compile's compilation included when the model compiles)" in first.stdout
    # the same command again (default budget, 8 min) reuses the finished run and completes the study
    result = subprocess.run([script, str(tarball), str(out), *toy], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    study = json.loads((out / "study.json").read_text())
    assert study["complete"] is True and 0 < study["budget_min"] <= 8  # less the extraction time
    assert study["criteria"] == ["ce", "crl"] and study["seeds"] == [0, 1] and study["pairing"]["ok"]
    assert study["runs"][0]["wall_s"] == partial["runs"][0]["wall_s"]  # reused, not trained again
    assert all(r["epochs"] == 2 and r["metrics"]["test_top1_err"] <= 100 for r in study["runs"])
    assert "whole study" in result.stdout and (out / "curves.png").is_file()
    assert (out / "paired_differences.png").is_file()
    assert hashlib.sha256(tarball.read_bytes()).hexdigest() == digest  # the input is not modified
    bad = subprocess.run([str(ROOT / "scripts" / "gpu_study.sh"), str(tmp_path / "missing.tar.gz")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage:" in bad.stderr and "missing.tar.gz" in bad.stderr
