"""`TestReport`: after each test, the run record ``test_metrics.json``, the confusion matrix and the figures."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torchmetrics import MetricCollection
from typing_extensions import override

from crl_lightning.callbacks._classes import class_names
from crl_lightning.metrics import ExpectedCalibrationError, MeanClassAccuracy, per_class_accuracy
from crl_lightning.runs import (
    CHECKPOINT_KEY,
    METRICS_FILENAME,
    METRICS_FORMAT,
    checkpoint_run,
    resolved_config,
    run_dir,
    run_identity,
    utc_now,
    write_json,
    write_text_atomic,
)

__all__ = ["CONFUSION_CORNER", "TestReport"]

#: Top-left cell of ``confusion_matrix.csv``: rows are the true classes, columns the predicted ones.
CONFUSION_CORNER = "true\\predicted"


class TestReport(L.Callback):
    """After each test, write the run's test metrics, confusion matrix and figures into `run_dir`.

    Files (on global rank 0; the metrics are already synced across processes):
        * ``test_metrics.json`` (`METRICS_FILENAME`, the run record of `crl_lightning.runs`): ``format``,
          ``created`` (UTC ISO time), ``dataset``/``backbone``/``model``/``criterion``/``seed``/``fold``/
          ``experiment`` (`crl_lightning.runs.run_identity`), ``command`` (``"fit"`` when the weights tested were
          trained by this run, ``"test"`` for a test of a checkpoint of another run), ``trained_by`` (for
          ``"test"``: the ``run_dir`` that trained the checkpoint and its ``ckpt_path``), ``epochs`` (epochs
          the tested weights were trained for), ``metrics`` (every scalar
          ``test_*`` value in ``trainer.callback_metrics``: ``_err``/``_acc`` in percent, ``test_ece`` a
          fraction, ``test_nll`` in nats; ``test_nll_ts``/``test_ece_ts`` the same after temperature scaling),
          ``temperature`` (the T of `ImageClassifier.temperature`, fitted on the validation split, or ``null``)
          and ``temperature_note`` (how it was fitted, or why not, e.g. no validation split held out from the
          test split), ``per_class_acc`` (percent, ``null`` for an absent class),
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
    LightningModule it writes the metrics and identity only. A test of a checkpoint takes the identity of the
    run that trained it (kept in the checkpoint under `crl_lightning.runs.CHECKPOINT_KEY` by this callback), so
    ``crl compare`` neither mistakes it for a rerun of that run nor for another experiment. Under
    ``fast_dev_run`` it writes nothing (as Lightning then writes no logs or checkpoints), so smoke runs never end
    up in a ``crl compare`` table.

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
        self._fit_run: dict[str, Any] | None = None  # the identity of the run this trainer fits

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_run = {**run_identity(trainer, pl_module), "run_dir": str(run_dir(trainer))}

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._fit_run is not None:
            epochs = trainer.fit_loop.epoch_progress.current.processed  # complete epochs, also at an epoch's end
            checkpoint[CHECKPOINT_KEY] = {**self._fit_run, "epochs": epochs}

    def _identity(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The record's identity: this fit's, the checkpoint's training run's, or (neither) this test's own."""
        ckpt_path = trainer.ckpt_path
        trained = checkpoint_run(ckpt_path) if ckpt_path else None
        fit = self._fit_run
        if fit is not None and (trained is None or trained.get("run_dir") == fit["run_dir"]):
            identity = {**fit, "command": "fit", "epochs": trainer.fit_loop.epoch_progress.current.processed,
                        "trained_by": None}
        elif trained is not None:
            identity = {**trained, "command": "test",
                        "trained_by": {"run_dir": trained.get("run_dir"), "ckpt_path": str(ckpt_path)}}
        else:  # untrained weights, or a checkpoint that does not say which run trained it
            identity = {**run_identity(trainer, pl_module), "command": "test", "epochs": None if ckpt_path else 0,
                        "trained_by": {"run_dir": None, "ckpt_path": ckpt_path}}
        identity.pop("run_dir", None)
        return identity

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
        names_of_classes = class_names(trainer, confusion.shape[0]) if confusion is not None else None
        if confusion is not None:
            names = names_of_classes or [str(c) for c in range(confusion.shape[0])]
            text = io.StringIO()
            csv.writer(text, lineterminator="\n").writerows(
                [[CONFUSION_CORNER, *names]] + [[names[i], *row] for i, row in enumerate(confusion.tolist())])
            write_text_atomic(out / "confusion_matrix.csv", text.getvalue())
            files["confusion_matrix"] = "confusion_matrix.csv"
        if self.figures and results:
            from crl_lightning.figures import save_test_figures

            paths = save_test_figures(results, out / "figures", class_names=names_of_classes)
            files["figures"] = {key: str(path.relative_to(out)) for key, path in paths.items()}
            self._log_to_wandb(trainer, paths, results.get("per_class_acc"), names_of_classes)
        record = {
            "format": METRICS_FORMAT,
            "created": utc_now(),
            **self._identity(trainer, pl_module),
            "metrics": metrics,
            "temperature": getattr(pl_module, "temperature", None),
            "temperature_note": getattr(pl_module, "temperature_note", None) or "not fitted: the model fits none",
            "per_class_acc": results.get("per_class_acc"),
            "class_names": names_of_classes,
            "num_samples": int(confusion.sum()) if confusion is not None else None,
            "ckpt_path": trainer.ckpt_path,
            "files": files,
            "config": resolved_config(trainer),
        }
        self.last_path = write_json(out / METRICS_FILENAME, record)

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
