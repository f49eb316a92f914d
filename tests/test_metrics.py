"""Metric values against hand-computed references, sample weighting, DistributedSampler padding."""

from __future__ import annotations

import json
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassCalibrationError

from crl_lightning import ImageClassifier
from crl_lightning.callbacks import TestReport
from crl_lightning.losses import CrossEntropyLoss
from crl_lightning.metrics import (
    ExactAccuracy,
    ExpectedCalibrationError,
    MeanClassAccuracy,
    NegativeLogLikelihood,
    OneOffAccuracy,
    PaddingTrimmer,
    TopKError,
    classification_metrics,
    eval_metrics,
    one_off_accuracy_from_confusion,
    per_class_accuracy,
    temperature_scaled_metrics,
    unpadded_sample_count,
)


def one_hot_logits(pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose argmax is ``pred`` (10 on the predicted class, 0 elsewhere)."""
    return 10.0 * F.one_hot(pred, num_classes).float()


# ----- top-k error ----------------------------------------------------------------------------------
def test_top5_error_batch_of_one_with_k_equal_c_is_zero():
    metric = TopKError(num_classes=5, top_k=5)
    metric.update(torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25]]), torch.tensor([0]))  # target has the lowest score
    assert metric.compute().item() == 0.0
    top1 = TopKError(num_classes=5, top_k=1)
    top1.update(torch.tensor([[0.1, 0.2, 0.3, 0.15, 0.25]]), torch.tensor([0]))
    assert top1.compute().item() == 100.0


def test_topk_error_hand_values():
    preds = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.6, 0.3, 0.1], [0.05, 0.15, 0.8]])
    target = torch.tensor([0, 2, 1, 0])
    # top-1 correct: rows 0 only -> 3/4 wrong; top-2: rows 0, 1 (0.3 is 2nd), 2 (0.3 is 2nd) -> 1/4 wrong.
    metrics = classification_metrics(3, (1, 2), prefix="val_")
    metrics.update(preds, target)
    values = {k: v.item() for k, v in metrics.compute().items()}
    assert values == pytest.approx({"val_top1_err": 75.0, "val_top2_err": 25.0})


def test_topk_error_rejects_k_above_num_classes():
    with pytest.raises(ValueError, match=r"expected 1 <= k <= num_classes=3, got 5"):
        TopKError(num_classes=3, top_k=5)


def test_epoch_value_is_sample_weighted_for_batches_256_256_10():
    # batch 1: all correct; batches 2 and 3: all wrong. Weighted: 266 wrong of 522; the mean of the
    # batch means would be (0 + 100 + 100) / 3 = 66.7 %.
    num_classes = 10
    metric, one_off, loss_mean = TopKError(num_classes, 1), OneOffAccuracy(num_classes), MeanMetric()
    for size, correct in ((256, True), (256, False), (10, False)):
        target = torch.arange(size) % num_classes
        pred = target if correct else (target + 5) % num_classes  # 5 classes off: not one-off either
        logits = one_hot_logits(pred, num_classes)
        metric.update(logits, target)
        one_off.update(logits, target)
        loss_mean.update(torch.tensor(0.0 if correct else 1.0), weight=size)
    expected = 100.0 * 266 / 522
    assert metric.compute().item() == pytest.approx(expected, rel=1e-6)
    assert one_off.compute().item() == pytest.approx(100.0 - expected, rel=1e-9)
    assert loss_mean.compute().item() == pytest.approx(266 / 522, rel=1e-6)
    assert expected != pytest.approx(200.0 / 3, abs=1.0)


# ----- ordinal ----------------------------------------------------------------------------------------
CONFUSION = torch.tensor([[5, 2, 1], [1, 6, 2], [0, 3, 4]])  # rows true, columns predicted; 24 samples


def samples_from_confusion(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    target, pred = [], []
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            target += [i] * int(confusion[i, j])
            pred += [j] * int(confusion[i, j])
    return torch.tensor(target), torch.tensor(pred)


def test_one_off_accuracy_on_a_hand_made_confusion():
    # Off by more than one class: only (true 0, predicted 2), 1 sample -> 23 / 24.
    assert one_off_accuracy_from_confusion(CONFUSION) == pytest.approx(100 * 23 / 24)
    assert one_off_accuracy_from_confusion(CONFUSION, tolerance=0) == pytest.approx(100 * 15 / 24)
    target, pred = samples_from_confusion(CONFUSION)
    logits = one_hot_logits(pred, 3)
    one_off, exact = OneOffAccuracy(3), ExactAccuracy(3)
    for chunk in range(0, 24, 7):  # uneven batches
        one_off.update(logits[chunk:chunk + 7], target[chunk:chunk + 7])
        exact.update(logits[chunk:chunk + 7], target[chunk:chunk + 7])
    assert one_off.compute().item() == pytest.approx(100 * 23 / 24)
    assert exact.compute().item() == pytest.approx(100 * 15 / 24)


def test_one_off_accuracy_argument_errors():
    with pytest.raises(ValueError, match="tolerance: expected >= 0, got -1"):
        OneOffAccuracy(3, tolerance=-1)
    with pytest.raises(ValueError, match=r"preds: expected shape \(N, 3\), got \(2, 4\)"):
        OneOffAccuracy(3).update(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="expected a square"):
        one_off_accuracy_from_confusion(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="all-zero"):
        one_off_accuracy_from_confusion(torch.zeros(3, 3))


@pytest.mark.parametrize("metric", [OneOffAccuracy, NegativeLogLikelihood, ExpectedCalibrationError])
@pytest.mark.parametrize("shape", [(2, 1), (3,), (1,)])
def test_target_of_another_shape_is_refused(metric, shape):
    """Guards against accepting a (N, 1) target (it broadcasts against (N,) into an (N, N) comparison) or a
    target of another length than the predictions: either condition alone must raise."""
    with pytest.raises(ValueError, match=rf"target: expected shape \(2,\) of class indices, got \({shape[0]},"):
        metric(3).update(torch.zeros(2, 3), torch.zeros(shape, dtype=torch.long))


def test_eval_metrics_names():
    assert set(eval_metrics(8, (1, 5), "test_", ordinal=True).keys(keep_base=False)) == {
        "test_top1_err", "test_top5_err", "test_exact_acc", "test_one_off_acc"}
    assert set(eval_metrics(8, (1,), "val_").keys(keep_base=False)) == {"val_top1_err"}
    assert set(eval_metrics(8, (1,), "test_", calibration_bins=15).keys(keep_base=False)) == {
        "test_top1_err", "test_ece", "test_nll", "test_mean_class_acc"}


# ----- calibration, NLL, per-class --------------------------------------------------------------------
def test_ece_hand_computed_two_bins():
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.4, 0.3, 0.3], [0.35, 0.33, 0.32]])
    target = torch.tensor([0, 1, 0, 2])  # correct, wrong, correct, wrong
    ece = ExpectedCalibrationError(3, num_bins=2, from_logits=False)
    ece.update(probs, target)
    # bin [0, .5): conf .4, .35 (mean .375), acc .5 -> .125 * 2/4; bin [.5, 1]: conf .9, .8, acc .5 -> .35 * 2/4
    assert ece.compute().item() == pytest.approx(0.0625 + 0.175)
    bins = ece.bins()
    assert bins["count"].tolist() == [2.0, 2.0]
    assert bins["confidence"].tolist() == pytest.approx([0.375, 0.85])
    assert bins["accuracy"].tolist() == pytest.approx([0.5, 0.5])
    assert bins["edges"].tolist() == pytest.approx([0.0, 0.5, 1.0])


def test_ece_matches_torchmetrics_on_random_logits():
    g = torch.Generator().manual_seed(0)
    logits, target = 3 * torch.randn(500, 7, generator=g), torch.randint(0, 7, (500,), generator=g)
    ours = ExpectedCalibrationError(7, num_bins=15)
    for i in range(0, 500, 128):
        ours.update(logits[i:i + 128], target[i:i + 128])
    reference = MulticlassCalibrationError(num_classes=7, n_bins=15, norm="l1")(logits.softmax(1), target)
    assert ours.compute().item() == pytest.approx(reference.item(), abs=1e-6)


def test_nll_hand_values():
    nll = NegativeLogLikelihood(4)
    nll.update(torch.zeros(3, 4), torch.tensor([0, 1, 2]))  # uniform: log 4 each
    assert nll.compute().item() == pytest.approx(math.log(4))
    logits = torch.randn(9, 4)
    target = torch.randint(0, 4, (9,))
    nll.reset()
    nll.update(logits[:8], target[:8])
    nll.update(logits[8:], target[8:])
    assert nll.compute().item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)


def test_temperature_scaled_metrics_names_bins_and_values():
    """``nll_ts``/``ece_ts`` under the prefix, 15 bins unless told, the values of `NegativeLogLikelihood` and
    `ExpectedCalibrationError` of the logits they are updated with. Guards against a renamed key (the study and
    ``crl compare`` read ``test_nll_ts``), a bin count not passed through and a default other than
    `ExpectedCalibrationError`'s 15 (Guo et al.)."""
    assert set(temperature_scaled_metrics(4).keys(keep_base=False)) == {"nll_ts", "ece_ts"}
    collection = temperature_scaled_metrics(4, prefix="test_")
    assert set(collection.keys(keep_base=False)) == {"test_nll_ts", "test_ece_ts"}
    assert collection["ece_ts"].num_bins == 15 and temperature_scaled_metrics(4, 3)["ece_ts"].num_bins == 3
    g = torch.Generator().manual_seed(0)
    logits, target = 2 * torch.randn(64, 4, generator=g), torch.randint(0, 4, (64,), generator=g)
    values = collection(logits / 1.5, target)
    ece, nll = ExpectedCalibrationError(4), NegativeLogLikelihood(4)
    assert values["test_ece_ts"].item() == pytest.approx(ece(logits / 1.5, target).item(), abs=1e-7)
    assert values["test_nll_ts"].item() == pytest.approx(F.cross_entropy(logits / 1.5, target).item(), rel=1e-6)
    assert values["test_nll_ts"].item() == pytest.approx(nll(logits / 1.5, target).item(), rel=1e-7)


def test_per_class_accuracy_with_an_absent_class():
    acc = per_class_accuracy(torch.tensor([[3, 1, 0], [0, 0, 0], [1, 1, 2]]))
    assert acc[0].item() == pytest.approx(75.0)
    assert math.isnan(acc[1].item())
    assert acc[2].item() == pytest.approx(50.0)


def test_mean_class_accuracy_leaves_out_an_absent_class():
    confusion = torch.tensor([[3, 1, 0], [0, 0, 0], [1, 1, 2]])
    target, pred = samples_from_confusion(confusion)
    metric = MeanClassAccuracy(3)
    metric.update(one_hot_logits(pred[:5], 3), target[:5])
    metric.update(one_hot_logits(pred[5:], 3), target[5:])
    assert metric.compute().item() == pytest.approx((75.0 + 50.0) / 2)
    assert metric.compute().dtype == torch.float32
    assert metric.confusion().tolist() == confusion.tolist()


# ----- DistributedSampler padding ---------------------------------------------------------------------
@pytest.mark.parametrize("n", [10, 11, 12, 3])
@pytest.mark.parametrize("world", [1, 3, 4])
def test_unpadded_sample_count_keeps_every_sample_once(n, world):
    dataset = TensorDataset(torch.arange(n))
    kept = []
    for rank in range(world):
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=1)
        count = unpadded_sample_count(DataLoader(dataset, sampler=sampler, batch_size=4))
        assert count <= len(sampler)
        kept += list(sampler)[:count]
    assert sorted(kept) == list(range(n))


