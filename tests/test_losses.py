"""Tests of the criteria: closed-form values, gradients, options, dtypes, registry, parity."""

from __future__ import annotations

import itertools
import math
import os

import pytest
import torch
import torch.nn.functional as F

from crl_lightning.losses import (
    CompetingRatioLoss,
    FocalLoss,
    competing_ratio_loss,
    cpu_kernel,
    create_criterion,
    focal_loss,
    functional,
    list_criteria,
    poly1_cross_entropy,
    register_criterion,
)
from crl_lightning.losses.functional import ALPHA0_FLOOR


@pytest.fixture(params=["kernel", "ops", "reference"])
def fused(request, monkeypatch):
    """The ``fused`` argument for each implementation: compiled CPU kernel, PyTorch-ops fused path, reference."""
    if request.param == "ops":
        monkeypatch.setattr(functional, "load_cpu_kernel", lambda: None)
    elif request.param == "kernel" and cpu_kernel.load_cpu_kernel() is None:
        if os.environ.get(cpu_kernel.ENV_VAR) == "0":
            pytest.skip(f"{cpu_kernel.ENV_VAR}=0 disables the compiled CPU kernel")
        pytest.fail("the fused CRL CPU kernel did not build (see the warning above)")
    return request.param != "reference"


def eq16_reference(logits, target, alpha, beta):
    """Paper Eq. 16 written naively in float64: -log p_c + beta * log(alpha + 1 - p_c), per sample."""
    p = torch.softmax(logits.double(), dim=1)
    p_c = p.gather(1, target.view(-1, 1)).squeeze(1)
    return -torch.log(p_c) + beta * torch.log(alpha + 1 - p_c)


def closed_form_grad(logits, target, alpha, beta):
    """(p - onehot) * (1 + beta * p_c / (alpha + 1 - p_c)), per sample (sum reduction)."""
    p = torch.softmax(logits.double(), dim=1)
    p_c = p.gather(1, target.view(-1, 1))
    w = 1 + beta * p_c / (alpha + 1 - p_c)
    return (p - F.one_hot(target, logits.shape[1]).double()) * w


GRID = list(itertools.product([0.5, 1.0, 1.5, 2.0], [0.0, 0.25, 1.0, 3.0], [2, 10, 100]))


@pytest.mark.parametrize(("alpha", "beta", "num_classes"), GRID)
def test_crl_equals_eq16_float64_reference(alpha, beta, num_classes, fused):
    g = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(32, num_classes, generator=g) * 3
    target = torch.randint(0, num_classes, (32,), generator=g)
    got = competing_ratio_loss(logits, target, alpha, beta, reduction="none", fused=fused)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), eq16_reference(logits, target, alpha, beta), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("alpha", "beta", "num_classes"), GRID)
def test_crl_gradient_equals_closed_form(alpha, beta, num_classes, fused):
    g = torch.Generator().manual_seed(7 + num_classes)
    logits = (torch.randn(16, num_classes, generator=g) * 3).requires_grad_()
    target = torch.randint(0, num_classes, (16,), generator=g)
    competing_ratio_loss(logits, target, alpha, beta, reduction="sum", fused=fused).backward()
    torch.testing.assert_close(logits.grad.double(), closed_form_grad(logits.detach(), target, alpha, beta),
                               rtol=1e-5, atol=1e-6)


