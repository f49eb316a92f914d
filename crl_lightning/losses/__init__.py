"""Criteria: Competing Ratio Loss and the baselines it is compared against (paper Table III)."""

from crl_lightning.losses.functional import competing_ratio_loss, focal_loss, poly1_cross_entropy
from crl_lightning.losses.modules import (
    CompetingRatioLoss,
    CrossEntropyLoss,
    FocalLoss,
    LabelSmoothingCrossEntropy,
    Poly1CrossEntropyLoss,
)
from crl_lightning.losses.registry import create_criterion, list_criteria, register_criterion

__all__ = [
    "CompetingRatioLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LabelSmoothingCrossEntropy",
    "Poly1CrossEntropyLoss",
    "competing_ratio_loss",
    "create_criterion",
    "focal_loss",
    "list_criteria",
    "poly1_cross_entropy",
    "register_criterion",
]