def test_padding_trimmer_restarts_with_each_pass_and_dataloader():
    data = make_data(10)
    padded = DataLoader(data, batch_size=3, sampler=DistributedSampler(data, num_replicas=4, rank=3, shuffle=False))
    plain = DataLoader(data, batch_size=4)
    trim = PaddingTrimmer()
    for loaders, index in ((padded, 0), ([plain, padded], 1), ({"a": padded}, 0)):
        ((position, batch),) = [trim(b, i, loaders, index) for i, b in enumerate(padded)]  # one batch: 3, 7, 1
        assert position == 0 and [t.tolist() for t in batch] == [t[[3, 7]].tolist() for t in data.tensors]
    trim(next(iter(plain)), 0, plain)  # a pass over an unpadded loader keeps everything
    batch = (torch.zeros(2), torch.zeros(5), "name")
    position, kept = trim(batch, 1, plain)
    assert position == 4 and kept is batch
    kept = trim((torch.zeros(3), torch.ones(3), "name"), 0, padded)[1]
    assert isinstance(kept, tuple) and kept[0].shape == (2,) and kept[1].tolist() == [1.0, 1.0] and kept[2] == "name"


def test_unpadded_sample_count_other_samplers():
    dataset = TensorDataset(torch.arange(10))
    assert unpadded_sample_count(DataLoader(dataset, batch_size=4)) is None
    unrepeated = UnrepeatedDistributedSampler(dataset, num_replicas=4, rank=3, shuffle=False)
    assert unpadded_sample_count(DataLoader(dataset, sampler=unrepeated)) == len(unrepeated) == 2
    dropped = DistributedSampler(dataset, num_replicas=4, rank=0, shuffle=False, drop_last=True)
    assert unpadded_sample_count(DataLoader(dataset, sampler=dropped)) == len(dropped) == 2


