"""Metrics on their boundaries: ECE bin edges, top-k at rank k and with ties, one-off accuracy at the first and
last age group, and the unit (percent, fraction, nats) of every logged metric.

Random logits never land on a bin edge or a rank boundary, so each test here builds inputs that sit exactly
on one (dyadic probabilities such as 0.25 and 0.75 are exact in float32) and compares with numbers worked
out by hand in the comments.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, TensorDataset

from crl_lightning import ImageClassifier
from crl_lightning.losses import CrossEntropyLoss
from crl_lightning.metrics import (
    ExactAccuracy,
    ExpectedCalibrationError,
    NegativeLogLikelihood,
    OneOffAccuracy,
    PaddingTrimmer,
    TopKError,
    classification_metrics,
    eval_metrics,
    one_off_accuracy_from_confusion,
    per_class_accuracy,
    unpadded_sample_count,
)

# ----- ECE: confidences exactly on the bin edges --------------------------------------------------------
#: 4 bins [0, .25) [.25, .5) [.5, .75) [.75, 1]; confidences .25, .5, .75, 1 sit on edges, .625 inside.
EDGE_PROBS = torch.tensor([
    [0.25, 0.25, 0.25, 0.25],   # conf .25 -> bin 1 (lower edge of bin 1); predicted 0 (first max), target 0: right
    [0.5, 0.25, 0.25, 0.0],     # conf .5  -> bin 2; target 1: wrong
    [0.75, 0.25, 0.0, 0.0],     # conf .75 -> bin 3; target 0: right
    [1.0, 0.0, 0.0, 0.0],       # conf 1   -> bin 3 (the last bin is closed); target 0: right
    [0.125, 0.625, 0.125, 0.125],  # conf .625 -> bin 2; target 1: right
])
EDGE_TARGET = torch.tensor([0, 1, 0, 0, 1])


def test_ece_confidence_on_a_bin_edge_goes_to_the_upper_bin():
    """A confidence of exactly i/B belongs to bin i ([i/B, (i+1)/B)), and 1.0 to the last bin.

    Guards against ``ceil`` instead of ``floor`` (an edge to the lower bin), dropping the clamp (1.0 lands in a
    bin B that does not exist), and against ``clamp(0, B)`` (index B). Per bin: bin 1 holds .25 (1 right),
    bin 2 .5 and .625 (1 right), bin 3 .75 and 1 (2 right): ECE = (|.25 - 1| + |1.125 - 1| + |1.75 - 2|) / 5.
    With edges going down it would be (|.75 - 1| + |.625 - 1| + |.25 - 1| ...) = 0.175 instead of 0.225.
    """
    ece = ExpectedCalibrationError(4, num_bins=4, from_logits=False)
    ece.update(EDGE_PROBS, EDGE_TARGET)
    bins = ece.bins()
    assert bins["count"].tolist() == [0.0, 1.0, 2.0, 2.0]
    assert bins["confidence"][1:].tolist() == pytest.approx([0.25, 0.5625, 0.875])
    assert bins["accuracy"][1:].tolist() == pytest.approx([1.0, 0.5, 1.0])
    assert math.isnan(bins["confidence"][0].item()) and math.isnan(bins["accuracy"][0].item())  # empty bin
    assert bins["edges"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert ece.compute().item() == pytest.approx(0.225, abs=1e-7)


def test_ece_from_logits_on_edges_and_one_bin():
    """Equal logits over 4 classes give softmax exactly 0.25 (a bin edge): with 4 bins it is bin 1, with 8 bins
    bin 2. One bin: ECE is |mean confidence - accuracy|. Guards against the edge rule and the softmax being skipped
    (``from_logits`` ignored: the zeros would all be confidence 0, bin 0)."""
    logits = torch.zeros(3, 4)
    target = torch.tensor([0, 1, 2])  # predicted 0 (first max): one right
    for bins, index in ((4, 1), (8, 2)):
        ece = ExpectedCalibrationError(4, num_bins=bins)
        ece.update(logits, target)
        expected = [0.0] * bins
        expected[index] = 3.0
        assert ece.bins()["count"].tolist() == expected
        assert ece.compute().item() == pytest.approx(abs(0.25 - 1 / 3), abs=1e-7)
    one = ExpectedCalibrationError(4, num_bins=1, from_logits=False)
    one.update(EDGE_PROBS, EDGE_TARGET)
    assert one.bins()["count"].tolist() == [5.0]
    assert one.compute().item() == pytest.approx(abs((0.25 + 0.5 + 0.75 + 1.0 + 0.625) / 5 - 4 / 5), abs=1e-7)
    with pytest.raises(ValueError, match="num_bins: expected >= 1, got 0"):
        ExpectedCalibrationError(4, num_bins=0)


# ----- top-k: the target exactly at rank k, and ties -----------------------------------------------------
def test_topk_error_target_exactly_at_rank_k_and_k_plus_one():
    """One score row, targets 0..4 at ranks 1..5: the top-k error is ``100 * (5 - k) / 5`` for every k.

    Guards against an off-by-one at the boundary (rank k counted out, or rank k + 1 counted in) and
    against returning the accuracy or a fraction. The count is done here with a loop over ranks.
    """
    scores = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]).repeat(5, 1)
    target = torch.arange(5)
    for k in range(1, 6):
        metric = TopKError(5, top_k=k)
        metric.update(scores, target)
        rank = [sum(float(s) > float(scores[0, t]) for s in scores[0]) + 1 for t in target.tolist()]
        wrong = sum(r > k for r in rank)
        assert wrong == 5 - k
        assert metric.compute().item() == pytest.approx(100.0 * wrong / 5)


def test_topk_error_with_tied_scores_inside_and_outside_the_top_k():
    """Ties that fall wholly inside or outside the top k give the same answer whatever the tie order.

    Scores .4, .3, .3, 0, 0 with k = 3: targets 1 and 2 (tied at ranks 2-3) are both in, 3 and 4 (tied at 4-5)
    both out: 50 % error. Guards against a comparison that drops a tied class from the top k (e.g. counting
    only scores strictly above the k-th).
    """
    scores = torch.tensor([[0.4, 0.3, 0.3, 0.0, 0.0]]).repeat(4, 1)
    metric = TopKError(5, top_k=3)
    metric.update(scores, torch.tensor([1, 2, 3, 4]))
    assert metric.compute().item() == pytest.approx(50.0)
    top2 = TopKError(5, top_k=2)  # target 0 (rank 1) in; 3 (tied at 4-5) out
    top2.update(scores[:2], torch.tensor([0, 3]))
    assert top2.compute().item() == pytest.approx(50.0)


@pytest.mark.parametrize(("k", "ok"), [(0, False), (1, True), (5, True), (6, False)])
def test_topk_bounds_are_inclusive(k, ok):
    """``1 <= k <= C``: guards against ``<`` at either end (k = 1 or k = C refused, 0 or C + 1 accepted)."""
    if ok:
        assert TopKError(5, top_k=k).top_k == k
    else:
        with pytest.raises(ValueError, match=rf"expected 1 <= k <= num_classes=5, got {k}"):
            TopKError(5, top_k=k)


# ----- one-off accuracy at the first and last age group --------------------------------------------------
#: (target, predicted) over the 8 Adience groups: distance 0, 1 and 2 at both ends, and the two ends swapped.
ENDS = [(0, 0), (0, 1), (0, 2), (7, 7), (7, 6), (7, 5), (0, 7), (7, 0)]


def test_one_off_accuracy_at_the_first_and_last_group():
    """Right within one group, at the youngest and the oldest group: (0, 1) and (7, 6) count, (0, 2), (7, 5),
    (0, 7), (7, 0) do not: 4 of 8 = 50 %. Guards against ``<`` for ``<=`` (25 %), a circular distance that
    makes the first and last group neighbours (75 %), and a fraction instead of percent (0.5). Tolerance 2
    adds (0, 2) and (7, 5) (75 %); tolerance 0 is exact accuracy (25 %)."""
    target = torch.tensor([t for t, _ in ENDS])
    logits = 10.0 * F.one_hot(torch.tensor([p for _, p in ENDS]), 8).float()
    expected = {0: 25.0, 1: 50.0, 2: 75.0}
    for tolerance, value in expected.items():
        metric = OneOffAccuracy(8, tolerance=tolerance)
        metric.update(logits, target)
        assert metric.compute().item() == pytest.approx(value)
        confusion = torch.zeros(8, 8, dtype=torch.long)
        for t, p in ENDS:
            confusion[t, p] += 1
        assert one_off_accuracy_from_confusion(confusion, tolerance) == pytest.approx(value)
    exact = ExactAccuracy(8)
    exact.update(logits, target)
    assert exact.compute().item() == pytest.approx(25.0)


def test_one_off_accuracy_argument_bounds():
    """``tolerance = 0`` and ``num_classes = 1`` are allowed, negatives and 0 classes are not: guards against the
    checks moving by one."""
    assert OneOffAccuracy(1, tolerance=0).tolerance == 0
    with pytest.raises(ValueError, match="num_classes: expected >= 1, got 0"):
        OneOffAccuracy(0)
    metric = OneOffAccuracy(1, tolerance=0)
    metric.update(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    assert metric.compute().item() == 100.0


# ----- units of every logged metric --------------------------------------------------------------------
#: 8 samples over 4 ordinal classes, unbalanced so that micro and per-class-mean accuracy differ.
UNIT_TARGET = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
UNIT_PRED = torch.tensor([0, 0, 1, 1, 3, 2, 0, 2])
#: right: samples 0, 1, 3, 5 -> 50 %; within one: also 2 (0->1) and 7 (3->2) -> 75 %;
#: per class: 2/3, 1/2, 1/1, 0/2 -> mean (66.67 + 50 + 100 + 0) / 4 = 54.17 %.
#: logits 10 * onehot: confidence c = 1 / (1 + 3 e^-10) for every sample (all in the last bin): ECE = c - 1/2;
#: NLL = (4 * log(1 + 3 e^-10) + 4 * log(e^10 + 3)) / 8 nats.
CONF = 1.0 / (1.0 + 3.0 * math.exp(-10.0))
UNITS = {
    "top1_err": 50.0,
    "exact_acc": 50.0,
    "one_off_acc": 75.0,
    "mean_class_acc": (200.0 / 3 + 50.0 + 100.0 + 0.0) / 4,
    "ece": CONF - 0.5,
    "nll": (4 * math.log1p(3 * math.exp(-10.0)) + 4 * math.log(math.exp(10.0) + 3)) / 8,
}


def test_every_eval_metric_in_its_unit():
    """Percent for ``_err``/``_acc``, a fraction for ECE, nats per sample for NLL, on one hand-made batch split in
    two. Guards against a metric logged as a fraction where percent is documented (or the reverse: ECE 49.99),
    an error logged as an accuracy, the micro mean standing in for the mean class accuracy, and a summed NLL."""
    metrics = eval_metrics(4, (1,), "test_", ordinal=True, calibration_bins=15)
    logits = 10.0 * F.one_hot(UNIT_PRED, 4).float()
    metrics.update(logits[:5], UNIT_TARGET[:5])
    metrics.update(logits[5:], UNIT_TARGET[5:])
    values = {k.removeprefix("test_"): v.item() for k, v in metrics.compute().items()}
    assert values == pytest.approx(UNITS, rel=1e-5)
    train = classification_metrics(4, (1, 4), prefix="train_")
    train.update(logits, UNIT_TARGET)
    assert {k: v.item() for k, v in train.compute().items()} == pytest.approx({"train_top1_err": 50.0,
                                                                                 "train_top4_err": 0.0})


class _LogitsAreInputs(ImageClassifier):
    """The network returns its (N, 4) input: the test decides the logits."""

    def build_backbone(self) -> nn.Module:
        return nn.Flatten()


def test_classifier_logs_every_test_metric_in_its_unit(tmp_path):
    """What `ImageClassifier.test` logs, end to end: the same hand-made batch, the same units (test_loss is the
    cross-entropy, in nats). Guards against a unit changing between the metric and the log."""
    model = _LogitsAreInputs(num_classes=4, in_chans=1, ordinal=True, criterion=CrossEntropyLoss(), test_report=False)
    logits = 10.0 * F.one_hot(UNIT_PRED, 4).float()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    (result,) = trainer.test(model, DataLoader(TensorDataset(logits, UNIT_TARGET), batch_size=3), verbose=False)
    expected = {f"test_{k}": v for k, v in UNITS.items()} | {"test_loss": UNITS["nll"]}
    assert result == pytest.approx(expected, rel=1e-5)


# ----- merged states, names, dtypes (found by mutation testing) -------------------------------------------------
def test_merged_states_equal_one_process_that_saw_every_sample():
    """Two metric objects (two processes' states) merged with torchmetrics' ``merge_state`` give the value of one
    object that saw both batches: every state is a sum. Guards against a state declared without
    ``dist_reduce_fx="sum"`` (the DDP test that checks this end to end is too slow for the mutation runs)."""
    logits = 10.0 * F.one_hot(UNIT_PRED, 4).float()
    for make in (lambda: OneOffAccuracy(4), lambda: ExpectedCalibrationError(4, num_bins=4),
                 lambda: NegativeLogLikelihood(4)):
        whole, first, second = make(), make(), make()
        whole.update(logits, UNIT_TARGET)
        first.update(logits[:3], UNIT_TARGET[:3])
        second.update(logits[3:], UNIT_TARGET[3:])
        first.merge_state(second)
        assert first.compute().item() == pytest.approx(whole.compute().item(), rel=1e-6)


def test_collection_names_without_a_prefix_and_the_configured_bins():
    """Default prefix is empty; ``calibration_bins`` reaches the ECE; top-k gets its own k. Guards against a changed
    default prefix, the bins argument dropped (15 bins) and every k becoming top-1 (top4_err would be 50 %)."""
    assert set(classification_metrics(4, (1, 2)).keys(keep_base=False)) == {"top1_err", "top2_err"}
    metrics = eval_metrics(4, (1, 4), ordinal=True, calibration_bins=4)
    assert set(metrics.keys(keep_base=False)) == {"top1_err", "top4_err", "exact_acc", "one_off_acc", "ece", "nll",
                                                  "mean_class_acc"}
    assert metrics["ece"].num_bins == 4 and metrics["one_off_acc"].tolerance == 1
    metrics.update(10.0 * F.one_hot(UNIT_PRED, 4).float(), UNIT_TARGET)
    values = {k: v.item() for k, v in metrics.compute().items()}
    assert values["top4_err"] == 0.0 and values["top1_err"] == 50.0 and values["one_off_acc"] == 75.0


def test_confusion_helpers_at_their_limits():
    """A single counted sample is enough (``total <= 0`` is the empty case, not ``<= 1``); the helpers return float64
    as documented; the error message is the documented one."""
    one = torch.zeros(3, 3, dtype=torch.long)
    one[2, 1] = 1
    assert one_off_accuracy_from_confusion(one) == 100.0
    assert one_off_accuracy_from_confusion(one, tolerance=0) == 0.0
    with pytest.raises(ValueError, match="^confusion: expected at least one counted sample, got an all-zero matrix$"):
        one_off_accuracy_from_confusion(torch.zeros(3, 3))
    acc = per_class_accuracy(torch.tensor([[1, 2], [0, 3]]))
    assert acc.dtype == torch.float64 and acc.tolist() == pytest.approx([100.0 / 3, 100.0])
    ece = ExpectedCalibrationError(4, num_bins=4)
    assert ece.bins()["edges"].dtype == torch.float64


# ----- DistributedSampler padding: where the sampler is found, the cut at the shard's end ----------------------
def test_unpadded_sample_count_finds_the_sampler_in_a_batch_sampler_or_alone():
    """The DistributedSampler may sit in a custom ``batch_sampler`` (then ``loader.sampler`` is a SequentialSampler)
    or be the loader's ``sampler`` with ``batch_size=None`` (no batch sampler). 10 samples, 4 ranks: rank 3 has 2
    real samples of 3. Guards against either lookup being dropped."""
    data = TensorDataset(torch.arange(10))
    sampler = DistributedSampler(data, num_replicas=4, rank=3, shuffle=False)
    in_batches = DataLoader(data, batch_sampler=BatchSampler(sampler, batch_size=2, drop_last=False))
    assert not isinstance(in_batches.sampler, DistributedSampler)
    assert unpadded_sample_count(in_batches) == 2
    unbatched = DataLoader(data, sampler=sampler, batch_size=None)
    assert unbatched.batch_sampler is None and unpadded_sample_count(unbatched) == 2


def test_padding_trimmer_cuts_at_the_shard_end():
    """Rank 3 of 4 over 10 samples reads 3, 7 and a padded copy of 1. Batches of 2: [3, 7] whole, [1] dropped (None,
    not an empty batch); a list batch stays a list; an item whose first dimension is not the batch's (a (1,) tensor,
    a 0-d tensor) is kept whole; the batch size is read from the first item. Index past the list of loaders: no cut.
    A first call that is not batch 0 cuts nothing. Guards against off-by-one cuts and the list/tuple handling."""
    data = TensorDataset(torch.arange(10))
    loader = DataLoader(data, batch_size=2, sampler=DistributedSampler(data, num_replicas=4, rank=3, shuffle=False))
    trim = PaddingTrimmer()
    first, last = list(loader)
    position, kept = trim(first, 0, loader)
    assert position == 0 and kept is first
    assert trim(last, 1, loader) == (2, None)
    position, kept = trim([torch.arange(3), torch.tensor([5.0]), torch.tensor(9.0)], 0, [loader])
    assert position == 0 and isinstance(kept, list) and kept[0].tolist() == [0, 1]
    assert kept[1].tolist() == [5.0] and kept[2].item() == 9.0
    whole = (torch.arange(3), torch.arange(3))
    position, kept = trim(whole, 0, [loader], 1)  # dataloader_idx 1 of a list of one: nothing to cut
    assert position == 0 and kept is whole
    position, kept = PaddingTrimmer()(whole, 4, loader)
    assert position == 0 and kept is whole


def test_ece_merge_sums_bins_before_taking_the_gap():
    """Two processes whose gaps in the same bin have opposite signs: process one is under-confident (all right at
    confidence .625), process two over-confident (all wrong at .625). Summed bins give one gap |2 * .625 - 1| / 2;
    per-process gaps added would give (.375 + .625) / 2. Guards against the ECE states not being summed on merge.
    Also: 15 bins by default (Guo et al.)."""
    probs = torch.tensor([[0.625, 0.125, 0.125, 0.125]])
    first, second, whole = (ExpectedCalibrationError(4, num_bins=4, from_logits=False) for _ in range(3))
    first.update(probs, torch.tensor([0]))
    second.update(probs, torch.tensor([1]))
    whole.update(probs.repeat(2, 1), torch.tensor([0, 1]))
    first.merge_state(second)
    assert whole.compute().item() == pytest.approx(0.125)
    assert first.compute().item() == pytest.approx(0.125)
    assert ExpectedCalibrationError(4).num_bins == 15
