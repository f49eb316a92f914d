"""Classification metrics (torchmetrics, so Lightning syncs them across processes).

Every metric here keeps *counts or sums* as its state (``dist_reduce_fx="sum"``), so an epoch value is
sample-weighted (a short last batch counts for its samples, not as a full batch) and the value after a
multi-process sync equals the value of one process that saw all samples.

Units: names ending in ``_err`` or ``_acc`` are **percent** in [0, 100]; `ExpectedCalibrationError`
is a **fraction** in [0, 1]; `NegativeLogLikelihood` is in **nats per sample**.
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DistributedSampler
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

__all__ = [
    "ExactAccuracy",
    "ExpectedCalibrationError",
    "MeanClassAccuracy",
    "NegativeLogLikelihood",
    "OneOffAccuracy",
    "PaddingTrimmer",
    "TopKError",
    "classification_metrics",
    "eval_metrics",
    "one_off_accuracy_from_confusion",
    "per_class_accuracy",
    "temperature_scaled_metrics",
    "unpadded_sample_count",
]


def _check_inputs(preds: Tensor, target: Tensor, num_classes: int) -> None:
    if preds.ndim != 2 or preds.shape[1] != num_classes:
        raise ValueError(f"preds: expected shape (N, {num_classes}), got {tuple(preds.shape)}")
    if target.ndim != 1 or target.shape[0] != preds.shape[0]:
        raise ValueError(f"target: expected shape ({preds.shape[0]},) of class indices, got {tuple(target.shape)}")


class TopKError(MulticlassAccuracy):
    """Top-k error in percent, micro-averaged over samples: ``100 * (1 - top-k accuracy)``.

    Epoch values are sample-weighted (counts are accumulated, not per-batch means).

    Args:
        num_classes: number of classes C.
        top_k: k, ``1 <= k <= C``.

    Shape:
        update(preds (N, C) float logits or probabilities, target (N,) int64) -> compute() scalar in [0, 100].

    Raises:
        ValueError: ``top_k`` outside ``[1, num_classes]``.
    """

    def __init__(self, num_classes: int, top_k: int = 1, **kwargs) -> None:
        if not 1 <= top_k <= num_classes:
            raise ValueError(f"top_k: expected 1 <= k <= num_classes={num_classes}, got {top_k}")
        super().__init__(num_classes=num_classes, top_k=top_k, average="micro", **kwargs)

    def compute(self) -> Tensor:
        return 100.0 * (1.0 - super().compute())


class ExactAccuracy(MulticlassAccuracy):
    """Exact (top-1) accuracy in percent, micro-averaged: the paper's Adience "exact accuracy" (Table IV).

    Args:
        num_classes: number of classes C.

    Shape:
        update(preds (N, C) float, target (N,) int64) -> compute() scalar in [0, 100].
    """

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(num_classes=num_classes, top_k=1, average="micro", **kwargs)

    def compute(self) -> Tensor:
        return 100.0 * super().compute()


class OneOffAccuracy(Metric):
    """Accuracy within ``tolerance`` classes, in percent, for ordinal labels (Adience age groups).

    A prediction counts as correct when ``|argmax(preds) - target| <= tolerance`` on the class index;
    ``tolerance=1`` is the paper's "with-one-category-off" accuracy (Table IV), ``tolerance=0`` is
    exact accuracy. Class indices must be in ordinal order (0 = youngest age group).

    Args:
        num_classes: number of classes C.
        tolerance: allowed distance between predicted and true class index, ``>= 0``.

    Shape:
        update(preds (N, C) float logits or probabilities, target (N,) int64) -> compute() scalar in [0, 100]
        (``nan`` before any update).

    Raises:
        ValueError: ``tolerance < 0`` or ``num_classes < 1`` (construction); bad shapes (update).
    """

    higher_is_better = True
    full_state_update = False
    correct: Tensor
    total: Tensor

    def __init__(self, num_classes: int, tolerance: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        if tolerance < 0:
            raise ValueError(f"tolerance: expected >= 0, got {tolerance}")
        self.num_classes, self.tolerance = num_classes, tolerance
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        _check_inputs(preds, target, self.num_classes)
        distance = (preds.argmax(dim=1) - target).abs()
        self.correct += (distance <= self.tolerance).sum()
        self.total += target.numel()

    def compute(self) -> Tensor:
        return 100.0 * self.correct.double() / self.total.double()


class NegativeLogLikelihood(Metric):
    """Mean negative log-likelihood ``-log softmax(logits)[target]`` in nats per sample (float64 sums, float32 value).

    Computed from logits in float32 (``F.cross_entropy``), so it equals the test loss when the
    criterion is plain cross-entropy.

    Args:
        num_classes: number of classes C (shape check only).

    Shape:
        update(logits (N, C) float, target (N,) int64) -> compute() float32 scalar >= 0 (``nan`` before any update).
    """

    higher_is_better = False
    full_state_update = False
    nll_sum: Tensor
    total: Tensor

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.add_state("nll_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        _check_inputs(logits, target, self.num_classes)
        self.nll_sum += F.cross_entropy(logits.float(), target, reduction="sum").double()
        self.total += target.numel()

    def compute(self) -> Tensor:
        return (self.nll_sum / self.total.double()).float()


class ExpectedCalibrationError(Metric):
    """Expected calibration error (ECE, L1) as a **fraction** in [0, 1], with the per-bin reliability data.

    ``ECE = sum_b (n_b / N) * |acc_b - conf_b|`` over ``num_bins`` equal-width confidence bins, where the
    confidence of a sample is its top softmax probability, ``acc_b`` the fraction of top-1-correct
    samples in bin b and ``conf_b`` their mean confidence (Guo et al., 2017, "On Calibration of Modern
    Neural Networks", Eq. 3). Bins are ``[i/B, (i+1)/B)``, the last one closed. The state is three
    (B,) sum vectors, so it syncs exactly and `bins` can draw a reliability diagram.

    Args:
        num_classes: number of classes C (shape check only).
        num_bins: number of bins B, ``>= 1`` (15, as Guo et al.).
        from_logits: apply softmax to ``preds`` (``False``: ``preds`` are probabilities).

    Shape:
        update(preds (N, C) float, target (N,) int64) -> compute() float32 scalar in [0, 1] (float64 sums; ``nan``
        before any update).

    Raises:
        ValueError: ``num_bins < 1`` (construction); bad shapes (update).
    """

    higher_is_better = False
    full_state_update = False
    count: Tensor
    confidence_sum: Tensor
    correct_sum: Tensor

    def __init__(self, num_classes: int, num_bins: int = 15, from_logits: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_bins < 1:
            raise ValueError(f"num_bins: expected >= 1, got {num_bins}")
        self.num_classes, self.num_bins, self.from_logits = num_classes, num_bins, from_logits
        for name in ("count", "confidence_sum", "correct_sum"):
            self.add_state(name, torch.zeros(num_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        _check_inputs(preds, target, self.num_classes)
        probs = torch.softmax(preds.float(), dim=1) if self.from_logits else preds.float()
        confidence, predicted = probs.max(dim=1)
        index = (confidence * self.num_bins).long().clamp_(0, self.num_bins - 1)
        correct = (predicted == target).double()
        self.count.index_add_(0, index, torch.ones_like(correct))
        self.confidence_sum.index_add_(0, index, confidence.double())
        self.correct_sum.index_add_(0, index, correct)

    def bins(self) -> dict[str, Tensor]:
        """Reliability-diagram data (synced when distributed): float64 tensors on the CPU.

        Returns:
            ``edges`` (B + 1,), ``count`` (B,) samples per bin, ``confidence`` (B,) and ``accuracy`` (B,)
            per-bin means as fractions (``nan`` for empty bins).
        """
        with self.sync_context(should_sync=self._to_sync):  # a no-op in a single process
            count = self.count.detach().cpu().clone()
            conf = self.confidence_sum.detach().cpu() / count
            acc = self.correct_sum.detach().cpu() / count
        edges = torch.linspace(0.0, 1.0, self.num_bins + 1, dtype=torch.float64)
        return {"edges": edges, "count": count, "confidence": conf, "accuracy": acc}

    def compute(self) -> Tensor:
        total = self.count.sum()
        gap = (self.confidence_sum - self.correct_sum).abs()  # n_b * |conf_b - acc_b|
        return (gap.sum() / total).float()


def one_off_accuracy_from_confusion(confusion: Tensor, tolerance: int = 1) -> float:
    """One-off accuracy (percent) from a confusion matrix whose rows are true and columns predicted classes.

    Args:
        confusion: (C, C) counts, ``confusion[i, j]`` = samples of true class i predicted as j.
        tolerance: allowed ``|i - j|``.

    Returns:
        ``100 * sum_{|i-j| <= tolerance} confusion[i, j] / sum(confusion)``.

    Raises:
        ValueError: ``confusion`` not square 2-D or empty.
    """
    confusion = torch.as_tensor(confusion, dtype=torch.float64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"confusion: expected a square (C, C) matrix, got shape {tuple(confusion.shape)}")
    total = confusion.sum()
    if total <= 0:
        raise ValueError("confusion: expected at least one counted sample, got an all-zero matrix")
    i = torch.arange(confusion.shape[0])
    near = (i[:, None] - i[None, :]).abs() <= tolerance
    return float(100.0 * confusion[near].sum() / total)


def per_class_accuracy(confusion: Tensor) -> Tensor:
    """Per-class accuracy (recall) in percent from a (C, C) confusion matrix (rows = true class).

    Returns:
        (C,) float64; ``nan`` for a class with no sample.
    """
    confusion = torch.as_tensor(confusion, dtype=torch.float64)
    return 100.0 * confusion.diagonal() / confusion.sum(dim=1)


class MeanClassAccuracy(MulticlassConfusionMatrix):
    """Mean of the per-class accuracies in percent, kept as a confusion matrix (which `confusion` returns).

    A class absent from the targets has no accuracy and is left out of the mean (see `per_class_accuracy`).
    The state is torchmetrics' (C, C) ``confmat`` (rows = true class, columns = predicted class), summed
    across processes.

    Args:
        num_classes: number of classes C (and `torchmetrics.classification.MulticlassConfusionMatrix`'s other
            arguments, ``normalize`` excepted).

    Shape:
        update(preds (N, C) float, target (N,) int64) -> compute() float32 scalar in [0, 100] (``nan``
        before any update).
    """

    def confusion(self) -> Tensor:
        """The (C, C) int64 confusion matrix on the CPU (synced when distributed), rows = true class."""
        with self.sync_context(should_sync=self._to_sync):  # a no-op in a single process
            return self.confmat.detach().cpu().clone()

    def compute(self) -> Tensor:
        return per_class_accuracy(self.confmat).nanmean().float()


def classification_metrics(
    num_classes: int, top_k: tuple[int, ...] = (1, 5), prefix: str = "", validate_args: bool = True
) -> MetricCollection:
    """Top-k errors for each k, named ``{prefix}top{k}_err`` (percent).

    Args:
        num_classes: number of classes C.
        top_k: the k values.
        prefix: prepended to every name, e.g. ``"train_"``.
        validate_args: let torchmetrics check the target values (a device-to-host sync per update).

    Raises:
        ValueError: any k outside ``[1, num_classes]``.
    """
    return MetricCollection(
        {f"top{k}_err": TopKError(num_classes, k, validate_args=validate_args) for k in top_k}, prefix=prefix
    )


def eval_metrics(
    num_classes: int,
    top_k: tuple[int, ...] = (1, 5),
    prefix: str = "",
    ordinal: bool = False,
    calibration_bins: int | None = None,
) -> MetricCollection:
    """Validation/test metrics: top-k errors, exact and one-off accuracy for ordinal tasks, test-only extras.

    Names: ``{prefix}top{k}_err`` for each k; with ``ordinal``, ``{prefix}exact_acc`` and ``{prefix}one_off_acc``
    (all percent; `TopKError`, `ExactAccuracy`, `OneOffAccuracy`); with ``calibration_bins``, ``{prefix}ece``
    (fraction, `ExpectedCalibrationError` with that many bins), ``{prefix}nll`` (nats, `NegativeLogLikelihood`)
    and ``{prefix}mean_class_acc`` (percent, `MeanClassAccuracy`).

    Torchmetrics' target-range checks are off (they cost a device-to-host sync per batch).

    Raises:
        ValueError: any k outside ``[1, num_classes]``, or ``calibration_bins < 1``.
    """
    metrics: dict[str, Metric | MetricCollection] = {
        f"top{k}_err": TopKError(num_classes, k, validate_args=False) for k in top_k
    }
    if ordinal:
        metrics["exact_acc"] = ExactAccuracy(num_classes, validate_args=False)
        metrics["one_off_acc"] = OneOffAccuracy(num_classes, tolerance=1)
    if calibration_bins is not None:
        metrics["ece"] = ExpectedCalibrationError(num_classes, num_bins=calibration_bins)
        metrics["nll"] = NegativeLogLikelihood(num_classes)
        metrics["mean_class_acc"] = MeanClassAccuracy(num_classes, validate_args=False)
    return MetricCollection(metrics, prefix=prefix)


def temperature_scaled_metrics(num_classes: int, calibration_bins: int = 15, prefix: str = "") -> MetricCollection:
    """NLL and ECE of temperature-scaled logits: ``{prefix}nll_ts`` (nats) and ``{prefix}ece_ts`` (fraction).

    Update it with ``logits / T`` (`crl_lightning.calibration.fit_temperature`); the metrics are
    `NegativeLogLikelihood` and `ExpectedCalibrationError` (``calibration_bins`` bins), as in `eval_metrics`.

    Raises:
        ValueError: ``calibration_bins < 1``.
    """
    return MetricCollection({"nll_ts": NegativeLogLikelihood(num_classes),
                             "ece_ts": ExpectedCalibrationError(num_classes, num_bins=calibration_bins)}, prefix=prefix)


def unpadded_sample_count(dataloader: Any) -> int | None:
    """How many of this process's samples are real when its sampler pads with duplicates, else ``None``.

    `torch.utils.data.DistributedSampler` (which Lightning puts into val/test loaders under DDP) with
    ``drop_last=False`` gives every one of W processes ``ceil(N / W)`` samples: it appends copies of the
    first samples so the W shards have equal length, and process ``r`` reads global positions
    ``r, r + W, r + 2W, ...``. Positions ``>= N`` are the padding, so the real samples of process ``r``
    are its first ``len(range(r, N, W))``, and the padding (at most one sample) is at the end of its last
    batch. `PaddingTrimmer` cuts that tail off the eval batches of `ImageClassifier`, so each sample counts
    once in the synced metrics. Samplers that do not pad (Lightning's ``UnrepeatedDistributedSampler``,
    ``drop_last=True``) need no cut; for them the count equals ``len(sampler)``.

    Args:
        dataloader: a `torch.utils.data.DataLoader` (its ``batch_sampler.sampler`` or ``sampler`` is read).

    Returns:
        The number of leading samples of this process's shard that are not padding, or ``None`` when the
        sampler is not a ``DistributedSampler`` (nothing to cut).
    """
    sampler = getattr(getattr(dataloader, "batch_sampler", None), "sampler", None)
    if not isinstance(sampler, DistributedSampler):
        sampler = getattr(dataloader, "sampler", None)
    if not isinstance(sampler, DistributedSampler):
        return None
    real = len(range(sampler.rank, len(cast(Sized, sampler.dataset)), sampler.num_replicas))
    return min(real, sampler.num_samples)


class PaddingTrimmer:
    """Cut the duplicates a `DistributedSampler` pads onto the end of a process's eval shard off its batches.

    Call it on every batch of an evaluation pass, in order. A batch with ``batch_idx == 0`` starts a new pass
    and reads `unpadded_sample_count` of its dataloader; later batches continue the count. The padding sits
    at the end of the shard, so the cut falls in the last batch (or drops the last batch whole). Without a
    padding sampler every batch comes back unchanged.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> data = TensorDataset(torch.arange(10), torch.arange(10) % 3)
        >>> sampler = DistributedSampler(data, num_replicas=4, rank=3, shuffle=False)  # 3, 7, a copy of 1
        >>> loader, trim = DataLoader(data, batch_size=2, sampler=sampler), PaddingTrimmer()
        >>> [trim(batch, i, loader) for i, batch in enumerate(loader)]
        [(0, [tensor([3, 7]), tensor([0, 1])]), (2, None)]
    """

    def __init__(self) -> None:
        self._limit: int | None = None
        self._seen = 0

    def __call__(
        self, batch: list | tuple, batch_idx: int, dataloaders: Any, dataloader_idx: int = 0
    ) -> tuple[int, list | tuple | None]:
        """The batch's position in this process's shard, and the batch without its padded samples.

        Args:
            batch: a list or tuple whose first item is an (N, ...) tensor (the images).
            batch_idx: index of the batch in its pass over the dataloader (0 starts a new pass).
            dataloaders: the dataloader of the pass, or the list/dict of them as ``trainer.test_dataloaders``
                gives them, or ``None`` (nothing is cut).
            dataloader_idx: which of ``dataloaders`` the batch comes from.

        Returns:
            ``(position, batch)``: the number of samples of the pass before this batch, and the batch with
            every (N, ...) tensor cut to its unpadded samples (the same object when none is padding), or
            ``None`` when all N are padding.
        """
        if batch_idx == 0:
            if isinstance(dataloaders, dict):
                dataloaders = list(dataloaders.values())
            if isinstance(dataloaders, list | tuple):
                dataloaders = dataloaders[dataloader_idx] if dataloader_idx < len(dataloaders) else None
            self._limit, self._seen = unpadded_sample_count(dataloaders), 0
        n = batch[0].shape[0]
        position, self._seen = self._seen, self._seen + n
        keep = n if self._limit is None else max(0, min(n, self._limit - position))
        if keep == n:
            return position, batch
        if keep == 0:
            return position, None
        items = [b[:keep] if isinstance(b, Tensor) and b.ndim > 0 and b.shape[0] == n else b for b in batch]
        return position, type(batch)(items) if isinstance(batch, list) else tuple(items)