def test_paper_eq17_sign_error_is_not_implemented():
    """For j != c the paper's Eq. 17 gives (1 - beta*p_c/(alpha+1-p_c)) * p_j; autograd gives (1 + ...)."""
    logits = torch.tensor([[2.0, 0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0])
    alpha, beta = 1.5, 1.0
    ref = eq16_reference(logits, target, alpha, beta).sum()
    (auto,) = torch.autograd.grad(ref, logits)
    p = torch.softmax(logits.detach(), 1)[0]
    factor = beta * p[0] / (alpha + 1 - p[0])
    torch.testing.assert_close(auto[0, 1], (1 + factor) * p[1])
    assert not torch.isclose(auto[0, 1], (1 - factor) * p[1])
    logits32 = logits.detach().float().requires_grad_()
    competing_ratio_loss(logits32, target, alpha, beta).backward()
    torch.testing.assert_close(logits32.grad.double(), auto, rtol=1e-6, atol=1e-7)


def test_crl_known_value():
    """Two classes, equal logits: p_c = 0.5, CRL = log 2 + log(1.5 + 0.5) = 2 log 2."""
    loss = competing_ratio_loss(torch.zeros(1, 2), torch.tensor([0]), alpha=1.5, beta=1.0)
    assert loss.item() == pytest.approx(2 * math.log(2), abs=1e-6)


def test_crl_bounded_below_by_beta_log_alpha():
    logits = torch.tensor([[50.0, 0.0, 0.0]])
    loss = competing_ratio_loss(logits, torch.tensor([0]), alpha=2.0, beta=0.5)
    assert loss.item() == pytest.approx(0.5 * math.log(2.0), abs=1e-6)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize(
    "options",
    [{}, {"weight": torch.tensor([0.2, 1.0, 3.0, 0.5, 1.5])}, {"ignore_index": 2},
     {"label_smoothing": 0.1}, {"weight": torch.tensor([0.2, 1.0, 3.0, 0.5, 1.5]), "ignore_index": 1,
                                "label_smoothing": 0.2}],
)
def test_beta_zero_equals_cross_entropy(options, reduction, fused):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(12, 5, generator=g) * 2
    target = torch.randint(0, 5, (12,), generator=g)
    got = competing_ratio_loss(logits, target, alpha=1.5, beta=0.0, reduction=reduction, fused=fused, **options)
    want = F.cross_entropy(logits, target, reduction=reduction, **options)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_beta_zero_soft_targets_equal_cross_entropy(reduction):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 4, generator=g)
    soft = torch.softmax(torch.randn(6, 4, generator=g), dim=1)
    weight = torch.tensor([1.0, 2.0, 0.5, 1.0])
    got = competing_ratio_loss(logits, soft, beta=0.0, weight=weight, reduction=reduction, label_smoothing=0.1)
    want = F.cross_entropy(logits, soft, weight=weight, reduction=reduction, label_smoothing=0.1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_weight_as_a_list():
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    torch.testing.assert_close(competing_ratio_loss(logits, target, weight=[1.0, 2.0, 3.0]),
                               competing_ratio_loss(logits, target, weight=torch.tensor([1.0, 2.0, 3.0])))


def test_weighted_ignore_index_hand_computed(fused):
    """Three rows, one ignored; mean divides by the sum of the kept rows' class weights."""
    logits = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    target = torch.tensor([0, -100, 2])
    weight = torch.tensor([2.0, 5.0, 0.5])
    alpha, beta = 1.5, 1.0

    def row(z, c):
        p = math.exp(z[c]) / sum(math.exp(v) for v in z)
        return -math.log(p) + beta * math.log(alpha + 1 - p)

    r0, r2 = row([1.0, 0.0, 0.0], 0), row([0.0, 0.0, 3.0], 2)
    got = competing_ratio_loss(logits, target, alpha, beta, weight=weight, fused=fused)
    assert got.item() == pytest.approx((2.0 * r0 + 0.5 * r2) / 2.5, rel=1e-6)
    none = competing_ratio_loss(logits, target, alpha, beta, weight=weight, reduction="none", fused=fused)
    torch.testing.assert_close(none, torch.tensor([2.0 * r0, 0.0, 0.5 * r2]))


def test_label_smoothing_hand_computed():
    """(1 - eps) * CRL_c + eps / C * sum_k CRL_k, with CRL_k the loss as if the target were k."""
    logits = torch.tensor([[1.0, -1.0, 0.5]])
    eps, alpha, beta = 0.3, 1.5, 1.0
    p = torch.softmax(logits.double(), 1)[0]
    per_k = [-math.log(p[k]) + beta * math.log(alpha + 1 - p[k]) for k in range(3)]
    want = (1 - eps) * per_k[1] + eps / 3 * sum(per_k)
    got = competing_ratio_loss(logits, torch.tensor([1]), alpha, beta, label_smoothing=eps)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_soft_targets_extension_formula():
    logits = torch.tensor([[0.3, -0.2, 1.1, 0.0]])
    t = torch.tensor([[0.5, 0.0, 0.25, 0.25]])
    alpha, beta = 1.0, 0.5
    p = torch.softmax(logits.double(), 1)[0]
    want = sum(t[0, k].item() * (-math.log(p[k]) + beta * math.log(alpha + 1 - p[k])) for k in range(4))
    assert competing_ratio_loss(logits, t, alpha, beta).item() == pytest.approx(want, rel=1e-6)
    # a one-hot soft target equals the hard target
    onehot = F.one_hot(torch.tensor([2]), 4).float()
    torch.testing.assert_close(competing_ratio_loss(logits, onehot, alpha, beta),
                               competing_ratio_loss(logits, torch.tensor([2]), alpha, beta))


def test_all_ignored_batch_is_zero_with_zero_grad(fused):
    logits = torch.randn(4, 3, requires_grad=True)
    target = torch.full((4,), -100)
    loss = competing_ratio_loss(logits, target, fused=fused)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros(4, 3))


