"""`TestReport`: the files of a ``crl fit --test_after_fit true`` run, and the Fig. 5 heatmap sample selection."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest
import torch
from data_fixtures import CONFIGS

from crl_lightning.callbacks import TestReport
from crl_lightning.cli import build_cli
from crl_lightning.metrics import eval_metrics
from crl_lightning.runs import METRICS_FILENAME

FIGURES = ["figures/confusion_matrix.png", "figures/reliability_diagram.png", "figures/softmax_heatmap.png"]


@pytest.mark.usefixtures("plain_argv")
def test_fit_then_test_writes_exactly_the_report_files_and_keys(tmp_path, saved_figures):
    cli = build_cli(["fit", "--config", str(CONFIGS / "digits_crl.yaml"), "--test_after_fit", "true",
                     "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                     "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                     "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "2"])
    run = tmp_path / "lightning_logs" / "version_0"
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()) == sorted([
        "checkpoints/epoch=0-step=2.ckpt", "checkpoints/last.ckpt", "config.yaml", "hparams.yaml", "metrics.csv",
        "history.csv", METRICS_FILENAME, "confusion_matrix.csv", *FIGURES])
    record = json.loads((run / METRICS_FILENAME).read_text())
    assert set(record) == {"format", "created", "dataset", "backbone", "model", "criterion", "seed", "fold",
                           "experiment", "command", "epochs", "trained_by", "metrics", "temperature",
                           "temperature_note", "per_class_acc", "class_names", "num_samples", "ckpt_path", "files",
                           "config"}
    assert record["format"] == "crl_lightning.test_metrics/2"
    assert (record["command"], record["epochs"], record["trained_by"], record["fold"]) == ("fit", 1, None, None)
    assert set(record["experiment"]) == {"id", "label", "settings"} and len(record["experiment"]["id"]) == 12
    assert set(record["metrics"]) == {"test_loss", "test_top1_err", "test_top5_err", "test_ece", "test_nll",
                                      "test_mean_class_acc", "test_nll_ts", "test_ece_ts"}
    assert record["temperature"] > 0 and record["temperature_note"].startswith("fitted on the 144 validation")
    assert record["files"] == {"confusion_matrix": "confusion_matrix.csv", "figures": {
        "softmax_heatmap": FIGURES[2], "reliability_diagram": FIGURES[1], "confusion_matrix": FIGURES[0]}}
    assert record["num_samples"] == 128 and len(record["per_class_acc"]) == 10  # 2 test batches of 64
    digits = [str(d) for d in range(10)]
    header, *rows = list(csv.reader((run / "confusion_matrix.csv").open()))
    assert header == ["true\\predicted", *digits]  # rows are the true classes, columns the predicted ones
    assert [row[0] for row in rows] == digits and record["class_names"] == digits
    counts = [[int(v) for v in row[1:]] for row in rows]
    assert sum(map(sum, counts)) == 128
    (report,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, TestReport)]  # added by the model
    assert report.last_path == run / METRICS_FILENAME
    assert report.results["confusion_matrix"].tolist() == counts
    # the figure files name the digits on their class axes
    confusion, heatmap = saved_figures["confusion_matrix.png"].axes[0], saved_figures["softmax_heatmap.png"].axes[0]
    assert [t.get_text() for t in confusion.get_xticklabels()] == digits
    assert [t.get_text() for t in confusion.get_yticklabels()] == digits
    assert [t.get_text() for t in heatmap.get_xticklabels()] == digits
    assert report.results["samples"]["target"].tolist() == list(range(10))


def test_heatmap_keeps_the_first_test_image_of_each_class():
    logits = torch.randn(4, 5)
    metrics = eval_metrics(5, (1,), "test_", calibration_bins=15)
    metrics.update(logits, torch.tensor([1, 1, 4, 1]))
    model = SimpleNamespace(hparams={"heatmap_samples": 3}, test_metrics=metrics)
    trainer = SimpleNamespace(world_size=1)
    report = TestReport()
    report.on_test_epoch_start(trainer, model)
    batches = [  # (outputs of test_step, dataloader_idx)
        ({"logits": logits, "target": torch.tensor([1, 1, 4, 1]), "position": 0}, 0),
        ({"logits": logits, "target": torch.tensor([0, 2, 3, 4]), "position": 0}, 1),  # second loader: ignored
        ({"logits": logits, "target": torch.rand(4, 5), "position": 4}, 0),  # soft targets: ignored
        (torch.tensor(0.5), 0),  # another LightningModule's output: ignored
        ({"logits": logits, "target": torch.tensor([4, 2, 3, 0]), "position": 4}, 0),
    ]
    for batch_idx, (outputs, dataloader_idx) in enumerate(batches):
        report.on_test_batch_end(trainer, model, outputs, None, batch_idx, dataloader_idx)
    report.on_test_epoch_end(trainer, model)
    # classes 1 (position 0) and 4 (position 2) from the first batch, then 2 (position 5): 3 images, by class
    samples = report.results["samples"]
    assert samples["index"].tolist() == [0, 5, 2] and samples["target"].tolist() == [1, 2, 4]
    assert torch.allclose(samples["probs"], torch.softmax(logits[[0, 1, 2]], dim=1))
    assert report.results["confusion_matrix"].sum() == 4  # from the model's metrics
    model.hparams = {}  # a model without the hyper-parameter: one image per class, up to C
    report.on_test_epoch_start(trainer, model)
    report.on_test_batch_end(trainer, model, batches[-1][0], None, 0)
    report.on_test_epoch_end(trainer, model)
    assert report.results["samples"]["target"].tolist() == [0, 2, 3, 4]
