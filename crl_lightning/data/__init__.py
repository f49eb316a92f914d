"""LightningDataModules for the paper's datasets and the offline digits demo."""

from crl_lightning.data.adience import AdienceDataModule, AdienceFaces
from crl_lightning.data.augment import Augmentation
from crl_lightning.data.base import ImageDataModule
from crl_lightning.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from crl_lightning.data.cub import CUB2011, CUB200DataModule
from crl_lightning.data.datasets import CorruptImageError, ImageFileDataset, TensorImageDataset, TransformedSubset
from crl_lightning.data.digits import DigitsDataModule
from crl_lightning.data.files import ImageFileDataModule
from crl_lightning.data.folder import ImageFolderDataModule
from crl_lightning.data.imagenet import ImageNetDataModule
from crl_lightning.data.splits import (
    check_subject_exclusive,
    class_balanced_subset,
    subject_kfold,
    subject_train_val_split,
)
from crl_lightning.data.svhn import SVHNDataModule, load_svhn

__all__ = [
    "AdienceDataModule",
    "AdienceFaces",
    "Augmentation",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CUB200DataModule",
    "CUB2011",
    "CorruptImageError",
    "DigitsDataModule",
    "ImageDataModule",
    "ImageFileDataModule",
    "ImageFileDataset",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "SVHNDataModule",
    "TensorImageDataset",
    "TransformedSubset",
    "check_subject_exclusive",
    "class_balanced_subset",
    "load_svhn",
    "subject_kfold",
    "subject_train_val_split",
]