def test_fused_equals_reference_values_and_grads(fused):
    g = torch.Generator().manual_seed(11)
    for alpha, beta, reduction, weighted in itertools.product([0.0, 0.5, 1.5], [0.0, 1.0, 2.5],
                                                              ["none", "mean", "sum"], [False, True]):
        logits = torch.randn(20, 7, generator=g) * 4
        target = torch.randint(0, 7, (20,), generator=g)
        target[3] = -100
        weight = torch.rand(7, generator=g) + 0.1 if weighted else None
        outs = []
        for use_fused in (fused, False):
            z = logits.clone().requires_grad_()
            loss = competing_ratio_loss(z, target, alpha, beta, weight=weight, reduction=reduction, fused=use_fused)
            loss.sum().backward()
            outs.append((loss.detach(), z.grad))
        torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-6)


OPTION_COMBOS = [
    dict(zip(("weighted", "ignore", "smoothing", "reduction", "alpha"), combo, strict=True))
    for combo in itertools.product([False, True], [False, True], [0.0, 0.2], ["none", "mean", "sum"], [0.0, 1.5])
]


@pytest.mark.parametrize("combo", OPTION_COMBOS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_gradcheck_float64_every_option(combo, fused):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, 1, 2, 1])
    if combo["ignore"]:
        target[2] = -1
    weight = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64) if combo["weighted"] else None

    def fn(z):
        return competing_ratio_loss(z, target, combo["alpha"], 0.75, weight=weight, ignore_index=-1,
                                    reduction=combo["reduction"], label_smoothing=combo["smoothing"], fused=fused)

    assert torch.autograd.gradcheck(fn, (logits,), eps=1e-6, atol=1e-5)


def test_gradcheck_float64_soft_targets():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    soft = torch.softmax(torch.randn(4, 5, generator=g, dtype=torch.float64), 1)
    assert torch.autograd.gradcheck(lambda z: competing_ratio_loss(z, soft, 1.5, 1.0), (logits,))


@pytest.mark.parametrize("scale", [1e2, 1e4, 1e6])
def test_finite_for_huge_logits(scale, fused):
    logits = torch.tensor([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.5]]) * scale
    for alpha in (0.0, 1e-4, 1.5):
        z = logits.clone().requires_grad_()
        loss = competing_ratio_loss(z, torch.tensor([0, 2]), alpha, 1.0, fused=fused)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_finite_where_naive_is_not(dtype, fused):
    logits = torch.tensor([[10.0, 0.0], [20.0, 0.0]], dtype=dtype)
    target = torch.tensor([0, 1])
    p = torch.softmax(logits, 1)  # naive: softmax in half precision, then log
    p_c = p.gather(1, target[:, None]).squeeze(1)
    naive = -torch.log(p_c) + torch.log(1e-4 + 1 - p_c)
    assert not torch.isfinite(naive).all()
    z = logits.clone().requires_grad_()
    loss = competing_ratio_loss(z, target, alpha=1e-4, beta=1.0, reduction="none", fused=fused)
    loss.sum().backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    assert z.grad.dtype == dtype and torch.isfinite(z.grad).all()
    torch.testing.assert_close(loss.double(), eq16_reference(logits.float(), target, 1e-4, 1.0), rtol=1e-4, atol=1e-3)


def test_alpha_zero_floor():
    """alpha = 0: 1 - p_c comes from the other classes (exact) and is floored at float32 eps."""
    logits = torch.tensor([[5.0, 0.0], [40.0, 0.0]])
    got = competing_ratio_loss(logits, torch.tensor([0, 0]), alpha=0.0, beta=1.0, reduction="none")
    q0 = 1 / (1 + math.exp(5.0))
    assert got[0].item() == pytest.approx(-math.log(1 - q0) + math.log(q0), rel=1e-5)
    assert got[1].item() == pytest.approx(math.log(ALPHA0_FLOOR), rel=1e-5)


