"""``crl cv``: five-fold cross-validation over an Adience fixture tree, table and helpers."""

from __future__ import annotations

import json
import re

import pytest
from data_fixtures import CONFIGS, write_adience

from crl_lightning.classifier import ImageClassifier
from crl_lightning.cli import main
from crl_lightning.cv import FoldResult, format_table

# Small and quick; the real torchvision:resnet34 of the config runs in test_data_adience's fast_dev_run test.
FAST = [
    "--data.image_size", "32", "--data.batch_size", "4", "--data.num_workers", "0", "--data.pin_memory", "false",
    "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--model.init_args.backbone", "preact_resnet20",
]
ONE_BATCH = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1"]


@pytest.fixture(scope="module")
def adience_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("adience")
    write_adience(root)
    return root


pytestmark = pytest.mark.usefixtures("one_thread")


def _rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ") and not line.startswith("| fold")]


def test_format_table_mean_and_sample_std():
    table = format_table([FoldResult(0, 100, 50.0, 90.0), FoldResult(1, 120, 60.0, 80.0)])
    rows = _rows(table)
    assert rows[0] == ["0", "100", "50.00", "90.00"]
    assert rows[1] == ["1", "120", "60.00", "80.00"]
    assert rows[2] == ["mean ± std", "220", "55.00 ± 7.07", "85.00 ± 7.07"]  # sample std (ddof=1)
    assert "sample standard deviation over 2 folds" in table


def test_cv_five_folds_fresh_weights_each_fold_its_own(adience_root, tmp_path, capsys, monkeypatch):
    """Guards against a fold that does not reach its run (every fold tested on fold 0) and shared weights."""
    starts = []

    def record(self):
        starts.append((id(self), sum(float(p.detach().double().sum()) for p in self.parameters())))

    monkeypatch.setattr(ImageClassifier, "on_fit_start", record, raising=False)
    output = tmp_path / "table.md"
    main(["cv", "--config", str(CONFIGS / "adience_age_crl.yaml"), "--output", str(output),
          "--data.data_dir", str(adience_root), *ONE_BATCH,
          "--trainer.default_root_dir", str(tmp_path / "runs"), *FAST])
    table = output.read_text()
    assert table in capsys.readouterr().out
    rows = _rows(table)
    assert [r[0] for r in rows] == ["0", "1", "2", "3", "4", "mean ± std"]
    exact = [float(r[2]) for r in rows[:5]]
    one_off = [float(r[3]) for r in rows[:5]]
    assert [r[1] for r in rows[:5]] == ["16"] * 5  # each test fold of the fixture: 16 faces
    assert all((e / 6.25).is_integer() for e in exact)  # k of 16 faces
    assert all(o >= e for o, e in zip(one_off, exact, strict=True))
    assert re.match(rf"{sum(exact) / 5:.2f} ± \d+\.\d\d", rows[5][2])
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [f"fold_{k}" for k in range(5)]
    assert len({model for model, _ in starts}) == 5  # a new model per fold...
    assert all(c == pytest.approx(starts[0][1]) for _, c in starts)  # ...from the same seeded initialisation
    records = [json.loads(next((tmp_path / "runs" / f"fold_{k}").rglob("test_metrics.json")).read_text())
               for k in range(5)]
    assert [r["fold"] for r in records] == [0, 1, 2, 3, 4]  # each fold's run got its own fold...
    assert [r["config"]["data"]["init_args"]["fold"] for r in records] == [0, 1, 2, 3, 4]
    assert all(r["config"]["model"]["init_args"]["ordinal"] is True for r in records)
    assert len({r["experiment"]["id"] for r in records}) == 1  # ...of one experiment
    assert [r["num_samples"] for r in records] == [16] * 5
    # a second invocation reuses the finished folds; another experiment in the same folders is refused
    import crl_lightning.cli

    monkeypatch.setattr(crl_lightning.cli, "build_cli", _no_training)
    capsys.readouterr()
    main(["cv", "--config", str(CONFIGS / "adience_age_crl.yaml"), "--output", str(output),
          "--data.data_dir", str(adience_root), *ONE_BATCH, "--trainer.default_root_dir", str(tmp_path / "runs"),
          *FAST])
    assert output.read_text() == table
    with pytest.raises(ValueError, match=r"fold_0: expected a run of this experiment, got one of another: "
                                         r"data.init_args.batch_size: 4 -> 2; use another --out"):
        main(["cv", "--config", str(CONFIGS / "adience_age_crl.yaml"), "--data.data_dir", str(adience_root),
              *ONE_BATCH, "--trainer.default_root_dir", str(tmp_path / "runs"), *FAST, "--data.batch_size", "2"])


def _no_training(*args, **kwargs):
    raise AssertionError("a finished fold was trained again")


def test_cv_tests_best_checkpoint_and_logs_one_off_even_if_ordinal_is_off(adience_root, tmp_path, monkeypatch,
                                                                           capsys):
    from lightning.pytorch import Trainer

    ckpt_paths = []
    original_test = Trainer.test

    def spy_test(self, *args, **kwargs):
        ckpt_paths.append(kwargs.get("ckpt_path"))
        return original_test(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "test", spy_test)
    main(["cv", "--config", str(CONFIGS / "adience_age_crl.yaml"), "--folds", "3",
          "--data.data_dir", str(adience_root), "--trainer.default_root_dir", str(tmp_path / "cv"),
          "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
          "--data.val_split", "0.25", *FAST, "--model.init_args.ordinal", "false"])
    assert ckpt_paths == ["best"]  # one test per fold, on the saved checkpoint
    cv = tmp_path / "cv"
    assert capsys.readouterr().out.splitlines()[-1] == (  # the last line says where the results are
        f"crl cv: wrote {cv}/cv_results.md; the folds' checkpoints, test_metrics.json and figures/ are in "
        f"{cv}/fold_3/lightning_logs/version_0/")
    assert list((tmp_path / "cv" / "fold_3").glob("lightning_logs/version_0/checkpoints/*.ckpt"))
    table = (tmp_path / "cv" / "cv_results.md").read_text()
    rows = _rows(table)
    assert [r[0] for r in rows] == ["3", "mean ± std"]
    assert [r[1] for r in rows] == ["16", "16"]  # the whole test fold
    exact, one_off = float(rows[0][2]), float(rows[0][3])
    assert one_off >= exact and (one_off / 6.25).is_integer()  # k of 16 faces


def test_cv_refuses_data_fold_override(capsys):
    with pytest.raises(SystemExit):
        main(["cv", "--config", str(CONFIGS / "adience_age_crl.yaml"), "--data.fold", "2"])
    assert "--folds" in capsys.readouterr().err


def test_cv_refuses_a_datamodule_without_folds(capsys):
    digits = str(CONFIGS / "digits_crl.yaml")
    with pytest.raises(SystemExit):
        main(["cv", "--config", digits])
    assert "expected a DataModule with a `fold` argument" in capsys.readouterr().err
