"""One option suite over every registered criterion (``list_criteria()``), against references written here.

Each criterion's reference is its documented per-sample formula in float64, with plain ops on
``log p = z - logsumexp(z)``; the reduction is written out here too: ``sum`` adds the per-sample
losses, ``mean`` divides by the documented denominator (the summed class weights of the kept rows for
the cross-entropy family and CRL, as ``F.cross_entropy``; the number of kept rows for focal and Poly-1).
Options: ``ignore_index`` (the default -100, a class index used as the ignore value, and a batch where
every row is ignored), the per-class weight where the criterion has one, and every reduction; values
and gradients (float64) are compared, for the registry (`create_criterion`) and the functional forms.
Only (N, C) logits are used here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch

from crl_lightning.losses import (
    competing_ratio_loss,
    create_criterion,
    focal_loss,
    list_criteria,
    poly1_cross_entropy,
)

C = 5
#: A per-class weight with distinct values, so that a weight applied to the wrong class shows.
WEIGHT = [0.5, 2.0, 1.0, 3.0, 0.25]


def log_probs(z: torch.Tensor) -> torch.Tensor:
    return z - torch.logsumexp(z, dim=1, keepdim=True)


# ----- per-sample references: (log p of one row, its class c, options) -> loss of that row ----------
def ce_row(lp, c, w=None, label_smoothing=0.0):
    w = torch.ones(C, dtype=lp.dtype) if w is None else w
    hard = -w[c] * lp[c]
    smooth = -(w * lp).sum() / C
    return (1 - label_smoothing) * hard + label_smoothing * smooth


def crl_row(lp, c, w=None, alpha=1.5, beta=1.0):
    """Paper Eq. 16, CE(z, c) + beta * log(alpha + 1 - p_c), times the class weight."""
    wc = 1.0 if w is None else w[c]
    return wc * (-lp[c] + beta * torch.log(alpha + 1 - torch.exp(lp[c])))


def focal_row(lp, c, w=None, gamma=2.0):
    """Lin et al. 2017: -alpha_c (1 - p_c)^gamma log p_c."""
    ac = 1.0 if w is None else w[c]
    return -ac * (1 - torch.exp(lp[c])) ** gamma * lp[c]


def poly1_row(lp, c, w=None, epsilon=1.0):
    """Leng et al. 2022: CE + epsilon (1 - p_c)."""
    return -lp[c] + epsilon * (1 - torch.exp(lp[c]))


@dataclass
class Spec:
    row: Callable  # per-sample reference
    kwargs: dict  # constructor arguments of the registered criterion (non-default where it has any)
    ref_kwargs: dict  # the same values for the reference
    weight_arg: str | None  # name of the per-class weight argument, None when it has none
    mean_by_weight: bool  # mean divides by the summed weights of kept rows (else: by the number of kept rows)
    all_ignored_mean: float  # documented "mean" of a batch where every row is ignored
    functional: Callable | None = None  # the functional form, called with (logits, target, **fn_kwargs)
    fn_kwargs: dict = field(default_factory=dict)


SPECS = {
    "ce": Spec(ce_row, {}, {}, "weight", True, math.nan),  # torch's cross_entropy: 0 / 0
    "ls_ce": Spec(ce_row, {}, {"label_smoothing": 0.1}, "weight", True, math.nan),
    "crl": Spec(crl_row, {"alpha": 1.0, "beta": 0.5}, {"alpha": 1.0, "beta": 0.5}, "weight", True, 0.0,
                competing_ratio_loss, {"alpha": 1.0, "beta": 0.5}),
    "focal": Spec(focal_row, {"gamma": 2.0}, {"gamma": 2.0}, "alpha", False, 0.0, focal_loss, {"gamma": 2.0}),
    "poly1": Spec(poly1_row, {"epsilon": 2.0}, {"epsilon": 2.0}, None, False, 0.0,
                  poly1_cross_entropy, {"epsilon": 2.0}),
}
NAMES = sorted(SPECS)


def reference(name: str, logits, target, weight=None, ignore_index=-100, reduction="mean"):
    """The reference loss in float64, row by row."""
    spec = SPECS[name]
    lp = log_probs(logits.double())
    w = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    rows, denom = [], 0.0
    for i, c in enumerate(target.tolist()):
        if c == ignore_index:
            rows.append(lp.new_zeros(()))
            continue
        rows.append(spec.row(lp[i], c, w, **spec.ref_kwargs))
        denom = denom + (w[c] if (w is not None and spec.mean_by_weight) else 1.0)
    losses = torch.stack(rows)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / denom


def build(name: str, weight=None, ignore_index=-100, reduction="mean", **extra):
    spec = SPECS[name]
    kwargs = dict(spec.kwargs, ignore_index=ignore_index, reduction=reduction, **extra)
    if weight is not None:
        kwargs[spec.weight_arg] = weight
    return create_criterion(name, **kwargs)


def batch(seed: int = 0, n: int = 7, dtype=torch.float64):
    """Logits with a spread of confidences (one row near-certain) and targets covering every class."""
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, C, generator=g)).to(dtype)
    logits[0, 2] += 12.0  # p_c close to 1 for the first row
    target = torch.tensor([2, 0, 1, 3, 4, 1, 3][:n])
    return logits, target


def assert_value_and_grad(name, logits, target, weight=None, ignore_index=-100, reduction="mean", rtol=1e-9,
                          atol=1e-10, **extra):
    x = logits.clone().requires_grad_(True)
    out = build(name, weight, ignore_index, reduction, **extra)(x, target)
    x_ref = logits.double().clone().requires_grad_(True)
    want = reference(name, x_ref, target, weight, ignore_index, reduction)
    assert out.shape == want.shape
    torch.testing.assert_close(out.double(), want.detach(), rtol=rtol, atol=atol)
    out.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(x.grad.double(), x_ref.grad, rtol=rtol * 10, atol=atol * 10)
    return out


# ----- the suite covers every registered criterion ---------------------------------------------------
def test_every_registered_criterion_has_a_reference():
    assert set(list_criteria()) == set(SPECS), (
        f"add a reference for {sorted(set(list_criteria()) - set(SPECS))} to SPECS in {__file__}"
    )


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("name", NAMES)
def test_each_reduction(name, reduction):
    logits, target = batch()
    assert_value_and_grad(name, logits, target, reduction=reduction)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("name", NAMES)
def test_ignored_rows_count_for_nothing(name, reduction):
    """Rows with the ignore value add 0 and leave the ``mean`` denominator (3 of 7 rows kept)."""
    logits, target = batch(seed=1)
    target = torch.tensor([2, -100, 1, -100, 4, -100, -100])
    out = assert_value_and_grad(name, logits, target, reduction=reduction)
    if reduction == "mean":  # the mean over the 3 kept rows, not over all 7
        kept = reference(name, logits[[0, 2, 4]], target[[0, 2, 4]], reduction="mean")
        torch.testing.assert_close(out.double(), kept, rtol=1e-9, atol=0)
    if reduction == "none":
        assert out[[1, 3, 5, 6]].tolist() == [0.0] * 4


@pytest.mark.parametrize("name", NAMES)
def test_ignore_index_may_be_a_class_index(name):
    logits, target = batch(seed=2)  # rows of class 1 (two of them) are ignored
    for reduction in ("none", "mean", "sum"):
        assert_value_and_grad(name, logits, target, ignore_index=1, reduction=reduction)


@pytest.mark.parametrize("name", NAMES)
def test_all_ignored_batch(name):
    logits, _ = batch(seed=3)
    target = torch.full((7,), -100)
    x = logits.clone().requires_grad_(True)
    none = build(name, reduction="none")(x, target)
    assert none.shape == (7,) and none.tolist() == [0.0] * 7
    total = build(name, reduction="sum")(x, target)
    assert float(total.detach()) == 0.0
    (none.sum() + total).backward()
    assert torch.count_nonzero(x.grad) == 0
    mean = build(name, reduction="mean")(logits, target)
    expected = SPECS[name].all_ignored_mean
    if math.isnan(expected):
        assert torch.isnan(mean)  # what torch.nn.CrossEntropyLoss gives (0 / 0)
    else:
        assert float(mean) == expected
        x.grad = None
        build(name, reduction="mean")(x, target).backward()
        assert torch.count_nonzero(x.grad) == 0


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("name", [n for n in NAMES if SPECS[n].weight_arg is not None])
def test_per_class_weight(name, reduction):
    logits, target = batch(seed=4)
    assert_value_and_grad(name, logits, target, weight=WEIGHT, reduction=reduction)


@pytest.mark.parametrize("name", [n for n in NAMES if SPECS[n].weight_arg is not None])
def test_per_class_weight_with_ignored_rows(name):
    logits, _ = batch(seed=5)
    target = torch.tensor([3, -100, 1, 0, -100, 3, 4])
    for reduction in ("none", "mean", "sum"):
        assert_value_and_grad(name, logits, target, weight=WEIGHT, reduction=reduction)


def test_mean_denominators_differ_as_documented():
    """Weighted ``mean``: CE and CRL divide by the kept rows' summed class weights, focal by their number."""
    logits, _ = batch(seed=6)
    target = torch.tensor([3, -100, 3, 3, -100, 3, 3])  # five kept rows of class 3 (weight 3)
    for name in ("ce", "crl", "focal"):
        per_row = build(name, WEIGHT, reduction="none")(logits, target)
        mean = build(name, WEIGHT, reduction="mean")(logits, target)
        denom = 5 * 3.0 if SPECS[name].mean_by_weight else 5
        torch.testing.assert_close(mean, per_row.sum() / denom, rtol=1e-12, atol=0)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_crl_plain_autograd_path_has_the_same_options(reduction):
    """``fused=False`` (CRL's reference path, also taken with label smoothing or soft targets)."""
    logits, _ = batch(seed=9)
    target = torch.tensor([3, -100, 1, 0, -100, 3, 4])
    for weight in (None, WEIGHT):
        assert_value_and_grad("crl", logits, target, weight, reduction=reduction, fused=False)
    out = build("crl", reduction=reduction, fused=False)(logits, torch.full((7,), -100))
    assert out.abs().sum() == 0