def authors_formula(logits, target, alpha_prime, beta):
    """Re-derived from the authors' released ratio.py semantics: softmax, clamp, log((a' - p_c)^b / p_c)."""
    p = torch.softmax(logits.double(), 1).clamp(1e-7, 1 - 1e-7)
    p_c = p.gather(1, target.view(-1, 1)).squeeze(1)
    return torch.log((alpha_prime - p_c) ** beta / p_c).mean()


@pytest.mark.parametrize(("alpha", "beta"), [(0.0, 1.0), (0.5, 1.0), (1.5, 1.0), (1.5, 0.5), (2.0, 0.25)])
def test_parity_with_authors_code(alpha, beta):
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(64, 10, generator=g) * 2  # no probability near the clamp
    target = torch.randint(0, 10, (64,), generator=g)
    ours = competing_ratio_loss(logits, target, alpha, beta)
    theirs = authors_formula(logits, target, alpha + 1, beta)  # their alpha' = paper alpha + 1
    assert abs(ours.item() - theirs.item()) < 1e-5


def test_torch_compile_matches_eager():
    def step(z, t):
        return competing_ratio_loss(z, t, 1.5, 1.0)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    logits = torch.randn(8, 6)
    target = torch.randint(0, 6, (8,))
    z1, z2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    step(z1, target).backward()
    compiled(z2, target).backward()
    torch.testing.assert_close(z1.grad, z2.grad)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_autocast_cpu(dtype):
    linear = torch.nn.Linear(8, 5)
    x, target = torch.randn(4, 8), torch.tensor([0, 1, 2, 3])
    with torch.autocast("cpu", dtype=dtype):
        logits = linear(x)
        assert logits.dtype == dtype
        loss = CompetingRatioLoss(weight=[1.0, 2.0, 1.0, 1.0, 1.0])(logits, target)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(linear.weight.grad).all()


# ----- argument checks ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"alpha": -0.1}, "alpha: expected a finite alpha >= 0"), ({"beta": -1.0}, "beta: expected a finite beta >= 0"),
     ({"alpha": float("nan")}, "alpha"), ({"reduction": "avg"}, "reduction: expected one of"),
     ({"label_smoothing": 1.5}, "label_smoothing")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        competing_ratio_loss(torch.randn(2, 3), torch.tensor([0, 1]), **kwargs)


def test_bad_targets():
    logits = torch.randn(2, 3)
    with pytest.raises(ValueError, match=r"expected class indices in \[0, 3\).*got 3"):
        competing_ratio_loss(logits, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"expected class indices of shape \(2,\), got \(2, 1\)"):
        competing_ratio_loss(logits, torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match="soft targets must have the logits' shape"):
        competing_ratio_loss(logits, torch.rand(2, 4))
    with pytest.raises(TypeError, match="integer dtype"):
        competing_ratio_loss(logits, torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"logits: expected a tensor of shape \(N, C\)"):
        competing_ratio_loss(torch.randn(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="weight: expected a 1-D tensor of 3"):
        competing_ratio_loss(logits, torch.tensor([0, 1]), weight=torch.ones(4))


def test_module_constructor_validates():
    with pytest.raises(ValueError, match="alpha"):
        CompetingRatioLoss(alpha=-1.0)
    with pytest.raises(ValueError, match="beta: expected a finite beta"):
        CompetingRatioLoss(beta=float("inf"))
    with pytest.raises(ValueError, match="reduction"):
        CompetingRatioLoss(reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        CompetingRatioLoss(label_smoothing=2.0)
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1.0)


# ----- baselines ------------------------------------------------------------------------------------
def test_focal_gamma_zero_equals_cross_entropy():
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(10, 4, generator=g), torch.randint(0, 4, (10,), generator=g)
    torch.testing.assert_close(focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target))


def test_focal_value_and_gradient_through_focal_factor():
    logits = torch.tensor([[1.0, 0.0, -1.0]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0])
    p = torch.softmax(logits.detach(), 1)[0, 0].item()
    assert focal_loss(logits, target, gamma=2.0).item() == pytest.approx(-(1 - p) ** 2 * math.log(p))
    assert torch.autograd.gradcheck(lambda z: focal_loss(z, target, gamma=2.0), (logits,))
    (grad,) = torch.autograd.grad(focal_loss(logits, target, gamma=2.0), logits)
    detached = torch.autograd.grad(-(1 - p) ** 2 * F.log_softmax(logits, 1)[0, 0], logits)[0]
    assert not torch.allclose(grad, detached)  # the focal factor is differentiated, not detached


