"""Backbones: the paper's CIFAR/SVHN networks plus timm and torchvision models."""

from crl_lightning.models.cifar import PreActResNet, list_backbones, register_backbone
from crl_lightning.models.factory import create_backbone, find_cached_weights, load_local_weights

__all__ = [
    "PreActResNet",
    "create_backbone",
    "find_cached_weights",
    "list_backbones",
    "load_local_weights",
    "register_backbone",
]
