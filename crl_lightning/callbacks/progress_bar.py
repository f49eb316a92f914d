"""`CompactProgressBar`: Lightning's progress bar with only what the model puts on it."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar
from typing_extensions import override

__all__ = ["CompactProgressBar"]


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
