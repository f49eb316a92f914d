"""`History`: ``history.csv``, one row of epoch metrics per training epoch."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import lightning as L
from torch import Tensor
from typing_extensions import override

from crl_lightning.runs import HISTORY_FILENAME, run_dir, write_text_atomic

__all__ = ["History"]


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