# ----- ImageClassifier end to end ---------------------------------------------------------------------
class TinyClassifier(ImageClassifier):
    """A linear model on (1, 8, 8) inputs, via the build_backbone extension point."""

    def build_backbone(self) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64 * self.hparams.in_chans, self.hparams.num_classes))


def make_data(n: int, num_classes: int = 10, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, num_classes, (n,), generator=g))


def trainer(tmp_path, **kwargs) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    return L.Trainer(**{**defaults, **kwargs})


def test_classifier_epoch_loss_and_error_are_sample_weighted(tmp_path):
    model = TinyClassifier(num_classes=10, in_chans=1, test_report=False)
    data = make_data(522)
    (result,) = trainer(tmp_path).validate(model, DataLoader(data, batch_size=256), verbose=False)
    model.eval()
    with torch.no_grad():
        logits = model(data.tensors[0])
        per_batch = [model.criterion(logits[i:i + 256], data.tensors[1][i:i + 256]).item() for i in (0, 256, 512)]
    target = data.tensors[1]
    assert result["val_loss"] == pytest.approx(model.criterion(logits, target).item(), rel=1e-5)
    assert result["val_loss"] != pytest.approx(sum(per_batch) / 3, rel=1e-4)  # batch means would differ
    expected_err = 100.0 * (logits.argmax(1) != target).float().mean().item()
    assert result["val_top1_err"] == pytest.approx(expected_err, rel=1e-5)


