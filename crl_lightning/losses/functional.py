"""Competing Ratio Loss (CRL) and baseline criteria as pure functions.

CRL (Zhang et al., "Competing Ratio Loss for Discriminative Multi-class Image Classification",
paper Eq. 16) for logits ``z`` with the classes along dim 1, integer target ``c`` and ``p = softmax(z)``::

    CRL(z, c) = -log p_c + beta * log(alpha + 1 - p_c)
              = CE(z, c) + beta * log(alpha + sum_{k != c} p_k)

Its true gradient (checked against autograd in float64 in ``tests/test_losses.py``) is::

    dCRL/dz = (p - onehot(c)) * w,     w = 1 + beta * p_c / (alpha + 1 - p_c)

so CRL is cross-entropy re-weighted per sample by ``w`` in ``[1, 1 + beta / alpha]``.
**The paper's Eq. 17 has a sign error**: it writes ``(1 - beta * p_c / (alpha + 1 - p_c)) * p_j`` for
``j != c``; the correct factor is ``(1 + ...)``. This module implements the true gradient.

Every criterion here takes ``F.cross_entropy``'s shapes: logits (N, C) or (N, C, d1, ..., dk) (segmentation
maps, sequences), a hard target (N) or (N, d1, ..., dk), and works along dim 1, without moving the class
dimension or reshaping the logits; ``reduction="none"`` returns (N, d1, ..., dk).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ALPHA0_FLOOR",
    "FUSED_MIN_ALPHA",
    "competing_ratio_loss",
    "focal_loss",
    "poly1_cross_entropy",
]

_REDUCTIONS = ("none", "mean", "sum")
_INDEX_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8)
_REAL = (int, float)
#: Floor of ``1 - p_c`` when ``alpha == 0`` (the loss is unbounded below there). It equals the
#: float32 machine epsilon, close to the authors' clamp of ``p`` to ``1 - 1e-7``.
ALPHA0_FLOOR = float(torch.finfo(torch.float32).eps)
#: Smallest ``alpha`` that takes the fused path. The fused path gets ``1 - p_c`` from cross-entropy's
#: float32 ``-log p_c``, which near ``p_c = 1`` is off by a few float32 ulps of 1 (~3e-7 with 10 classes),
#: and ``log(alpha + 1 - p_c)`` and its gradient inherit that error divided by ``alpha``: measured against
#: float64, at most 3.4e-4 (nats, and per gradient entry) at this alpha, 4e-6 at alpha = 0.1, where the
#: reference is within 2e-6. Below it the reference path computes ``1 - p_c`` from the other classes' mass.
FUSED_MIN_ALPHA = 1e-3


def _check_inputs(logits: Tensor, target: Tensor, weight: Tensor | None) -> bool:
    """Check ``F.cross_entropy``'s input contract (shared by all criteria); return True for soft targets.

    Args:
        logits: (N, C) or (N, C, d1, ..., dk) floating-point scores, classes along dim 1.
        target: (N) or (N, d1, ..., dk) integer class indices, or float probabilities of the logits' shape.
        weight: None or (C,) per-class weights.

    Raises:
        ValueError: a shape that breaks the contract above.
        TypeError: non-float logits, a target that is not a tensor, or neither integer nor float.
    """
    if not isinstance(logits, Tensor) or logits.ndim < 2:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits: expected a tensor of shape (N, C) or (N, C, d1, ..., dk), got {got}")
    if not logits.is_floating_point():
        raise TypeError(f"logits: expected a floating-point tensor, got dtype {logits.dtype}")
    if not isinstance(target, Tensor):
        raise TypeError(f"target: expected a tensor, got {type(target).__name__}")
    num_classes = logits.shape[1]
    if weight is not None and (weight.ndim != 1 or weight.numel() != num_classes):
        raise ValueError(
            f"weight: expected a 1-D tensor of {num_classes} per-class weights, got shape {tuple(weight.shape)}"
        )
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(
                f"target: expected soft targets of the logits' shape {tuple(logits.shape)}, got {tuple(target.shape)}"
            )
        return True
    if target.dtype not in _INDEX_DTYPES:
        raise TypeError(f"target: expected class indices (integer dtype) or soft targets (float), got {target.dtype}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"target: expected class indices of shape {expected}, got {tuple(target.shape)}")
    return False


def _as_weight(weight: Tensor | list[float] | None, logits: Tensor) -> Tensor | None:
    """A per-class weight given as a list becomes a float32 tensor on the logits' device."""
    if weight is None or isinstance(weight, Tensor):
        return weight
    device = logits.device if isinstance(logits, Tensor) else None
    return torch.as_tensor(weight, dtype=torch.float32, device=device)