@pytest.mark.parametrize("name", NAMES)
def test_float32_logits(name):
    """The training dtype: float32 logits (CRL's compiled CPU kernel path) against the float64 reference."""
    logits, target = batch(seed=7, dtype=torch.float32)
    target = torch.tensor([2, -100, 1, 3, 4, -100, 3])
    for reduction in ("none", "mean", "sum"):
        out = build(name, reduction=reduction)(logits, target)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), reference(name, logits, target, reduction=reduction),
                                   rtol=2e-5, atol=2e-5)


# ----- the functional forms ---------------------------------------------------------------------------
FUNCTIONAL = [n for n in NAMES if SPECS[n].functional is not None]


@pytest.mark.parametrize("name", FUNCTIONAL)
def test_functional_form_with_ignored_rows_and_weight(name):
    spec = SPECS[name]
    logits, _ = batch(seed=8)
    target = torch.tensor([0, 4, -100, 2, -100, 1, 3])
    for reduction in ("none", "mean", "sum"):
        for weight in (None, WEIGHT) if spec.weight_arg else (None,):
            kwargs = dict(spec.fn_kwargs, ignore_index=-100, reduction=reduction)
            if weight is not None:
                kwargs[spec.weight_arg] = torch.tensor(weight, dtype=torch.float64)
            out = spec.functional(logits, target, **kwargs)
            want = reference(name, logits, target, weight, reduction=reduction)
            torch.testing.assert_close(out, want, rtol=1e-9, atol=1e-10)
    empty = spec.functional(logits, torch.full((7,), -100), **spec.fn_kwargs)
    assert float(empty) == spec.all_ignored_mean


def test_known_values_of_the_references():
    """The references themselves, at uniform logits (p_c = 1/C = 0.2): closed-form numbers."""
    logits, target = torch.zeros(1, C, dtype=torch.float64), torch.tensor([0])
    log5 = math.log(5)
    expected = {
        "ce": log5,
        "ls_ce": log5,  # every class has the same -log p
        "crl": log5 + 0.5 * math.log(1.0 + 1 - 0.2),  # alpha 1, beta 0.5
        "focal": 0.8**2 * log5,
        "poly1": log5 + 2.0 * 0.8,
    }
    for name in NAMES:
        assert float(reference(name, logits, target)) == pytest.approx(expected[name], rel=1e-12)
        assert float(build(name)(logits, target)) == pytest.approx(expected[name], rel=1e-12)
