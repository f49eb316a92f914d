"""Thin ``nn.Module`` wrappers over `crl_lightning.losses.functional`, registered by name."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crl_lightning.losses import functional as LF
from crl_lightning.losses.registry import register_criterion

__all__ = [
    "CompetingRatioLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "LabelSmoothingCrossEntropy",
    "Poly1CrossEntropyLoss",
]


class _WeightedCriterion(nn.Module):
    """Holds an optional per-class ``weight`` as a non-persistent float32 buffer (moves with ``.to``)."""

    weight: Tensor | None

    def __init__(self, weight: list[float] | Tensor | None = None) -> None:
        super().__init__()
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=torch.float32)
            if weight.ndim != 1:
                raise ValueError(f"weight: expected a 1-D list of per-class weights, got shape {tuple(weight.shape)}")
        self.register_buffer("weight", weight, persistent=False)


@register_criterion("crl")
class CompetingRatioLoss(_WeightedCriterion):
    r"""Competing Ratio Loss, paper Eq. 16: ``CE(z, c) + beta * log(alpha + 1 - p_c)``.

    A drop-in for ``nn.CrossEntropyLoss`` (same shapes and options). See
    `crl_lightning.losses.functional.competing_ratio_loss` for the options, the stable float32 computation
    and the true gradient ``(p - onehot(c)) * (1 + beta * p_c / (alpha + 1 - p_c))`` (the paper's Eq. 17
    has a sign error).

    Args:
        alpha: ``>= 0``, paper default 1.5 (Table I sweeps 1, 1.5, 2).
        beta: ``>= 0``, paper default 1.0 (Table I sweeps 0 .. 1); 0 gives cross-entropy.
        weight: optional per-class weights, length C (kept float32 under autocast).
        ignore_index: target value to ignore.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        label_smoothing: eps in [0, 1].
        fused: use the fused path where the options allow it (see `competing_ratio_loss`); ``False``
            selects the reference implementation.

    Shape:
        - logits: (N, C) or (N, C, d1, ..., dk), e.g. (N, C, H, W) for segmentation; any float dtype.
        - target: (N) or (N, d1, ..., dk) integer class indices, or probabilities of the logits' shape.
        - output: scalar float32 (float64 for float64 logits), or the target's shape (N, d1, ..., dk)
          with ``reduction="none"``.

    Raises:
        ValueError: ``alpha`` or ``beta`` negative or not finite, an unknown ``reduction`` or
            ``label_smoothing`` outside [0, 1] (at construction), and bad inputs (at call).
        TypeError: a non-integer ``ignore_index`` (at construction).

    Examples:
        >>> criterion = CompetingRatioLoss(alpha=1.5, beta=1.0)
        >>> logits = torch.zeros(4, 10, requires_grad=True)
        >>> loss = criterion(logits, torch.tensor([0, 3, 9, 1]))
        >>> round(loss.item(), 4)  # p_c = 1/10: log 10 + log(1.5 + 0.9)
        3.1781
        >>> loss.backward()

        Segmentation, (N, C, H, W) logits and (N, H, W) masks; void pixels (255) get no gradient:

        >>> criterion = CompetingRatioLoss(ignore_index=255)
        >>> logits = torch.zeros(2, 21, 8, 8, requires_grad=True)
        >>> mask = torch.full((2, 8, 8), 255)
        >>> mask[:, 2:6, 2:6] = 7
        >>> criterion(logits, mask).backward()
        >>> logits.grad[:, :, 0, 0].abs().sum().item(), logits.grad[:, :, 3, 3].abs().sum().item() > 0
        (0.0, True)
    """

    def __init__(
        self,
        alpha: float = 1.5,
        beta: float = 1.0,
        weight: list[float] | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        fused: bool = True,
    ) -> None:
        super().__init__(weight)
        LF._check_alpha_beta(alpha, beta)
        LF._check_options(reduction, label_smoothing, ignore_index)
        self.alpha, self.beta = float(alpha), float(beta)
        self.ignore_index, self.reduction = ignore_index, reduction
        self.label_smoothing, self.fused = float(label_smoothing), fused

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return LF.competing_ratio_loss(
            logits, target, self.alpha, self.beta, self.weight, self.ignore_index,
            self.reduction, self.label_smoothing, self.fused,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, reduction={self.reduction!r}"


@register_criterion("ce")
class CrossEntropyLoss(nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` computed in float32 (like CRL), with a list-typed ``weight`` for configs.

    Args:
        weight: optional per-class weights, length C.
        ignore_index: target value to ignore.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
        label_smoothing: eps in [0, 1].

    Shape:
        logits (N, C) or (N, C, d1, ..., dk), any float dtype; target (N) or (N, d1, ..., dk) indices, or
        probabilities of the logits' shape.
    """

    def __init__(
        self,
        weight: list[float] | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        w = None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        super().__init__(weight=w, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        x = LF._compute_dtype(logits)
        weight = self.weight if self.weight is None else self.weight.to(x.dtype)  # float64 logits: float64 weight
        return F.cross_entropy(x, target, weight, ignore_index=self.ignore_index, reduction=self.reduction,
                               label_smoothing=self.label_smoothing)


@register_criterion("ls_ce")
class LabelSmoothingCrossEntropy(CrossEntropyLoss):
    """Label-smoothing cross-entropy (Szegedy et al. 2016), eps = 0.1 by default.

    Args:
        label_smoothing: eps in [0, 1].
        weight: optional per-class weights, length C.
        ignore_index: target value to ignore.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
    """

    def __init__(
        self,
        label_smoothing: float = 0.1,
        weight: list[float] | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)


@register_criterion("focal")
class FocalLoss(_WeightedCriterion):
    """Multi-class focal loss (Lin et al. 2017): ``-alpha_c (1 - p_c)^gamma log p_c``.

    Args:
        gamma: focusing parameter ``>= 0`` (paper default 2); 0 gives cross-entropy.
        alpha: optional per-class weights ``alpha_c``, length C.
        ignore_index: target value to ignore.
        reduction: ``"none"``, ``"mean"`` (divides by the number of non-ignored elements, not by the summed
            ``alpha_c``; see `crl_lightning.losses.functional.focal_loss`) or ``"sum"``.

    Shape:
        logits (N, C) or (N, C, d1, ..., dk), any float dtype; target (N) or (N, d1, ..., dk) indices; output
        scalar, or the target's shape with ``reduction="none"``.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: list[float] | None = None,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__(alpha)
        if not gamma >= 0:
            raise ValueError(f"gamma: expected gamma >= 0, got {gamma}")
        self.gamma, self.ignore_index, self.reduction = float(gamma), ignore_index, reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return LF.focal_loss(logits, target, self.gamma, self.weight, self.ignore_index, self.reduction)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, reduction={self.reduction!r}"


@register_criterion("poly1")
class Poly1CrossEntropyLoss(nn.Module):
    """Poly-1 loss (Leng et al., ICLR 2022): ``CE + epsilon * (1 - p_c)``.

    Args:
        epsilon: coefficient of the first polynomial term (default 1.0).
        ignore_index: target value to ignore.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Shape:
        logits (N, C) or (N, C, d1, ..., dk), any float dtype; target (N) or (N, d1, ..., dk) indices; output
        scalar, or the target's shape with ``reduction="none"``.
    """

    def __init__(self, epsilon: float = 1.0, ignore_index: int = -100, reduction: str = "mean") -> None:
        super().__init__()
        self.epsilon, self.ignore_index, self.reduction = float(epsilon), ignore_index, reduction

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return LF.poly1_cross_entropy(logits, target, self.epsilon, self.ignore_index, self.reduction)

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon}, reduction={self.reduction!r}"