def _check_range(target: Tensor, num_classes: int, ignore_index: int) -> bool:
    """Raise if a (non-ignored) class index is outside ``[0, num_classes)``; return True when none is ignored.

    Checked for CPU tensors in eager mode only: on an accelerator the check would force a host sync
    every step, so there the indexing kernel's own bounds assert reports it (and False is returned); traced
    or ``torch.func``-batched targets have no values to read.
    """
    if _is_traced(target) or target.device.type != "cpu" or target.numel() == 0:
        return False
    low, high = (int(v) for v in torch.aminmax(target))
    if 0 <= low and high < num_classes:  # fast path: one reduction
        return not 0 <= ignore_index < num_classes or not bool((target == ignore_index).any())
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        value = int(target[bad][0])
        raise ValueError(
            f"target: expected class indices in [0, {num_classes}) or ignore_index={ignore_index}, got {value}"
        )
    return False


def _check_alpha_beta(alpha: float, beta: float) -> None:
    if not (isinstance(alpha, _REAL) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha: expected a finite alpha >= 0 (paper default 1.5; 0 is the authors' alpha_0 runs), "
                         f"got {alpha!r}")
    if not (isinstance(beta, _REAL) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta: expected a finite beta >= 0 (paper default 1.0; 0 gives cross-entropy), got {beta!r}")


def _check_options(reduction: str, label_smoothing: float, ignore_index: int) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1], got {label_smoothing}")
    if not isinstance(ignore_index, int) or not -(2**63) <= ignore_index < 2**63:
        raise TypeError(f"ignore_index: expected a 64-bit integer (default -100), got {ignore_index!r}")


def _compute_dtype(logits: Tensor) -> Tensor:
    """Logits in the dtype the criteria compute in: float64 stays, anything else becomes float32."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _reduce(loss: Tensor, denom: Tensor | float, reduction: str) -> Tensor:
    """Reduce per-element losses; ``mean`` divides by ``denom`` and is 0 (not NaN) when ``denom == 0``."""
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if isinstance(denom, Tensor):  # a zero total weight (every target ignored) gives 0; a negative one divides
        denom = torch.where(denom != 0, denom, torch.ones_like(denom))
    return total / denom


def _is_traced(tensor: Tensor) -> bool:
    """True inside ``torch.compile`` or ``torch.jit.trace``, or for a ``torch.func``-transformed tensor."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch._C._functorch.is_functorch_wrapped_tensor(tensor)
    )


def _crl_fused(
    x: Tensor, target: Tensor, alpha: float, beta: float, weight: Tensor | None, ignore_index: int,
    reduction: str, all_valid: bool,
) -> Tensor:
    """Hard-target CRL for ``alpha >= FUSED_MIN_ALPHA`` as a per-element function of PyTorch's cross-entropy.

    With ``u = -log p_c`` from ``F.cross_entropy(..., reduction="none")`` and ``1 - p_c = -expm1(-u)``,
    ``CRL = g(u) = u + beta * log(alpha - expm1(-u))`` and ``g'(u) = 1 + beta * p_c / (alpha + 1 - p_c) = w``,
    so autograd's chain rule gives exactly the closed-form gradient ``(p - onehot(c)) * w``. The softmax
    is computed once, by the cross-entropy kernel, which stores its log-softmax as plain cross-entropy
    does; every other tensor has the target's shape (N, d1, ..., dk). Higher-order gradients are exact.
    """
    nll = F.cross_entropy(x, target.long(), ignore_index=ignore_index, reduction="none")  # 0 where ignored
    loss = torch.add(nll, torch.rsub(torch.expm1(nll.neg()), alpha).log(), alpha=beta)
    if all_valid and weight is None:
        return loss if reduction == "none" else loss.sum() if reduction == "sum" else loss.mean()
    valid = target != ignore_index
    sample_w = valid.to(x.dtype)
    if weight is not None:
        sample_w = sample_w * weight.to(x.dtype)[torch.where(valid, target.long(), 0)]
    return _reduce(loss * sample_w, sample_w.sum(), reduction)


