"""Temperature scaling: `fit_temperature` on a hand-made case, and where `ImageClassifier` fits it."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from crl_lightning import ImageClassifier
from crl_lightning.calibration import TEMPERATURE_BOUNDS, fit_temperature, scaled_nll
from crl_lightning.callbacks import TestReport
from crl_lightning.data import DigitsDataModule
from crl_lightning.metrics import TopKError


def _hand_made(n: int = 20_000, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z): z is perfectly calibrated, so 3 z is fitted with T = 3."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=g) * 2.0
    target = torch.multinomial(torch.softmax(z, dim=1), 1, generator=g).squeeze(1)
    return z, target


def test_temperature_of_over_confident_logits_is_recovered():
    z, target = _hand_made()
    temperature = fit_temperature(3.0 * z, target)
    assert temperature == pytest.approx(3.0, rel=0.05)  # tolerance 5 % (sampling noise of 20,000 labels: ~1 %)
    assert fit_temperature(z / 2.0, target) == pytest.approx(0.5, rel=0.05)  # under-confident: T < 1
    # the fitted T is the minimum of the NLL: a step of 1 % either way does not lower it
    nll = scaled_nll(3.0 * z, target, temperature)
    assert nll <= min(scaled_nll(3.0 * z, target, temperature * f) for f in (0.99, 1.01))


def test_temperature_does_not_change_the_top1_error():
    z, target = _hand_made(n=2_000)
    logits = 3.0 * z
    temperature = fit_temperature(logits, target)
    raw, scaled = TopKError(10, 1), TopKError(10, 1)
    raw.update(logits, target)
    scaled.update(logits / temperature, target)
    assert float(scaled.compute()) == float(raw.compute())  # exactly: dividing by T > 0 keeps the argmax
    assert torch.equal((logits / temperature).argmax(dim=1), logits.argmax(dim=1))


def test_fit_temperature_checks_its_inputs_and_stays_in_bounds():
    logits = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    target = torch.tensor([0, 1])
    # every sample right with a margin: the NLL keeps falling as T -> 0 (no finite minimum); the search stops
    # in the bounds where it is 0 to float64 precision
    temperature = fit_temperature(logits, target)
    assert TEMPERATURE_BOUNDS[0] <= temperature < 1 and scaled_nll(logits, target, temperature) < 1e-12
    with pytest.raises(ValueError, match=r"logits: expected a \(N, C\) matrix with N >= 1, got shape \(2,\)"):
        fit_temperature(torch.zeros(2), target)
    with pytest.raises(ValueError, match=r"target: expected \(2,\) integer class indices"):
        fit_temperature(logits, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"target: expected class indices in \[0, 2\), got values in \[0, 2\]"):
        fit_temperature(logits, torch.tensor([0, 2]))


def _test_digits(tmp_path, val_split: float) -> tuple[dict, ImageClassifier, DigitsDataModule]:
    L.seed_everything(0, verbose=False)
    model = ImageClassifier("preact_resnet20", num_classes=10, in_chans=1)
    datamodule = DigitsDataModule(val_split=val_split)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[TestReport(figures=False, dirpath=tmp_path)])
    trainer.test(model, datamodule=datamodule)
    return json.loads((tmp_path / "test_metrics.json").read_text()), model, datamodule


def test_classifier_fits_temperature_on_the_validation_split_and_scales_the_test_logits(tmp_path):
    record, model, datamodule = _test_digits(tmp_path, val_split=0.1)
    assert record["temperature"] == model.temperature and TEMPERATURE_BOUNDS[0] < model.temperature
    assert record["temperature_note"] == "fitted on the 144 validation samples (NLL, Guo et al. 2017)"
    model.eval()
    with torch.no_grad():
        val = [(model(x), y) for x, y in datamodule.val_dataloader()]
        test = [(model(x), y) for x, y in datamodule.test_dataloader()]
    val_logits, val_target = (torch.cat(t) for t in zip(*val, strict=True))
    assert model.temperature == pytest.approx(fit_temperature(val_logits, val_target), rel=1e-6)  # not the test set
    test_logits, test_target = (torch.cat(t) for t in zip(*test, strict=True))
    metrics = record["metrics"]
    assert metrics["test_nll_ts"] == pytest.approx(scaled_nll(test_logits, test_target, model.temperature), rel=1e-5)
    assert metrics["test_nll"] == pytest.approx(scaled_nll(test_logits, test_target, 1.0), rel=1e-5)
    assert 0 <= metrics["test_ece_ts"] <= 1


def test_no_temperature_when_validation_runs_on_the_test_split(tmp_path):
    record, model, _ = _test_digits(tmp_path, val_split=0.0)  # DigitsDataModule then validates on the test split
    assert record["temperature"] is None and model.temperature is None
    assert record["temperature_note"].startswith("not fitted: no validation split held out from the test split")
    assert "test_nll_ts" not in record["metrics"] and "test_nll" in record["metrics"]