def test_focal_per_class_alpha():
    logits, target = torch.zeros(2, 2), torch.tensor([0, 1])
    got = focal_loss(logits, target, gamma=1.0, alpha=torch.tensor([0.25, 0.75]), reduction="none")
    torch.testing.assert_close(got, torch.tensor([0.25, 0.75]) * 0.5 * math.log(2))


def test_poly1_value():
    logits, target = torch.tensor([[2.0, 0.0]]), torch.tensor([1])
    p = 1 / (1 + math.exp(2.0))
    assert poly1_cross_entropy(logits, target, epsilon=2.0).item() == pytest.approx(-math.log(p) + 2 * (1 - p))


# ----- registry -------------------------------------------------------------------------------------
def test_registry_lists_and_rejects_duplicates():
    assert {"crl", "ce", "focal", "poly1", "ls_ce"} <= set(list_criteria())
    with pytest.raises(ValueError, match="already registered"):
        register_criterion("crl")(CompetingRatioLoss)
    with pytest.raises(KeyError, match="unknown criterion 'nope'"):
        create_criterion("nope")
    crl = create_criterion("crl", alpha=1.0, beta=None)
    assert crl.alpha == 1.0 and crl.beta == 1.0


@pytest.mark.parametrize("name", list_criteria())
def test_every_registered_criterion(name):
    criterion = create_criterion(name)
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(8, 5, generator=g) * 2).requires_grad_()
    target = torch.randint(0, 5, (8,), generator=g)
    loss = criterion(logits, target)
    assert loss.shape == () and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    torch.testing.assert_close(logits.grad.sum(1), torch.zeros(8), atol=1e-6, rtol=0)  # softmax invariance
    criterion.reduction = "none"
    per = criterion(logits.detach(), target)
    assert per.shape == (8,)
    torch.testing.assert_close(per.mean(), loss.detach())
    z16 = logits.detach().to(torch.bfloat16)
    assert torch.isfinite(criterion(z16, target)).all()
    # the module wraps its function: same value as the registry default built twice
    torch.testing.assert_close(create_criterion(name)(logits.detach(), target), loss.detach())


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_second_order_gradients_match_reference(fused, reduction):
    z = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 1, 2, -100, 0])
    weight = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    hessian_terms = []
    for use_fused in (fused, False):
        loss = competing_ratio_loss(z, t, weight=weight, reduction=reduction, fused=use_fused).sum()
        (grad,) = torch.autograd.grad(loss, z, create_graph=True)
        hessian_terms.append(torch.autograd.grad(grad.pow(2).sum(), z)[0])
    torch.testing.assert_close(*hessian_terms)
    kwargs = {"weight": weight, "reduction": reduction, "fused": fused}
    assert torch.autograd.gradgradcheck(lambda x: competing_ratio_loss(x, t, 0.5, 1.5, **kwargs), (z,))


# ----- fused CPU kernel -----------------------------------------------------------------------------
def test_fused_default_on_cpu_uses_the_kernel(fused, request):
    impl = request.node.callspec.params["fused"]
    z = torch.randn(6, 4, requires_grad=True)
    loss = competing_ratio_loss(z, torch.tensor([0, 1, 2, 3, 0, 1]), fused=fused)
    assert ("FusedCRL" in loss.grad_fn.name()) == (impl == "kernel")


def test_kernel_takes_any_layout_and_integer_dtype():
    base = torch.randn(7, 5)
    target = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    want = competing_ratio_loss(base, target, 0.5, 2.0, reduction="none", fused=False)
    transposed = base.t().contiguous().t()  # same values, column-major
    assert not transposed.is_contiguous()
    for logits, t in [(transposed, target), (base, target.int()), (base, target.to(torch.uint8))]:
        torch.testing.assert_close(competing_ratio_loss(logits, t, 0.5, 2.0, reduction="none"), want)


def test_torch_func_grad_through_the_fused_path():
    from torch.func import grad

    z, t = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    got = grad(lambda x: competing_ratio_loss(x, t))(z)
    want = closed_form_grad(z, t, 1.5, 1.0) / 5
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


@pytest.fixture
def fresh_kernel_state(monkeypatch):
    """Forget the loaded kernel for the duration of a test (the loaded one comes back afterwards)."""
    monkeypatch.setattr(cpu_kernel, "_loaded", {})


