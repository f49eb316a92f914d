"""Run identity, the per-epoch history, the test report (``test_metrics.json`` + figures), predictions, W&B naming.

Nothing here imports ``wandb``: W&B is touched only through a `lightning.pytorch.loggers.WandbLogger`
the user configured (e.g. with ``examples/configs/wandb.yaml``).
"""

from __future__ import annotations

import csv
import datetime
import inspect
import io
import json
import math
import os
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MetricCollection
from typing_extensions import override

from crl_lightning.files import write_text_atomic
from crl_lightning.metrics import ExpectedCalibrationError, MeanClassAccuracy, per_class_accuracy

__all__ = [
    "CONFUSION_CORNER",
    "HISTORY_FILENAME",
    "METRICS_FILENAME",
    "PREDICTIONS_FILENAME",
    "CompactProgressBar",
    "History",
    "PredictionWriter",
    "RandomState",
    "TestReport",
    "configure_wandb_loggers",
    "criterion_info",
    "resolved_config",
    "run_dir",
    "run_identity",
]

#: Name of the machine-readable test metrics file that `TestReport` writes and ``crl compare`` reads.
METRICS_FILENAME = "test_metrics.json"
#: Name of the per-epoch history file that `History` writes (one row per training epoch).
HISTORY_FILENAME = "history.csv"
#: Name of the file that `PredictionWriter` writes (``crl predict``).
PREDICTIONS_FILENAME = "predictions.csv"
#: Top-left cell of ``confusion_matrix.csv``: rows are the true classes, columns the predicted ones.
CONFUSION_CORNER = "true\\predicted"
#: Version tag written into every metrics file (bumped when the layout changes incompatibly).
METRICS_FORMAT = "crl_lightning.test_metrics/1"

#: Short criterion names used in labels; other classes use their name without a trailing ``Loss``.
_SHORT_NAMES = {"CompetingRatioLoss": "CRL", "CrossEntropyLoss": "CE"}
#: Constructor arguments that never identify a criterion.
_NOT_IDENTIFYING = {"ignore_index", "reduction", "size_average", "reduce"}


def criterion_info(criterion: nn.Module | None) -> dict[str, Any]:
    """Name, key hyper-parameters and a short label of a criterion, for tables and run names.

    The parameters are the numeric (not bool) constructor arguments stored as same-named attributes,
    without ``ignore_index``/``reduction`` and without those left at a zero default (an option that is
    off, e.g. ``label_smoothing=0``). So ``CompetingRatioLoss(alpha=1.5, beta=1.0)`` gives the label
    ``"CRL(alpha=1.5, beta=1)"`` and ``CrossEntropyLoss()`` gives ``"CE"``.

    Args:
        criterion: the loss module, or ``None``.

    Returns:
        ``{"name": class name, "class_path": module.qualname, "params": {name: number}, "label": str}``.
    """
    if criterion is None:
        return {"name": None, "class_path": None, "params": {}, "label": "unknown"}
    cls = type(criterion)
    params: dict[str, float | int] = {}
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError):  # builtins without a signature
        signature = None
    for name, p in (signature.parameters.items() if signature else ()):
        if name == "self" or name in _NOT_IDENTIFYING or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        value = getattr(criterion, name, None)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if value == 0 and p.default == 0:
            continue
        params[name] = value
    short = _SHORT_NAMES.get(cls.__name__, cls.__name__.removesuffix("Loss") or cls.__name__)
    label = short + (f"({', '.join(f'{k}={v:g}' for k, v in params.items())})" if params else "")
    return {"name": cls.__name__, "class_path": f"{cls.__module__}.{cls.__qualname__}", "params": params,
            "label": label}


def resolved_config(trainer: L.Trainer) -> dict[str, Any] | None:
    """The full resolved LightningCLI config of this run (from its `SaveConfigCallback`), or ``None``.

    ``None`` outside the CLI, and under ``fast_dev_run`` (where LightningCLI adds no such callback).
    """
    import yaml

    for callback in trainer.callbacks:
        if isinstance(callback, SaveConfigCallback):
            return yaml.safe_load(callback.parser.dump(callback.config, skip_none=False))
    return None


