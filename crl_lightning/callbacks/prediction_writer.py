"""`PredictionWriter`: ``predictions.csv`` of ``crl predict``."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor
from typing_extensions import override

from crl_lightning.callbacks._classes import class_names
from crl_lightning.runs import PREDICTIONS_FILENAME, run_dir, write_text_atomic

__all__ = ["PredictionWriter"]


def _sample_path(dataset: Any, index: int) -> str:
    """The image file of sample ``index`` of ``dataset`` (through views with ``dataset``/``indices``); "" if none."""
    while hasattr(dataset, "dataset") and hasattr(dataset, "indices"):  # TransformedSubset, torch Subset
        dataset, index = dataset.dataset, dataset.indices[index]
    paths = getattr(dataset, "paths", None)
    return str(paths[index]) if paths is not None else ""


def _batch_targets(batch: Any, n: int) -> list[int]:
    """The ``n`` integer targets of an ``(images, target, ...)`` batch; -1 for each when it has none."""
    target = batch[1] if isinstance(batch, list | tuple) and len(batch) > 1 else None
    if not isinstance(target, Tensor) or target.shape != (n,) or target.is_floating_point():
        return [-1] * n
    return target.tolist()


class PredictionWriter(BasePredictionWriter):
    """Write ``predictions.csv`` (`PREDICTIONS_FILENAME`) into `run_dir` after ``trainer.predict``.

    One row per sample of the first predict dataloader, in sample order. Columns: ``index`` (the sample's
    position in the predicted dataset), ``path`` (its image file; empty when the dataset keeps none, e.g. the
    in-memory digits), ``target`` and ``target_name`` (the true class of a labelled split, from the batch's
    ``(images, target)``; both empty for unlabelled images, whose target is -1), then for i = 1..k
    ``top{i}_class``, ``top{i}_name`` and ``top{i}_prob`` (softmax probability, 6 decimals) of the k most
    probable classes, most probable first: ``top1_class`` is the prediction. Class names come from the
    DataModule's ``classes`` (else the index). It reads what ``predict_step`` returns, (N, C) probabilities
    (`crl_lightning.ImageClassifier.predict_step`: softmax, float32).

    ``crl predict`` adds this callback unless the trainer has a prediction writer; add it to the trainer
    yourself to change its options (``--trainer.callbacks+=crl_lightning.callbacks.PredictionWriter
    --trainer.callbacks.top_k 10``). With several processes, each writes the rows of its own samples to
    ``predictions_rank<r>.csv``. Under ``fast_dev_run`` nothing is written.

    Args:
        top_k: k, the most probable classes written per row (at most C); ``None`` writes all C, whose
            probabilities sum to 1.
        dirpath: where to write; ``None`` uses `run_dir`.

    Raises:
        ValueError: ``top_k < 1``; at write time, a prediction that is not an (N, C) tensor, or a batch with
            fewer predictions than sample indices (a collate function that dropped samples).
    """

    def __init__(self, top_k: int | None = 5, dirpath: str | Path | None = None) -> None:
        super().__init__(write_interval="batch")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k: expected >= 1 (or None for every class), got {top_k}")
        self.top_k = top_k
        self.dirpath = None if dirpath is None else Path(dirpath)
        #: Path of the file last written (``None`` before the first prediction).
        self.last_path: Path | None = None
        #: (index, target or -1, top-k classes, top-k probabilities) of every sample predicted so far
        self._rows: list[tuple[int, int, list[int], list[float]]] = []
        self._num_classes = 0

    @override
    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []

    @override
    def write_on_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any, batch_indices: Any, batch: Any,
        batch_idx: int, dataloader_idx: int,
    ) -> None:
        if dataloader_idx != 0:
            return
        if not isinstance(prediction, Tensor) or prediction.ndim != 2:
            shape = tuple(prediction.shape) if isinstance(prediction, Tensor) else type(prediction).__name__
            raise ValueError(f"prediction: expected (N, C) probabilities from predict_step, got {shape}")
        probs = prediction.detach().float().cpu()
        self._num_classes = probs.shape[1]
        k = probs.shape[1] if self.top_k is None else min(self.top_k, probs.shape[1])
        values, classes = probs.topk(k, dim=1)
        start = len(self._rows)
        indices = list(batch_indices) if batch_indices else range(start, start + len(probs))
        if len(indices) != len(probs):
            raise ValueError(
                f"predict batch {batch_idx}: expected one prediction per sample index, got {len(probs)} predictions "
                f"for {len(indices)} indices: the collate function dropped samples (an unreadable image under "
                "bad_images='skip'?), so the rows cannot be matched to their images; leave such samples out of "
                "the predict dataset instead (as ImageDataModule does)"
            )
        self._rows += zip(indices, _batch_targets(batch, len(probs)), classes.tolist(), values.tolist(), strict=True)

    @override
    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run or not self._rows:
            return
        names = class_names(trainer, self._num_classes) or [str(c) for c in range(self._num_classes)]
        loader = trainer.predict_dataloaders
        dataset = getattr(loader[0] if isinstance(loader, list | tuple) else loader, "dataset", None)
        k = len(self._rows[0][2])
        header = ["index", "path", "target", "target_name"]
        header += [f"top{i}_{what}" for i in range(1, k + 1) for what in ("class", "name", "prob")]
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(header)
        for index, target, classes, probs in sorted(self._rows):
            top = [v for c, p in zip(classes, probs, strict=True) for v in (c, names[c], f"{p:.6f}")]
            true = ["", ""] if target < 0 else [target, names[target]]
            writer.writerow([index, _sample_path(dataset, index), *true, *top])
        name = PREDICTIONS_FILENAME if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv"
        out = self.dirpath if self.dirpath is not None else run_dir(trainer)
        self.last_path = write_text_atomic(out / name, text.getvalue())
