"""`Augmentation`: the augmentation policy of a DataModule, one typed and validated config group."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from torchvision.transforms import v2

__all__ = ["Augmentation"]


@dataclass(frozen=True)
class Augmentation:
    """What augments the training data: per-image policies, batch MixUp/CutMix, and where the crop + flip runs.

    Every DataModule takes one (``augment``, in a config ``data.init_args.augment.mixup_alpha``); the default
    adds nothing to the dataset's own training transform (e.g. the CIFAR pad-4 crop + flip). It builds the
    per-image training transform (`image_transform`) and the batch mix step (`batch_mix`).

    Args:
        trivial_augment: add torchvision's ``v2.TrivialAugmentWide`` to the per-image training transform
            (on the decoded image, before the dataset's own crop/flip and normalisation).
        rand_augment: add ``v2.RandAugment()`` (2 ops, magnitude 9) there instead.
        random_erasing: probability in [0, 1] of ``v2.RandomErasing`` on the normalised training image (0: off).
        mixup_alpha: MixUp (``v2.MixUp``) of whole training batches with Beta(alpha, alpha) weights; 0: off.
        cutmix_alpha: CutMix (``v2.CutMix``) likewise; with both, each batch gets one of the two, at random.
            MixUp/CutMix turn the (N,) targets into (N, C) soft targets, which CE and CRL's soft-target form
            take; the training top-1 error is then not logged (there is no single correct class).
        on_device: for in-memory uint8 data (`TensorImageDataset`): no per-image transform; the loaders
            yield uint8 batches, and the DataModule's ``on_after_batch_transfer`` crops and flips whole
            training batches on the device they were moved to (its ``batch_augment``) and normalises every
            batch (`crl_lightning.data.batch_transforms`; same distribution as the per-image pipeline).

    Raises:
        ValueError: a field of the wrong type, both ``trivial_augment`` and ``rand_augment``,
            ``random_erasing`` outside [0, 1], a negative MixUp/CutMix alpha, or a per-image augmentation
            with ``on_device``; the message names the field, what was expected and what was given.

    Example:
        >>> mix = Augmentation(mixup_alpha=0.2).batch_mix(num_classes=10)
        >>> type(mix).__name__, mix.alpha
        ('MixUp', 0.2)
        >>> Augmentation(random_erasing=2.0)
        Traceback (most recent call last):
        ...
        ValueError: augment.random_erasing: expected a probability in [0, 1], got 2.0
    """

    trivial_augment: bool = False
    rand_augment: bool = False
    random_erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    on_device: bool = False

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type == "bool" and not isinstance(value, bool):
                raise ValueError(f"augment.{field.name}: expected true or false, got {value!r}")
            if field.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"augment.{field.name}: expected a number, got {value!r}")
        if self.trivial_augment and self.rand_augment:
            raise ValueError("augment.trivial_augment/rand_augment: expected at most one of them, got both")
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ValueError(f"augment.random_erasing: expected a probability in [0, 1], got {self.random_erasing}")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name}: expected >= 0 (0: off), got {getattr(self, name)}")
        if self.on_device and self.per_image:
            raise ValueError("augment.on_device: expected no per-image augmentation (trivial_augment, rand_augment, "
                             "random_erasing), which runs on single images: set on_device false")

    @property
    def per_image(self) -> bool:
        """True when a per-image augmentation (TrivialAugment, RandAugment or RandomErasing) is on."""
        return self.trivial_augment or self.rand_augment or self.random_erasing > 0

    def image_transform(self, train_transform: Callable | None) -> Callable | None:
        """The per-image training transform: the policy, then ``train_transform``, then RandomErasing.

        Args:
            train_transform: the dataset's own training transform (crop, flip, to a normalised float
                tensor), or ``None``.

        Returns:
            ``train_transform`` itself when no per-image augmentation is on, else a ``v2.Compose`` of
            ``ToImage``, the policy, ``train_transform`` and ``RandomErasing`` (those that are on).
        """
        if not self.per_image:
            return train_transform
        policy = v2.TrivialAugmentWide() if self.trivial_augment else v2.RandAugment() if self.rand_augment else None
        erasing = v2.RandomErasing(self.random_erasing) if self.random_erasing > 0 else None
        steps = [v2.ToImage(), policy, train_transform, erasing]
        return v2.Compose([t for t in steps if t is not None])

    def batch_mix(self, num_classes: int) -> Callable | None:
        """The MixUp/CutMix (torchvision v2) of training batches, or ``None`` when both are off.

        Args:
            num_classes: classes of the (N,) integer targets, the width of the (N, C) soft targets it returns.
        """
        mixes = [cls(alpha=alpha, num_classes=num_classes)
                 for cls, alpha in ((v2.MixUp, self.mixup_alpha), (v2.CutMix, self.cutmix_alpha)) if alpha > 0]
        return None if not mixes else mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)