def _seed(config: dict[str, Any] | None) -> int | None:
    value = os.environ.get("PL_GLOBAL_SEED")  # set by lightning.seed_everything (and so by the CLI)
    if value is None and config is not None:
        value = config.get("seed_everything")
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def run_identity(
    trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule | None = None
) -> dict[str, Any]:
    """What identifies a run in a comparison: dataset, backbone, criterion and seed.

    Args:
        trainer: the trainer (its ``datamodule``, its test/val loaders and the CLI config are read).
        model: the LightningModule (its ``hparams.backbone`` and ``criterion`` are read).
        datamodule: the DataModule when it is not attached to ``trainer`` yet (before ``fit``).

    Returns:
        ``{"dataset": DataModule class name (else the test dataset's class, else "unknown"),
        "backbone": name, "criterion": `criterion_info`, "seed": int or None}``.
    """
    datamodule = datamodule if datamodule is not None else trainer.datamodule
    if datamodule is not None:
        dataset = type(datamodule).__name__
    else:
        dataset = type(_first_loader(trainer, "dataset")).__name__ if _first_loader(trainer) else "unknown"
    hparams = getattr(model, "hparams", {})
    backbone = hparams.get("backbone") if hasattr(hparams, "get") else None
    if backbone is None:
        backbone = type(getattr(model, "backbone", model)).__name__
    return {
        "dataset": dataset,
        "backbone": str(backbone),
        "criterion": criterion_info(getattr(model, "criterion", None)),
        "seed": _seed(resolved_config(trainer)),
    }


def _first_loader(trainer: L.Trainer, attr: str | None = None) -> Any:
    """The first test (else val) dataloader of ``trainer`` or its ``attr``; ``None`` when there is none."""
    loader = trainer.test_dataloaders or trainer.val_dataloaders
    if isinstance(loader, dict):
        loader = list(loader.values())
    if isinstance(loader, list | tuple):
        loader = loader[0] if loader else None
    return getattr(loader, attr, None) if attr is not None and loader is not None else loader


def run_dir(trainer: L.Trainer) -> Path:
    """The directory of this run, where its checkpoints also go.

    * a logger with a ``log_dir`` (TensorBoard, CSV): that, e.g. ``<root>/lightning_logs/version_3``;
    * another logger (W&B): ``<save_dir or default_root_dir>/<name>/<version>``, the same folder that
      `lightning.pytorch.callbacks.ModelCheckpoint` puts its ``checkpoints/`` in;
    * no logger: ``trainer.default_root_dir``.
    """
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    log_dir = getattr(logger, "log_dir", None)
    if log_dir:
        return Path(log_dir)
    save_dir = logger.save_dir or trainer.default_root_dir
    version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
    return Path(save_dir) / str(logger.name) / version


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _class_names(trainer: L.Trainer, num_classes: int) -> list[str] | None:
    """Class names from the DataModule (``class_names``/``classes``) or the test dataset (``classes``)."""
    dataset = _first_loader(trainer, "dataset")
    candidates = [trainer.datamodule, dataset, getattr(dataset, "dataset", None)]
    for obj in candidates:
        for attr in ("class_names", "classes"):
            names = getattr(obj, attr, None)
            if isinstance(names, list | tuple) and len(names) == num_classes:
                return [str(n) for n in names]
    return None


class History(L.Callback):
    """Write ``history.csv`` into `run_dir`: one row per training epoch, for learning curves from any run.

    Columns: ``epoch`` (1-based: the row is written when that epoch, its validation included, ends),
    ``step`` (optimizer steps so far), ``lr`` (of the first parameter group, during the epoch),
    ``epoch_time_s`` (wall seconds of the epoch, validation included), then every scalar epoch metric
    logged so far, sorted by name: ``train_loss``, ``train_top1_err``,
    ``val_loss``, ``val_top1_err``, ... (``_err``/``_acc`` in percent). Per-step values (``*_step``) are
    left out. A metric that a row lacks is empty there.

    The file is rewritten whole (atomically) after every epoch on global rank 0. The rows are also kept in
    the checkpoint (`state_dict`), so a run resumed from a checkpoint continues its history, even in a new
    run folder. Under ``fast_dev_run`` nothing is written. `ImageClassifier` adds this callback itself.
    """

    def __init__(self) -> None:
        #: One dict per completed epoch (also restored from a checkpoint).
        self.rows: list[dict[str, Any]] = []
        #: Path of the file last written (``None`` before the first epoch ends).
        self.last_path: Path | None = None
        self._epoch_start = 0.0
        self._lr: float | None = None

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.monotonic()
        # read now: Lightning steps epoch-interval schedulers before `on_train_epoch_end`
        self._lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        row: dict[str, Any] = {
            "epoch": trainer.current_epoch + 1,
            "step": trainer.global_step,
            "lr": self._lr,
            "epoch_time_s": round(time.monotonic() - self._epoch_start, 3),
        }
        for name, value in sorted(trainer.callback_metrics.items()):
            if name.endswith("_step") or not isinstance(value, Tensor) or value.numel() != 1:
                continue
            row[name.removesuffix("_epoch")] = float(value)
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        if trainer.is_global_zero:
            self.last_path = write_text_atomic(run_dir(trainer) / HISTORY_FILENAME, self.to_csv())

    def to_csv(self) -> str:
        """The rows as CSV text with a header (the columns of all rows, in the order documented above)."""
        columns: list[str] = []
        for row in self.rows:
            columns += [c for c in row if c not in columns]
        fixed = ["epoch", "step", "lr", "epoch_time_s"]
        columns = fixed + sorted(c for c in columns if c not in fixed)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        return out.getvalue()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))