def _log1m_softmax(x: Tensor, logp: Tensor) -> Tensor:
    """``log(1 - p_k)`` for every class ``k`` along dim 1, accurate where ``p_k`` rounds to 1 in float32.

    ``-expm1(log p_k)`` is exact for ``p_k <= 1/2``. Only the class of the largest logit can exceed 1/2;
    for it, ``1 - p_k`` is the other classes' mass, ``logsumexp_{j != k}(z_j) - logsumexp_j(z_j)``. The clamp
    keeps the entry that is replaced finite, so that its zero gradient stays zero rather than NaN.
    """
    log_q = torch.log(-torch.expm1(logp.clamp_max(-math.log(2.0))))
    top = x.argmax(dim=1, keepdim=True)
    others = torch.logsumexp(x.scatter(1, top, float("-inf")), dim=1, keepdim=True)
    return log_q.scatter(1, top, others - torch.logsumexp(x, dim=1, keepdim=True))


def _crl_composite(
    logits: Tensor,
    target: Tensor,
    alpha: float,
    beta: float,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    soft: bool,
) -> Tensor:
    """CRL with plain autograd ops on the log-softmax: the reference (see `competing_ratio_loss`)."""
    x = _compute_dtype(logits)
    logp = F.log_softmax(x, dim=1)
    log_q = _log1m_softmax(x, logp)  # log(1 - p_k), from the other classes' mass where p_k is near 1
    log_term = torch.log(alpha + log_q.exp()) if alpha > 0 else log_q.clamp_min(math.log(ALPHA0_FLOOR))
    per_class = beta * log_term - logp  # the loss as if the target were k, for every class k
    num_classes = x.shape[1]
    w_cls = None if weight is None else weight.to(x.dtype).reshape(num_classes, *(1,) * (x.ndim - 2))

    if soft:
        t = target.to(x.dtype)
        if label_smoothing > 0:
            t = t * (1.0 - label_smoothing) + label_smoothing / num_classes
        loss = ((t if w_cls is None else t * w_cls) * per_class).sum(dim=1)
        return _reduce(loss, float(loss.numel()), reduction)

    valid = target != ignore_index
    tgt = torch.where(valid, target, 0).long()
    sample_w = valid.to(x.dtype) if weight is None else valid.to(x.dtype) * weight.to(x.dtype)[tgt]
    loss = per_class.gather(1, tgt.unsqueeze(1)).squeeze(1) * sample_w
    if label_smoothing > 0:
        smooth = (per_class if w_cls is None else per_class * w_cls).sum(dim=1) * valid.to(x.dtype) / num_classes
        loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth
    return _reduce(loss, sample_w.sum(), reduction)