def test_classifier_ignores_padded_duplicates_of_a_distributed_sampler(tmp_path):
    # 10 samples over 4 "processes": rank 3 reads positions 3, 7 and a padded copy of sample 1.
    data = make_data(10)
    sampler = DistributedSampler(data, num_replicas=4, rank=3, shuffle=False)
    assert list(sampler) == [3, 7, 1]
    model = TinyClassifier(num_classes=10, in_chans=1, test_report=False)
    report = TestReport(figures=False, dirpath=tmp_path)
    for batch_size in (2, 3):  # the duplicate alone in a last batch, or at the end of a batch
        (result,) = trainer(tmp_path, callbacks=[report]).test(
            model, DataLoader(data, sampler=sampler, batch_size=batch_size), verbose=False)
        assert int(report.results["confusion_matrix"].sum()) == 2
        with torch.no_grad():
            model.eval()
            x, y = data.tensors[0][[3, 7]], data.tensors[1][[3, 7]]
            assert result["test_loss"] == pytest.approx(model.criterion(model(x), y).item(), rel=1e-5)


def test_ordinal_classifier_logs_exact_and_one_off_accuracy(tmp_path):
    model = TinyClassifier(num_classes=8, in_chans=1, ordinal=True, test_report=False)
    data = make_data(100, num_classes=8)
    (val,) = trainer(tmp_path).validate(model, DataLoader(data, batch_size=32), verbose=False)
    (test,) = trainer(tmp_path).test(model, DataLoader(data, batch_size=32), verbose=False)
    with torch.no_grad():
        model.eval()
        pred = model(data.tensors[0]).argmax(1)
    target = data.tensors[1]
    one_off = 100.0 * ((pred - target).abs() <= 1).float().mean().item()
    exact = 100.0 * (pred == target).float().mean().item()
    for stage, result in (("val", val), ("test", test)):
        assert result[f"{stage}_one_off_acc"] == pytest.approx(one_off, rel=1e-6)
        assert result[f"{stage}_exact_acc"] == pytest.approx(exact, rel=1e-6)
        assert result[f"{stage}_exact_acc"] == pytest.approx(100.0 - result[f"{stage}_top1_err"], abs=1e-4)


def test_test_only_metrics_and_results(tmp_path):
    model = TinyClassifier(num_classes=10, in_chans=1, criterion=CrossEntropyLoss(), test_report=False)
    data = make_data(200)
    report = TestReport(figures=False, dirpath=tmp_path)
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[report])
    t.fit(model, DataLoader(data, batch_size=32), DataLoader(data, batch_size=50))
    assert not any(k.endswith(("ece", "nll", "class_acc")) for k in t.callback_metrics)  # test only
    (result,) = t.test(model, DataLoader(data, batch_size=64), verbose=False)
    assert result["test_nll"] == pytest.approx(result["test_loss"], rel=1e-5)  # NLL is the CE loss
    assert 0.0 <= result["test_ece"] <= 1.0
    res = report.results
    confusion = res["confusion_matrix"]
    assert confusion.shape == (10, 10) and int(confusion.sum()) == 200
    assert 100.0 * (1 - confusion.diagonal().sum() / 200).item() == pytest.approx(result["test_top1_err"], rel=1e-5)
    assert result["test_mean_class_acc"] == pytest.approx(res["per_class_acc"].nanmean().item(), rel=1e-5)
    assert res["calibration"]["ece"] == pytest.approx(result["test_ece"], rel=1e-5)
    assert int(res["calibration"]["count"].sum()) == 200
    samples = res["samples"]
    assert samples["probs"].shape == (10, 10) and samples["target"].tolist() == list(range(10))
    assert samples["probs"].sum(1).tolist() == pytest.approx([1.0] * 10, rel=1e-5)
    for index, t_ in zip(samples["index"].tolist(), samples["target"].tolist(), strict=True):
        assert int(data.tensors[1][index]) == t_