def test_kernel_build_failure_warns_once_and_falls_back(fresh_kernel_state, monkeypatch):
    import torch.utils.cpp_extension

    calls = []

    def failing_load(**kwargs):
        calls.append(kwargs["name"])
        raise RuntimeError("Ninja is required to load C++ extensions\nmore detail")

    monkeypatch.delenv(cpu_kernel.ENV_VAR, raising=False)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", failing_load)
    z, t = torch.randn(3, 4, requires_grad=True), torch.tensor([0, 1, 3])
    with pytest.warns(UserWarning, match=r"could not build the fused CRL CPU kernel \(RuntimeError: Ninja is required"):
        loss = competing_ratio_loss(z, t)
    loss.backward()  # the PyTorch-ops path: same value
    torch.testing.assert_close(loss, competing_ratio_loss(z.detach(), t, fused=False))
    competing_ratio_loss(z, t)  # no second build attempt, no second warning
    assert len(calls) == 1 and calls[0].startswith("crl_lightning_fused_crl_cpu_torch")


def test_kernel_disabled_by_environment(fresh_kernel_state, monkeypatch):
    import torch.utils.cpp_extension

    monkeypatch.setenv(cpu_kernel.ENV_VAR, "0")
    monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda **kwargs: pytest.fail("must not build"))
    assert cpu_kernel.load_cpu_kernel() is None
    loss = competing_ratio_loss(torch.randn(2, 3, requires_grad=True), torch.tensor([0, 2]))
    assert "FusedCRL" not in type(loss.grad_fn).__name__


def test_forward_mode_ad_takes_the_ops_path():
    import torch.autograd.forward_ad as fwAD

    g = torch.Generator().manual_seed(12)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    tangent = torch.randn(4, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 0])
    jvps = []
    for use_fused in (True, False):
        with fwAD.dual_level():
            jvps.append(fwAD.unpack_dual(competing_ratio_loss(fwAD.make_dual(x, tangent), t, fused=use_fused)).tangent)
    torch.testing.assert_close(*jvps)
    z = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: competing_ratio_loss(v, t), (z,), check_forward_ad=True)


def test_jit_trace_records_the_computation():
    g = torch.Generator().manual_seed(13)
    traced = torch.jit.trace(lambda z, c: competing_ratio_loss(z, c), (torch.randn(16, 7), torch.randint(0, 7, (16,))),
                             check_trace=False)
    z, t = torch.randn(16, 7, generator=g), torch.randint(0, 7, (16,), generator=g)
    torch.testing.assert_close(traced(z, t), competing_ratio_loss(z, t, fused=False))


def test_per_sample_gradients_with_vmap():
    from torch.func import grad, vmap

    g = torch.Generator().manual_seed(14)
    x, t = torch.randn(8, 5, generator=g), torch.randint(0, 5, (8,), generator=g)
    got = vmap(grad(lambda z, c: competing_ratio_loss(z[None], c[None])))(x, t)
    want = closed_form_grad(x, t, 1.5, 1.0)  # sum reduction over one row = that row's gradient
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_weight_that_requires_grad_gets_its_gradient():
    g = torch.Generator().manual_seed(15)
    z, t = torch.randn(6, 4, generator=g), torch.tensor([0, 1, 2, 3, 1, -100])
    grads = []
    for use_fused in (True, False):
        w = torch.tensor([0.5, 1.0, 2.0, 1.5], requires_grad=True)
        competing_ratio_loss(z, t, weight=w, fused=use_fused).backward()
        grads.append(w.grad)
    assert grads[0] is not None
    torch.testing.assert_close(*grads)


@pytest.mark.parametrize("bad", [-100.0, 2**63, "x"])
def test_ignore_index_must_be_an_int64(bad):
    with pytest.raises(TypeError, match=r"ignore_index: expected a 64-bit integer \(default -100\), got"):
        competing_ratio_loss(torch.randn(2, 3), torch.tensor([0, 1]), ignore_index=bad)
    with pytest.raises(TypeError, match="ignore_index"):
        CompetingRatioLoss(ignore_index=bad)


def test_build_failure_reason_is_the_line_that_says_what_failed():
    err = RuntimeError("Error building extension 'x': [1/2] c++ -MMD -MF x.o.d -c x.cpp -o x.o\n"
                       "FAILED: x.o\nc++ -MMD ...\n/bin/sh: 1: c++: not found\n"
                       "ninja: build stopped: subcommand failed.")
    assert cpu_kernel._failure_reason(err) == "/bin/sh: 1: c++: not found"
    assert cpu_kernel._failure_reason(OSError("Read-only file system")) == "Read-only file system"
    assert cpu_kernel._failure_reason(RuntimeError("")) == "RuntimeError"