def competing_ratio_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 1.5,
    beta: float = 1.0,
    weight: Tensor | list[float] | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    fused: bool = True,
) -> Tensor:
    r"""Competing Ratio Loss, paper Eq. 16: ``CE(z, c) + beta * log(alpha + 1 - p_c)``.

    A drop-in for ``F.cross_entropy``: same shapes, (N, C) or (N, C, d1, ..., dk) logits with the classes
    along dim 1 (e.g. (N, C, H, W) segmentation maps), and the same ``weight`` / ``ignore_index`` /
    ``reduction`` / ``label_smoothing`` semantics; ``beta = 0`` gives ``F.cross_entropy`` exactly. Computed
    in float32 whatever the logits' dtype (float16/bfloat16 logits under autocast are upcast), in a stable
    form: no softmax-then-log, finite for any finite logits. The loss is bounded below by
    ``beta * log(alpha)``.

    The gradient is ``(p - onehot(c)) * (1 + beta * p_c / (alpha + 1 - p_c))``. The paper's Eq. 17 prints
    ``1 - beta * ...`` for the wrong classes: that is a sign error, corrected here.

    Options:
        * ``weight``: per-class weights ``w``; each element's loss is multiplied by ``w[c]`` and
          ``"mean"`` divides by the sum of ``w[c]`` over non-ignored elements, as in ``F.cross_entropy``.
        * ``ignore_index``: elements with this target contribute 0 and get zero gradient. A batch in
          which every element is ignored gives 0 with ``"mean"`` (``F.cross_entropy`` gives NaN), so a
          fully masked batch cannot poison the weights.
        * ``label_smoothing`` (eps): the hard target becomes ``(1 - eps) * onehot + eps / C`` and both
          terms use it, i.e. ``(1 - eps) * CRL_c + eps / C * sum_k CRL_k`` (with ``CRL_k`` the loss as if
          the target were ``k``); the ``"mean"`` denominator is as for hard targets.
        * Soft targets (this project's extension, for mixup/cutmix): ``target`` of the logits' shape,
          probabilities along dim 1: ``sum_k t_k * (-log p_k + beta * log(alpha + 1 - p_k))``, i.e.
          ``CE_soft + beta * sum_k t_k log(alpha + 1 - p_k)``; ``"mean"`` divides by the number of
          elements, N * d1 * ... * dk, as ``F.cross_entropy`` does with probabilities.
        * Small ``alpha``: where ``p_c`` rounds to 1 in float32, ``1 - p_c`` is taken from the other
          classes' probability mass (a log-sum-exp over them), so value and gradient stay accurate; e.g.
          logits ``[20, 0]``, ``alpha = 1e-8`` give -18.2333, not the -18.4207 of a rounded ``p_c = 1``.
          ``alpha = 0`` (the authors' ``alpha_0`` runs) makes ``log(1 - p_c)`` unbounded below, so
          ``1 - p_c`` is also floored at `ALPHA0_FLOOR` (float32 eps, close to the authors' clamp).

    Two implementations, with the same values and gradients (tested against each other and float64):

        * fused (the default for hard targets without label smoothing and ``alpha >= FUSED_MIN_ALPHA``,
          the paper's setting): CRL is a per-element function of cross-entropy,
          ``g(u) = u + beta * log(alpha - expm1(-u))`` with ``u = -log p_c``, so it is
          ``F.cross_entropy(..., reduction="none")`` followed by a few elementwise ops on the target-shaped
          result, whose chain rule multiplies cross-entropy's gradient by ``w = g'(u)``. It stores what
          cross-entropy stores, works on every device, under ``torch.compile`` (which fuses the
          elementwise ops on a GPU), ``torch.func`` and forward-mode AD, with exact higher-order gradients.
        * reference (``fused=False``, and soft targets, label smoothing, ``alpha < FUSED_MIN_ALPHA``): plain
          autograd ops on the log-softmax, with ``1 - p_k`` from the other classes' mass where ``p_k``
          is near 1.

    Args:
        logits: (N, C) or (N, C, d1, ..., dk) float16/bfloat16/float32/float64 unnormalised scores.
        target: (N) or (N, d1, ..., dk) integer class indices in ``[0, C)`` (or ``ignore_index``), or float
            probabilities of the logits' shape (soft targets).
        alpha: ``alpha >= 0``; paper default 1.5. Keeps the log argument positive.
        beta: ``beta >= 0``; paper default 1.0. Weight of the competing-ratio term.
        weight: optional (C,) per-class weights, a tensor (any float dtype) or a list; used in float32.
        ignore_index: target value to ignore (hard targets only).
        reduction: ``"none"`` (per element, the target's shape (N, d1, ..., dk)), ``"mean"`` or ``"sum"``.
        label_smoothing: eps in ``[0, 1]``.
        fused: use the fused path (above) when the options allow it; ``False`` forces the reference.

    Returns:
        float32 tensor (float64 for float64 logits), in nats: a scalar, or (N, d1, ..., dk) with
        ``reduction="none"``.

    Raises:
        ValueError: bad shapes, ``alpha`` or ``beta`` negative or not finite, unknown reduction, label_smoothing
            outside [0, 1], or a class index outside ``[0, C)`` that is not ``ignore_index`` (checked on
            the CPU; on a GPU the indexing kernel asserts).
        TypeError: non-float logits, a target that is neither integer nor float, or a non-integer
            ``ignore_index``.

    Examples:
        Classification, (N, C) logits and (N,) class indices; equal logits give ``p_c = 1/C``:

        >>> logits = torch.zeros(2, 3, requires_grad=True)
        >>> loss = competing_ratio_loss(logits, torch.tensor([0, 2]), alpha=1.5, beta=1.0)
        >>> round(loss.item(), 4)  # log 3 + log(1.5 + 2/3)
        1.8718
        >>> loss.backward()
        >>> logits.grad  # (p - onehot(c)) * w / N, w = 1 + (1/3) / (1.5 + 2/3)
        tensor([[-0.3846,  0.1923,  0.1923],
                [ 0.1923,  0.1923, -0.3846]])

        Segmentation, (N, C, H, W) logits and (N, H, W) masks whose void pixels are 255:

        >>> logits = torch.zeros(2, 3, 4, 4)
        >>> mask = torch.zeros(2, 4, 4, dtype=torch.long)
        >>> mask[:, 0] = 255  # the top row of each image is void
        >>> per_pixel = competing_ratio_loss(logits, mask, ignore_index=255, reduction="none")
        >>> per_pixel.shape, per_pixel[0, 0, 0].item(), round(per_pixel[0, 1, 0].item(), 4)
        (torch.Size([2, 4, 4]), 0.0, 1.8718)
    """
    _check_alpha_beta(alpha, beta)
    _check_options(reduction, label_smoothing, ignore_index)
    weight = _as_weight(weight, logits)
    if _check_inputs(logits, target, weight):
        return _crl_composite(logits, target, alpha, beta, weight, ignore_index, reduction, label_smoothing, True)
    all_valid = _check_range(target, logits.shape[1], ignore_index)
    if fused and label_smoothing == 0.0 and alpha >= FUSED_MIN_ALPHA:
        return _crl_fused(_compute_dtype(logits), target, float(alpha), float(beta), weight, ignore_index,
                          reduction, all_valid)
    return _crl_composite(logits, target, alpha, beta, weight, ignore_index, reduction, label_smoothing, False)


