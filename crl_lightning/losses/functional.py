"""Competing Ratio Loss (CRL) and baseline criteria as pure functions.

CRL (Zhang et al., "Competing Ratio Loss for Discriminative Multi-class Image Classification",
paper Eq. 16) for logits ``z`` of shape (N, C), integer target ``c`` and ``p = softmax(z)``::

    CRL(z, c) = -log p_c + beta * log(alpha + 1 - p_c)
              = CE(z, c) + beta * log(alpha + sum_{k != c} p_k)

Its true gradient (checked against autograd in float64 in ``tests/test_losses.py``) is::

    dCRL/dz = (p - onehot(c)) * w,     w = 1 + beta * p_c / (alpha + 1 - p_c)

so CRL is cross-entropy re-weighted per sample by ``w`` in ``[1, 1 + beta / alpha]``.
**The paper's Eq. 17 has a sign error**: it writes ``(1 - beta * p_c / (alpha + 1 - p_c)) * p_j`` for
``j != c``; the correct factor is ``(1 + ...)``. This module implements the true gradient.
"""

from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor

from crl_lightning.losses.cpu_kernel import load_cpu_kernel

__all__ = [
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


def _check_common(logits: Tensor, target: Tensor, reduction: str, weight: Tensor | None) -> bool:
    """Validate shapes/dtypes shared by all criteria; return True for soft (probability) targets."""
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits: expected a tensor of shape (N, C), got {got}")
    if not logits.is_floating_point():
        raise TypeError(f"logits: expected a floating-point tensor, got dtype {logits.dtype}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction: expected one of {_REDUCTIONS}, got {reduction!r}")
    n, c = logits.shape
    if weight is not None and (weight.ndim != 1 or weight.numel() != c):
        raise ValueError(f"weight: expected a 1-D tensor of {c} per-class weights, got shape {tuple(weight.shape)}")
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(
                f"target: soft targets must have the logits' shape {tuple(logits.shape)}, got {tuple(target.shape)}"
            )
        return True
    if target.dtype not in _INDEX_DTYPES:
        raise TypeError(f"target: expected class indices (integer dtype) or soft targets (float), got {target.dtype}")
    if target.shape != (n,):
        raise ValueError(f"target: expected class indices of shape ({n},), got {tuple(target.shape)}")
    return False


def _check_range(target: Tensor, num_classes: int, ignore_index: int) -> bool:
    """Raise if a (non-ignored) class index is outside ``[0, num_classes)``; return True when no row is ignored.

    Checked for CPU tensors in eager mode only: on an accelerator the check would force a host sync
    every step, so there the indexing kernel's own bounds assert reports it (and False is returned); traced
    or ``torch.func``-batched targets have no values to read.
    """
    if target.device.type != "cpu" or target.numel() == 0 or _is_traced(target):
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
    """Reduce per-sample losses; ``mean`` divides by ``denom`` and is 0 (not NaN) when ``denom == 0``."""
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    if isinstance(denom, Tensor):
        denom = torch.where(denom > 0, denom, torch.ones_like(denom))
    return total / denom


def _is_traced(tensor: Tensor) -> bool:
    """True inside ``torch.compile`` or ``torch.jit.trace``, or for a ``torch.func``-transformed tensor."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch._C._functorch.is_functorch_wrapped_tensor(tensor)
    )


def _cpu_kernel_for(logits: Tensor, target: Tensor, weight: Tensor | None):
    """The compiled CPU kernel module if it applies to these inputs and is available, else None.

    It applies to plain eager CPU tensors. Traced code (``torch.compile``, ``torch.jit.trace``), tensor
    subclasses, ``torch.func`` transforms, forward-mode AD (dual tensors) and a ``weight`` that requires grad
    take the PyTorch-ops path, which all of those see through.
    """
    if (
        type(logits) is not Tensor
        or not logits.is_cpu
        or _is_traced(logits)
        or torch._C._functorch.is_functorch_wrapped_tensor(target)
        or fwAD._current_level >= 0  # inside forward-mode AD's dual_level(): dual tensors may come in
        or (weight is not None and weight.requires_grad)
    ):
        return None
    return load_cpu_kernel()


def _crl_fused(
    x: Tensor, target: Tensor, alpha: float, beta: float, weight: Tensor | None, ignore_index: int,
    reduction: str, all_valid: bool,
) -> Tensor:
    """Hard-target CRL for ``alpha > 0`` as a per-row function of PyTorch's cross-entropy (PyTorch ops).

    With ``u = -log p_c`` from ``F.cross_entropy(..., reduction="none")`` and ``1 - p_c = -expm1(-u)``,
    ``CRL = g(u) = u + beta * log(alpha - expm1(-u))`` and ``g'(u) = 1 + beta * p_c / (alpha + 1 - p_c) = w``,
    so autograd's chain rule gives exactly the closed-form gradient ``(p - onehot(c)) * w``. The softmax
    is computed once, by the cross-entropy kernel, which stores its (N, C) log-softmax as plain
    cross-entropy does; every other tensor is (N,)-sized. Higher-order gradients are exact.
    """
    nll = F.cross_entropy(x, target.long(), ignore_index=ignore_index, reduction="none")  # 0 for ignored rows
    loss = torch.add(nll, torch.rsub(torch.expm1(nll.neg()), alpha).log(), alpha=beta)
    if all_valid and weight is None:
        return loss if reduction == "none" else loss.sum() if reduction == "sum" else loss.mean()
    valid = target != ignore_index
    sample_w = valid.to(x.dtype)
    if weight is not None:
        sample_w = sample_w * weight.to(x.dtype)[torch.where(valid, target.long(), 0)]
    return _reduce(loss * sample_w, sample_w.sum(), reduction)


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
    """CRL with plain autograd ops; handles soft targets and label smoothing (see `competing_ratio_loss`)."""
    x = _compute_dtype(logits)
    logp = F.log_softmax(x, dim=1)
    n, num_classes = x.shape
    w_cls = None if weight is None else weight.to(x.dtype)

    def log_term(lp: Tensor) -> Tensor:
        q = -torch.expm1(lp)  # 1 - p, accurate near p = 1
        if alpha > 0:
            return torch.log(alpha + q.clamp_min(0.0))
        return torch.log(q.clamp_min(ALPHA0_FLOOR))

    def per_class(lp: Tensor) -> Tensor:  # per-class CRL terms: -log p_k + beta * log(alpha + 1 - p_k)
        return -lp + beta * log_term(lp)

    if soft:
        t = target.to(x.dtype)
        if label_smoothing > 0:
            t = t * (1.0 - label_smoothing) + label_smoothing / num_classes
        tw = t if w_cls is None else t * w_cls
        loss = (tw * per_class(logp)).sum(dim=1)
        return _reduce(loss, float(n), reduction)

    valid = target != ignore_index
    tgt = torch.where(valid, target, torch.zeros_like(target)).long()
    sample_w = valid.to(x.dtype) if w_cls is None else valid.to(x.dtype) * w_cls[tgt]
    logp_c = logp.gather(1, tgt.unsqueeze(1)).squeeze(1)
    if alpha > 0:
        loss = per_class(logp_c)
    else:  # log(1 - p_c) exactly, as a log-sum-exp over the other classes (p_c may round to 1)
        log_q = torch.logsumexp(x.scatter(1, tgt.unsqueeze(1), float("-inf")), dim=1) - torch.logsumexp(x, dim=1)
        loss = -logp_c + beta * log_q.clamp_min(math.log(ALPHA0_FLOOR))
    loss = loss * sample_w
    if label_smoothing > 0:
        all_terms = per_class(logp)
        if w_cls is not None:
            all_terms = all_terms * w_cls
        smooth = all_terms.sum(dim=1) * valid.to(x.dtype) / num_classes
        loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth
    return _reduce(loss, sample_w.sum(), reduction)


def competing_ratio_loss(
    logits: Tensor,
    target: Tensor,
    alpha: float = 1.5,
    beta: float = 1.0,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    fused: bool = True,
) -> Tensor:
    r"""Competing Ratio Loss, paper Eq. 16: ``CE(z, c) + beta * log(alpha + 1 - p_c)``.

    Computed in float32 whatever the logits' dtype (float16/bfloat16 logits under autocast are upcast),
    in a stable form: no softmax-then-log, finite for any finite logits. ``beta = 0`` gives
    ``F.cross_entropy`` exactly, with the same ``weight`` / ``ignore_index`` / ``reduction`` /
    ``label_smoothing`` semantics. The loss is bounded below by ``beta * log(alpha)``.

    The gradient is ``(p - onehot(c)) * (1 + beta * p_c / (alpha + 1 - p_c))``. The paper's Eq. 17 prints
    ``1 - beta * ...`` for the wrong classes: that is a sign error, corrected here.

    Options:
        * ``weight``: per-class weights ``w``; each sample's loss is multiplied by ``w[c]`` and
          ``"mean"`` divides by the sum of ``w[c]`` over non-ignored samples, as in ``F.cross_entropy``.
        * ``ignore_index``: rows with this target contribute 0 and are never gathered. A batch in
          which every row is ignored gives 0 with ``"mean"`` (``F.cross_entropy`` gives NaN), so a fully
          masked batch cannot poison the weights.
        * ``label_smoothing`` (eps): the hard target becomes ``(1 - eps) * onehot + eps / C`` and both
          terms use it, i.e. ``(1 - eps) * CRL_c + eps / C * sum_k CRL_k`` (with ``CRL_k`` the loss as if
          the target were ``k``); the ``mean`` denominator is as for hard targets.
        * Soft targets (this project's extension, for mixup/cutmix): ``target`` of shape (N, C), rows
          summing to 1: ``sum_k t_k * (-log p_k + beta * log(alpha + 1 - p_k))``, i.e.
          ``CE_soft + beta * sum_k t_k log(alpha + 1 - p_k)``; ``"mean"`` divides by N as in
          ``F.cross_entropy`` with probabilities.
        * ``alpha = 0`` (the authors' ``alpha_0`` runs): the term ``log(1 - p_c)`` is unbounded below,
          so ``1 - p_c`` is computed from the other classes' probability mass (exact when ``p_c``
          rounds to 1) and floored at `ALPHA0_FLOOR` (float32 eps, close to the authors' clamp).

    Hard targets without label smoothing and ``alpha > 0`` use a fused path that computes the softmax
    once, stores what cross-entropy stores (the (N, C) log-softmax and the target) and gives the
    closed-form gradient ``(p - onehot(c)) * w``, with exact higher-order gradients:

        * eager CPU tensors: a compiled kernel (``csrc/fused_crl_cpu.cpp``, built on first use, see
          `crl_lightning.losses.cpu_kernel`): ATen's log-softmax and log-softmax-backward kernels with
          the per-row terms in one C++ loop, so CRL costs what ``F.cross_entropy`` costs;
        * elsewhere (CUDA, ``torch.compile``, ``torch.jit.trace``, ``torch.func``, forward-mode AD, a
          ``weight`` that requires grad, or if the kernel cannot be built): PyTorch ops, as CRL is a
          per-row function of cross-entropy,
          ``g(u) = u + beta * log(alpha - expm1(-u))`` with ``u = -log p_c``:
          ``F.cross_entropy(..., reduction="none")`` followed by a few (N,)-sized ops whose chain rule
          multiplies the cross-entropy gradient by ``w = g'(u)``.

    Other cases, or ``fused=False``, use the reference: plain autograd ops on the (N, C) log-softmax.

    Args:
        logits: (N, C) float16/bfloat16/float32/float64 unnormalised scores.
        target: (N,) integer class indices in ``[0, C)`` (or ``ignore_index``), or (N, C) float
            probabilities (soft targets).
        alpha: ``alpha >= 0``; paper default 1.5. Keeps the log argument positive.
        beta: ``beta >= 0``; paper default 1.0. Weight of the competing-ratio term.
        weight: optional (C,) per-class weights, a tensor (any float dtype) or a list; used in float32.
        ignore_index: target value to ignore (hard targets only).
        reduction: ``"none"`` (per-sample, shape (N,)), ``"mean"`` or ``"sum"`` (scalars).
        label_smoothing: eps in ``[0, 1]``.
        fused: use the fused path (above) when the options allow it; ``False`` forces the reference.

    Returns:
        float32 tensor (float64 for float64 logits): scalar, or (N,) with ``reduction="none"``.

    Raises:
        ValueError: bad shapes, ``alpha`` or ``beta`` negative or not finite, unknown reduction, label_smoothing
            outside [0, 1], or a class index outside ``[0, C)`` that is not ``ignore_index``.
        TypeError: non-float logits, a target that is neither integer nor float, or a non-integer
            ``ignore_index``.

    Example:
        >>> logits = torch.randn(8, 10, requires_grad=True)
        >>> target = torch.randint(0, 10, (8,))
        >>> loss = competing_ratio_loss(logits, target, alpha=1.5, beta=1.0)
        >>> loss.backward()
    """
    _check_alpha_beta(alpha, beta)
    _check_options(reduction, label_smoothing, ignore_index)
    if weight is not None and not isinstance(weight, Tensor):
        weight = torch.as_tensor(weight, dtype=torch.float32, device=logits.device)
    soft = _check_common(logits, target, reduction, weight)
    if fused and not soft and label_smoothing == 0.0 and alpha > 0:
        kernel = _cpu_kernel_for(logits, target, weight)
        if kernel is not None:  # casts to the compute dtype and checks the target range itself
            return kernel.fused_crl(logits, target, weight, float(alpha), float(beta), ignore_index,
                                    _REDUCTIONS.index(reduction))
        all_valid = _check_range(target, logits.shape[1], ignore_index)
        return _crl_fused(_compute_dtype(logits), target, float(alpha), float(beta), weight, ignore_index,
                          reduction, all_valid)
    if not soft:
        _check_range(target, logits.shape[1], ignore_index)
    return _crl_composite(logits, target, alpha, beta, weight, ignore_index, reduction, label_smoothing, soft)


def _hard_target_logp(
    logits: Tensor, target: Tensor, ignore_index: int, reduction: str, weight: Tensor | None, name: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Checks for hard-target criteria; returns logits in compute dtype, valid mask, safe target, log p_c."""
    if _check_common(logits, target, reduction, weight):
        raise ValueError(f"target: {name} expects (N,) class indices, got soft (N, C) targets")
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
    alpha: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    r"""Multi-class focal loss (Lin et al. 2017, Eq. 5): ``-alpha_c * (1 - p_c)^gamma * log p_c``.

    The gradient flows through the focal factor ``(1 - p_c)^gamma`` (it is not detached). ``gamma = 0``
    with no ``alpha`` equals ``F.cross_entropy``. ``"mean"`` divides by the number of non-ignored rows.

    Args:
        logits: (N, C) float logits; computed in float32 (float64 kept).
        target: (N,) integer class indices.
        gamma: focusing parameter ``>= 0``.
        alpha: optional (C,) per-class weights ``alpha_c``.
        ignore_index: target value whose rows contribute 0.
        reduction: ``"none"`` (N,), ``"mean"`` or ``"sum"``.

    Returns:
        The loss (scalar, or (N,) for ``"none"``).

    Raises:
        ValueError: ``gamma < 0``, bad shapes, soft targets, or out-of-range class indices.
    """
    if not gamma >= 0:
        raise ValueError(f"gamma: expected gamma >= 0, got {gamma}")
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
        logits: (N, C) float logits; computed in float32 (float64 kept).
        target: (N,) integer class indices.
        epsilon: coefficient of the first polynomial term (paper default 1.0).
        ignore_index: target value whose rows contribute 0.
        reduction: ``"none"`` (N,), ``"mean"`` (over non-ignored rows) or ``"sum"``.

    Returns:
        The loss (scalar, or (N,) for ``"none"``).

    Raises:
        ValueError: bad shapes, soft targets, or out-of-range class indices.
    """
    x, valid, _, logp_c = _hard_target_logp(logits, target, ignore_index, reduction, None, "poly1_cross_entropy")
    loss = (-logp_c - epsilon * torch.expm1(logp_c)) * valid.to(x.dtype)
    return _reduce(loss, valid.sum().to(x.dtype), reduction)
