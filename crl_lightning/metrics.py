"""Classification metrics (torchmetrics, so Lightning syncs them across processes)."""

from __future__ import annotations

from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["TopKError", "classification_metrics"]


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


def classification_metrics(num_classes: int, top_k: tuple[int, ...] = (1, 5), prefix: str = "") -> MetricCollection:
    """Top-k errors for each k, named ``{prefix}top{k}_err`` (percent).

    Raises:
        ValueError: any k outside ``[1, num_classes]``.
    """
    return MetricCollection({f"top{k}_err": TopKError(num_classes, k) for k in top_k}, prefix=prefix)