def test_progress_bar_shows_only_the_loss_and_top1_errors(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from crl_lightning.callbacks import CompactProgressBar

    model = TinyClassifier(num_classes=10, in_chans=1, test_report=False)
    data = make_data(64)
    bar = CompactProgressBar()
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[bar],
                logger=CSVLogger(tmp_path), log_every_n_steps=1, enable_progress_bar=True)
    t.fit(model, DataLoader(data, batch_size=16), DataLoader(data, batch_size=16))
    shown = {"train_loss_step", "train_top1_err_step", "val_top1_err"}
    assert set(t.progress_bar_metrics) == shown and set(bar.get_metrics(t, model)) == shown  # no v_num
    assert "train_top1_err_step" not in t.logged_metrics  # the bar only
    logged = {"train_loss", "train_loss_step", "train_top1_err", "train_top5_err", "val_loss", "val_top1_err",
              "val_top5_err"}
    assert logged <= set(t.logged_metrics)  # everything else is still logged


def test_plain_python_test_writes_the_metrics_file(tmp_path):
    model = TinyClassifier(num_classes=10, in_chans=1)
    L.seed_everything(7)
    trainer(tmp_path).test(model, DataLoader(make_data(40), batch_size=16), verbose=False)
    record = json.loads((tmp_path / "test_metrics.json").read_text())
    assert record["dataset"] == "TensorDataset"
    assert record["backbone"] == "Sequential"  # the network TinyClassifier builds, not the unused default name
    assert (record["model"], record["command"], record["epochs"]) == ("TinyClassifier", "test", 0)
    assert record["criterion"]["label"] == "CRL(alpha=1.5, beta=1)"
    assert record["seed"] == 7 and record["num_samples"] == 40 and record["config"] is None
    assert set(record["metrics"]) >= {"test_loss", "test_top1_err", "test_top5_err", "test_ece", "test_nll"}
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "confusion_matrix.png", "reliability_diagram.png", "softmax_heatmap.png"]
    smoke = tmp_path / "smoke"
    trainer(smoke, fast_dev_run=1).test(model, DataLoader(make_data(40), batch_size=16), verbose=False)
    assert not smoke.exists()  # fast_dev_run writes no report


def test_classifier_argument_errors():
    with pytest.raises(ValueError, match="heatmap_samples: expected >= 0, got -1"):
        ImageClassifier(num_classes=10, heatmap_samples=-1)
    with pytest.raises(ValueError, match="num_bins: expected >= 1, got 0"):
        ImageClassifier(num_classes=10, calibration_bins=0)


@pytest.mark.slow
def test_ddp_eval_counts_each_sample_once(tmp_path):
    # Real DDP (gloo, 3 processes): Lightning injects a padding DistributedSampler (10 samples -> 12 slots).
    data = make_data(10)
    model = TinyClassifier(num_classes=10, in_chans=1)
    t = trainer(tmp_path, devices=3, strategy="ddp_spawn")
    (result,) = t.test(model, DataLoader(data, batch_size=2), verbose=False)
    record = json.loads((tmp_path / "test_metrics.json").read_text())
    assert record["num_samples"] == 10  # 12 without the cut
    model.eval()
    with torch.no_grad():
        reference = model.criterion(model(data.tensors[0]), data.tensors[1]).item()
    assert result["test_loss"] == pytest.approx(reference, rel=1e-5)
    # every synced test metric and the confusion matrix as one process that sees all 10 samples
    (single,) = trainer(tmp_path / "one").test(model, DataLoader(data, batch_size=2), verbose=False)
    assert result == pytest.approx(single, rel=1e-5)
    assert (tmp_path / "confusion_matrix.csv").read_text() == (tmp_path / "one" / "confusion_matrix.csv").read_text()
