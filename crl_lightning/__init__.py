"""crl_lightning: Competing Ratio Loss (CRL) for image classification with PyTorch Lightning."""

from crl_lightning.classifier import ImageClassifier
from crl_lightning.losses import CompetingRatioLoss, competing_ratio_loss, create_criterion, list_criteria
from crl_lightning.models import create_backbone

__version__ = "0.1.0"

__all__ = [
    "CompetingRatioLoss",
    "ImageClassifier",
    "competing_ratio_loss",
    "create_backbone",
    "create_criterion",
    "list_criteria",
]