def _hard_target_logp(
    logits: Tensor, target: Tensor, ignore_index: int, reduction: str, weight: Tensor | None, name: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Checks for hard-target criteria; returns logits in compute dtype, valid mask, safe target, log p_c.

    All but the first have the target's shape (N, d1, ..., dk).
    """
    _check_options(reduction, 0.0, ignore_index)
    if _check_inputs(logits, target, weight):
        raise ValueError(f"target: {name} expected integer class indices of shape "
                         f"{(logits.shape[0], *logits.shape[2:])}, got soft targets of dtype {target.dtype}")
    _check_range(target, logits.shape[1], ignore_index)
    x = _compute_dtype(logits)
    valid = target != ignore_index
    tgt = torch.where(valid, target, 0).long()
    logp_c = F.log_softmax(x, dim=1).gather(1, tgt.unsqueeze(1)).squeeze(1)
    return x, valid, tgt, logp_c


def focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: Tensor | list[float] | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    r"""Multi-class focal loss (Lin et al. 2017, Eq. 5): ``-alpha_c * (1 - p_c)^gamma * log p_c``.

    The gradient flows through the focal factor ``(1 - p_c)^gamma`` (it is not detached). ``gamma = 0``
    with no ``alpha`` equals ``F.cross_entropy``. ``"mean"`` divides by the number of non-ignored
    elements, with or without ``alpha``: as in Lin et al. (normalised by the number of assigned anchors) and
    ``torchvision.ops.sigmoid_focal_loss``, ``alpha_c`` re-weights elements but is not a normaliser, so with
    ``gamma = 0`` and ``alpha`` this is ``F.cross_entropy(weight=alpha, reduction="sum")`` divided by that
    count (``F.cross_entropy``'s ``"mean"`` would divide by the summed ``alpha_c``).

    Args:
        logits: (N, C) or (N, C, d1, ..., dk) float logits; computed in float32 (float64 kept).
        target: (N) or (N, d1, ..., dk) integer class indices.
        gamma: focusing parameter ``>= 0``.
        alpha: optional (C,) per-class weights ``alpha_c`` (tensor or list).
        ignore_index: target value whose elements contribute 0.
        reduction: ``"none"`` (the target's shape), ``"mean"`` or ``"sum"``.

    Returns:
        The loss in nats (scalar, or the target's shape for ``"none"``).

    Raises:
        ValueError: ``gamma < 0``, bad shapes, soft targets, unknown reduction, or out-of-range class indices.
        TypeError: non-float logits, a non-integer target or ``ignore_index``.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]], requires_grad=True)
        >>> loss = focal_loss(logits, torch.tensor([0, 1]), gamma=2.0, reduction="none")
        >>> loss  # p_c = 1/2: (1/2)^2 log 2; p_c = 0.1192: 0.8808^2 * 2.1269
        tensor([0.1733, 1.6501], grad_fn=<MulBackward0>)
        >>> loss.sum().backward()
    """
    if not gamma >= 0:
        raise ValueError(f"gamma: expected gamma >= 0, got {gamma}")
    alpha = _as_weight(alpha, logits)
    x, valid, tgt, logp_c = _hard_target_logp(logits, target, ignore_index, reduction, alpha, "focal_loss")
    q = -torch.expm1(logp_c)  # 1 - p_c
    loss = -(q.clamp_min(0.0) ** gamma) * logp_c * valid.to(x.dtype)
    if alpha is not None:
        loss = loss * alpha.to(x.dtype)[tgt]
    return _reduce(loss, valid.sum().to(x.dtype), reduction)


def poly1_cross_entropy(
    logits: Tensor,
    target: Tensor,
    epsilon: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    r"""Poly-1 loss (Leng et al., PolyLoss, ICLR 2022, Eq. 3): ``CE + epsilon * (1 - p_c)``.

    Args:
        logits: (N, C) or (N, C, d1, ..., dk) float logits; computed in float32 (float64 kept).
        target: (N) or (N, d1, ..., dk) integer class indices.
        epsilon: coefficient of the first polynomial term (paper default 1.0).
        ignore_index: target value whose elements contribute 0.
        reduction: ``"none"`` (the target's shape), ``"mean"`` (over non-ignored elements) or ``"sum"``.

    Returns:
        The loss in nats (scalar, or the target's shape for ``"none"``).

    Raises:
        ValueError: bad shapes, soft targets, unknown reduction, or out-of-range class indices.
        TypeError: non-float logits, a non-integer target or ``ignore_index``.

    Example:
        >>> logits = torch.zeros(1, 4, 2, requires_grad=True)  # (N, C, L): a sequence of two positions
        >>> loss = poly1_cross_entropy(logits, torch.tensor([[3, 0]]), epsilon=1.0)
        >>> round(loss.item(), 4)  # log 4 + (1 - 1/4)
        2.1363
        >>> loss.backward()
    """
    x, valid, _, logp_c = _hard_target_logp(logits, target, ignore_index, reduction, None, "poly1_cross_entropy")
    loss = (-logp_c - epsilon * torch.expm1(logp_c)) * valid.to(x.dtype)
    return _reduce(loss, valid.sum().to(x.dtype), reduction)