class TestReport(L.Callback):
    """After each test, write the run's test metrics, confusion matrix and figures into `run_dir`.

    Files (on global rank 0; the metrics are already synced across processes):
        * ``test_metrics.json`` (`METRICS_FILENAME`): ``format``, ``created`` (UTC ISO time),
          ``dataset``/``backbone``/``criterion``/``seed`` (`run_identity`), ``metrics`` (every scalar
          ``test_*`` value in ``trainer.callback_metrics``: ``_err``/``_acc`` in percent, ``test_ece`` a
          fraction, ``test_nll`` in nats), ``per_class_acc`` (percent, ``null`` for an absent class),
          ``num_samples``, ``ckpt_path``, ``files`` and ``config`` (the resolved CLI config or ``null``);
        * ``confusion_matrix.csv``: C x C counts, rows = true class, columns = predicted class; the header
          row is `CONFUSION_CORNER` ("true", a backslash, "predicted") and the class names, the first column
          each row's true class name (names from the DataModule's ``classes``, else the class indices);
        * ``figures/softmax_heatmap.png``, ``figures/reliability_diagram.png``,
          ``figures/confusion_matrix.png`` (`crl_lightning.figures`), also logged as images to every
          `WandbLogger` of the trainer.

    The data come from the model: the confusion matrix and the reliability-diagram bins from the
    `MeanClassAccuracy` and `ExpectedCalibrationError` metrics of its ``test_metrics`` collection (synced),
    and the Fig. 5 heatmap rows from what its ``test_step`` returns (see `on_test_batch_end`). After
    ``trainer.test`` the same data are in `results`, for Python users::

        report = TestReport(figures=False)
        trainer = L.Trainer(callbacks=[report])
        trainer.test(model, datamodule=datamodule)
        report.results["confusion_matrix"]

    `ImageClassifier` adds this callback itself (``test_report=True``; it is then found in
    ``trainer.callbacks``); add it to the trainer yourself to change its options. With another
    LightningModule it writes the metrics and identity only. Under ``fast_dev_run`` it writes nothing (as
    Lightning then writes no logs or checkpoints), so smoke runs never end up in a ``crl compare`` table.

    Args:
        figures: draw and save the figures (matplotlib, Agg, imported only here).
        dirpath: where to write; ``None`` uses `run_dir`.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, figures: bool = True, dirpath: str | Path | None = None) -> None:
        self.figures = figures
        self.dirpath = None if dirpath is None else Path(dirpath)
        #: Path of the last metrics file written (``None`` before the first test).
        self.last_path: Path | None = None
        #: The data of the last test's report (see `on_test_epoch_end`); ``{}`` before it.
        self.results: dict[str, Any] = {}
        self._samples: list[tuple[int, int, Tensor]] = []  # (position in the test set, target, probabilities)

    @override
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.results, self._samples = {}, []

    @override
    def on_test_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Keep the softmax outputs of the first test image of each class, for the Fig. 5 heatmap.

        Reads ``outputs``, what ``test_step`` returned: a dict with ``logits`` (N, C), ``target`` (N,) int64
        and ``position`` (int, the position of the batch's first sample in this process's test set), as
        `ImageClassifier.test_step` returns it; anything else is passed over, as are batches of the second
        and later test dataloaders. It keeps at most the model's ``heatmap_samples`` hyper-parameter (C when
        the model has none) images, one per class, in the order they come.
        """
        keys = {"logits", "target", "position"}
        if dataloader_idx != 0 or not isinstance(outputs, Mapping) or not keys <= outputs.keys():
            return
        logits, target = outputs["logits"], outputs["target"]
        limit = min(pl_module.hparams.get("heatmap_samples", logits.shape[1]), logits.shape[1])
        if target.ndim != 1 or len(self._samples) >= limit:
            return
        seen = {t for _, t, _ in self._samples}
        probs = torch.softmax(logits.float(), dim=1).cpu()
        for i, t in enumerate(target.tolist()):
            if t not in seen and len(self._samples) < limit:
                seen.add(t)
                self._samples.append((outputs["position"] + i, t, probs[i]))

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Fill `results` on every process (the metrics sync across processes here).

        `results` (all on the CPU) after a test with integer targets of a model whose ``test_metrics``
        collection holds a `MeanClassAccuracy` and an `ExpectedCalibrationError` (`ImageClassifier`):
            * ``confusion_matrix``: (C, C) int64, rows = true class, columns = predicted class;
            * ``per_class_acc``: (C,) float64 percent, ``nan`` for a class absent from the test set;
            * ``calibration``: the `ExpectedCalibrationError.bins` dict plus ``ece`` (fraction);
            * ``samples``: ``index`` (K,) int64 position in the test set (of process 0), ``target`` (K,)
              int64 and ``probs`` (K, C) float32 softmax outputs, for the first test image of each class,
              sorted by class.
        """
        collection = getattr(pl_module, "test_metrics", None)
        metrics = list(collection.values(copy_state=False)) if isinstance(collection, MetricCollection) else []
        accuracy = next((m for m in metrics if isinstance(m, MeanClassAccuracy)), None)
        calibration = next((m for m in metrics if isinstance(m, ExpectedCalibrationError)), None)
        if accuracy is None or calibration is None or (trainer.world_size == 1 and not accuracy.update_called):
            return  # not such a model, or no test batch with integer targets
        confusion = accuracy.confusion()
        samples = sorted(self._samples, key=lambda s: s[1])
        self.results = {
            "confusion_matrix": confusion,
            "per_class_acc": per_class_accuracy(confusion),
            "calibration": {**calibration.bins(), "ece": float(calibration.compute())},
            "samples": {
                "index": torch.tensor([s[0] for s in samples], dtype=torch.long),
                "target": torch.tensor([s[1] for s in samples], dtype=torch.long),
                "probs": torch.stack([s[2] for s in samples]) if samples else torch.empty(0, confusion.shape[0]),
            },
        }

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.fast_dev_run:
            return
        out = self.dirpath if self.dirpath is not None else run_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        metrics = {
            name: float(value)
            for name, value in sorted(trainer.callback_metrics.items())
            if name.startswith("test_") and isinstance(value, Tensor) and value.numel() == 1
        }
        results = self.results
        files: dict[str, Any] = {}
        confusion = results.get("confusion_matrix")
        class_names = _class_names(trainer, confusion.shape[0]) if confusion is not None else None
        if confusion is not None:
            names = class_names or [str(c) for c in range(confusion.shape[0])]
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerows(
                [[CONFUSION_CORNER, *names]] + [[names[i], *row] for i, row in enumerate(confusion.tolist())])
            write_text_atomic(out / "confusion_matrix.csv", text.getvalue())
            files["confusion_matrix"] = "confusion_matrix.csv"
        if self.figures and results:
            from crl_lightning.figures import save_test_figures

            paths = save_test_figures(results, out / "figures", class_names=class_names)
            files["figures"] = {key: str(path.relative_to(out)) for key, path in paths.items()}
            self._log_to_wandb(trainer, paths, results.get("per_class_acc"), class_names)
        config = resolved_config(trainer)
        record = {
            "format": METRICS_FORMAT,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **run_identity(trainer, pl_module),
            "metrics": metrics,
            "per_class_acc": results.get("per_class_acc"),
            "class_names": class_names,
            "num_samples": int(confusion.sum()) if confusion is not None else None,
            "ckpt_path": trainer.ckpt_path,
            "files": files,
            "config": config,
        }
        text = json.dumps(_jsonable(record), indent=2, default=str) + "\n"
        self.last_path = write_text_atomic(out / METRICS_FILENAME, text)

    @staticmethod
    def _log_to_wandb(
        trainer: L.Trainer, paths: dict[str, Path], per_class: Tensor | None, class_names: list[str] | None
    ) -> None:
        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            for key, path in paths.items():
                logger.log_image(key=f"test/{key}", images=[str(path)])
            if per_class is not None:
                names = class_names or [str(i) for i in range(len(per_class))]
                rows = [[i, names[i], None if math.isnan(a) else a] for i, a in enumerate(per_class.tolist())]
                logger.log_table(key="test/per_class_acc", columns=["class", "name", "acc_percent"], data=rows)


def _sample_path(dataset: Any, index: int) -> str:
    """The image file of sample ``index`` of ``dataset`` (through views with ``dataset``/``indices``); "" if none."""
    while hasattr(dataset, "dataset") and hasattr(dataset, "indices"):  # TransformedSubset, torch Subset
        dataset, index = dataset.dataset, dataset.indices[index]
    paths = getattr(dataset, "paths", None)
    return str(paths[index]) if paths is not None else ""


class PredictionWriter(BasePredictionWriter):
    """Write ``predictions.csv`` (`PREDICTIONS_FILENAME`) into `run_dir` after ``trainer.predict``.

    One row per sample of the first predict dataloader, in sample order. Columns: ``index`` (the sample's
    position in the predicted dataset), ``path`` (its image file; empty when the dataset keeps none, e.g. the
    in-memory digits), ``predicted`` (class index) and ``predicted_name``, then for i = 1..k ``top{i}_class``,
    ``top{i}_name`` and ``top{i}_prob`` (softmax probability) of the k most probable classes, most probable
    first. Class names come from the DataModule's ``classes`` (else the index). It reads what ``predict_step``
    returns, (N, C) probabilities (`crl_lightning.ImageClassifier.predict_step`: softmax, float32).

    ``crl predict`` adds this callback unless the trainer has a prediction writer; add it to the trainer
    yourself to change its options (``--trainer.callbacks+=crl_lightning.callbacks.PredictionWriter
    --trainer.callbacks.top_k 10``). With several processes, each writes the rows of its own samples to
    ``predictions_rank<r>.csv``. Under ``fast_dev_run`` nothing is written.

    Args:
        top_k: k, the most probable classes written per row (at most C); ``None`` writes all C, whose
            probabilities sum to 1.
        dirpath: where to write; ``None`` uses `run_dir`.

    Raises:
        ValueError: ``top_k < 1``; at write time, a prediction that is not an (N, C) tensor.
    """

    def __init__(self, top_k: int | None = 5, dirpath: str | Path | None = None) -> None:
        super().__init__(write_interval="batch")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k: expected >= 1 (or None for every class), got {top_k}")
        self.top_k = top_k
        self.dirpath = None if dirpath is None else Path(dirpath)
        #: Path of the file last written (``None`` before the first prediction).
        self.last_path: Path | None = None
        self._rows: list[tuple[int, list[int], list[float]]] = []  # (index, top-k classes, top-k probabilities)
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
        self._rows += zip(indices, classes.tolist(), values.tolist(), strict=True)

    @override
    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run or not self._rows:
            return
        names = _class_names(trainer, self._num_classes) or [str(c) for c in range(self._num_classes)]
        loader = trainer.predict_dataloaders
        dataset = getattr(loader[0] if isinstance(loader, list | tuple) else loader, "dataset", None)
        k = len(self._rows[0][1])
        header = ["index", "path", "predicted", "predicted_name"]
        header += [f"top{i}_{what}" for i in range(1, k + 1) for what in ("class", "name", "prob")]
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(header)
        for index, classes, probs in sorted(self._rows):
            top = [v for c, p in zip(classes, probs, strict=True) for v in (c, names[c], f"{p:.6g}")]
            writer.writerow([index, _sample_path(dataset, index), classes[0], names[classes[0]], *top])
        name = PREDICTIONS_FILENAME if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv"
        out = self.dirpath if self.dirpath is not None else run_dir(trainer)
        self.last_path = write_text_atomic(out / name, text.getvalue())


class CompactProgressBar(TQDMProgressBar):
    """Lightning's TQDM progress bar showing only the metrics the model puts on it (no logger ``v_num``).

    `crl_lightning.ImageClassifier` puts its training loss and top-1 errors there; ``crl`` uses this bar unless
    the config sets a progress bar or turns it off.
    """

    @override
    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items


def configure_wandb_loggers(
    trainer: L.Trainer, model: L.LightningModule, datamodule: L.LightningDataModule | None = None,
    job_type: str | None = None,
) -> None:
    """Name, group and tag each not-yet-started `WandbLogger` of ``trainer`` after the run's identity.

    Must run before the W&B run starts (Lightning starts it at the beginning of ``fit``/``test``, before
    any callback hook), so the ``crl`` CLI calls it right after building the trainer; in plain Python
    call it before ``trainer.fit``. Values the user set (``name``, ``group``, ``tags``, ``job_type``)
    are kept. What it sets in ``wandb.init``:

    * ``group``: ``"<dataset>/<backbone>/<criterion label>"`` (seeds of one setting share a group, so
      W&B draws their mean and spread; CE-vs-CRL panels group by it);
    * ``name``: ``"<group>/seed<seed>"``; ``tags``: dataset, backbone, criterion label;
    * ``job_type``: ``job_type`` (the CLI passes its subcommand: ``fit``, ``test``, ...);
    * ``config``: the full resolved CLI config (when there is one) plus ``crl`` = `run_identity`, so
      the W&B table can also group or filter by any config value;
    * ``dir``: when ``save_dir`` is WandbLogger's default ``"."``, ``trainer.default_root_dir``, so W&B's
      files (``wandb/``), the checkpoints and the test report (``<project>/<run id>/``) all go there.

    Args:
        trainer: the trainer whose loggers are configured.
        model: the LightningModule (backbone and criterion).
        datamodule: the DataModule (its class names the dataset); ``None`` reads ``trainer.datamodule``.
        job_type: W&B job type, or ``None`` to leave unset.
    """
    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers:
        return
    identity = run_identity(trainer, model, datamodule)
    crit = identity["criterion"]["label"]
    dataset = identity["dataset"].removesuffix("DataModule") or identity["dataset"]
    group = f"{dataset}/{identity['backbone']}/{crit}"
    name = group + (f"/seed{identity['seed']}" if identity["seed"] is not None else "")
    config = resolved_config(trainer) or {}
    for logger in loggers:
        init = getattr(logger, "_wandb_init", None)
        if not isinstance(init, dict) or getattr(logger, "_experiment", None) is not None:
            rank_zero_warn(
                "configure_wandb_loggers: expected a WandbLogger whose run has not started, got a started run"
                " (or a WandbLogger without `_wandb_init`); its name and group are left as they are"
            )
            continue
        defaults = {"name": name, "group": group, "tags": [dataset, identity["backbone"], crit], "job_type": job_type}
        for key, value in defaults.items():
            if init.get(key) is None and value is not None:
                init[key] = value
        init["config"] = {**config, **(init.get("config") or {}), "crl": identity}
        if logger.save_dir == "." and os.path.abspath(trainer.default_root_dir) != os.getcwd():
            init["dir"] = logger._save_dir = os.fspath(trainer.default_root_dir)
            os.makedirs(init["dir"], exist_ok=True)


class RandomState(L.Callback):
    """Keep the random generators' states in every checkpoint and restore them when a fit resumes from one.

    The states of torch's CPU and CUDA generators, numpy's and Python's are saved with the checkpoint and put
    back when the checkpoint is loaded, before the resumed fit creates its first loader iterator (the sanity
    check that comes first runs with isolated generators). Everything random after an epoch-end checkpoint
    (the shuffling, which draws its seed from torch's generator when an epoch's loader iterator is created;
    per-image augmentation in the main process or in non-persistent workers, which are seeded from it;
    on-device crops and flips; MixUp/CutMix; dropout) then repeats, so a run resumed from ``last.ckpt`` equals
    the uninterrupted run bit for bit on a CPU with ``deterministic: true``. Not covered: persistent workers
    (their generators live on across epochs) and checkpoints saved in the middle of an epoch (the loader's
    position is not saved). `ImageClassifier` adds this callback itself.
    """

    @override
    def state_dict(self) -> dict[str, Any]:
        # tensors, ints and lists only: checkpoints load with torch.load(weights_only=True)
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        return {"torch": torch.get_rng_state(), "cuda": cuda,
                "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
                "python": [version, list(internal), gauss_next]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available() and len(state_dict["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        kind, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))
