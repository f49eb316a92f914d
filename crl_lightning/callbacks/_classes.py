"""Class names of a trainer's data, for the files the callbacks write."""

from __future__ import annotations

from typing import Any

from crl_lightning.runs import first_loader

__all__ = ["class_names"]


def class_names(trainer: Any, num_classes: int) -> list[str] | None:
    """Class names from the DataModule (``class_names``/``classes``) or the test dataset (``classes``)."""
    dataset = first_loader(trainer, "dataset")
    candidates = [trainer.datamodule, dataset, getattr(dataset, "dataset", None)]
    for obj in candidates:
        for attr in ("class_names", "classes"):
            names = getattr(obj, attr, None)
            if isinstance(names, list | tuple) and len(names) == num_classes:
                return [str(n) for n in names]
    return None
