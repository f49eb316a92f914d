"""crl_lightning: Competing Ratio Loss (CRL) for image classification with PyTorch Lightning.

Importing the package (or `crl_lightning.losses`) imports torch and nothing heavier: the names below are
loaded on first use (PEP 562), so ``from crl_lightning import CompetingRatioLoss`` needs no Lightning,
torchvision, matplotlib, scipy, scikit-learn or timm, and ``crl_lightning.ImageClassifier`` imports Lightning
only when it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from crl_lightning.classifier import ImageClassifier
    from crl_lightning.losses import CompetingRatioLoss, competing_ratio_loss, create_criterion, list_criteria
    from crl_lightning.models import create_backbone

__version__ = "0.1.0"

#: Each name of ``__all__`` -> the module that defines it, imported by `__getattr__` on first access.
_LAZY = {
    "CompetingRatioLoss": "crl_lightning.losses",
    "ImageClassifier": "crl_lightning.classifier",
    "competing_ratio_loss": "crl_lightning.losses",
    "create_backbone": "crl_lightning.models",
    "create_criterion": "crl_lightning.losses",
    "list_criteria": "crl_lightning.losses",
}

__all__ = [
    "CompetingRatioLoss",
    "ImageClassifier",
    "competing_ratio_loss",
    "create_backbone",
    "create_criterion",
    "list_criteria",
]


def __getattr__(name: str) -> Any:
    """Import a public name of `_LAZY` from its module on first access (PEP 562) and keep it here.

    Raises:
        AttributeError: ``name`` is neither a public name nor a submodule.
    """
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
