"""Tests of the criteria: closed-form values, gradients, options, shapes, dtypes, registry, parity."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import crl_lightning
from crl_lightning.losses import (
    CompetingRatioLoss,
    FocalLoss,
    competing_ratio_loss,
    create_criterion,
    focal_loss,
    list_criteria,
    poly1_cross_entropy,
    register_criterion,
)
from crl_lightning.losses.functional import ALPHA0_FLOOR, FUSED_MIN_ALPHA

REPO = Path(crl_lightning.__file__).resolve().parents[1]


@pytest.fixture(params=["fused", "reference"])
def fused(request):
    """The ``fused`` argument for each implementation: the fused PyTorch-ops path, and the reference."""
    return request.param == "fused"


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


def rows(logits):
    """(N, C, d1, ..., dk) logits as (N * d1 * ... * dk, C) rows, in the target's flattening order."""
    return logits.movedim(1, -1).reshape(-1, logits.shape[1])


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


# ----- no compiled code ---------------------------------------------------------------------------------
def test_first_use_builds_and_writes_nothing(tmp_path):
    """A fresh process: the first forward+backward compiles nothing and writes no extension cache."""
    dirs = {name: tmp_path / name for name in ("extensions", "home", "cache")}
    for path in dirs.values():
        path.mkdir()
    code = (
        "import json, sys, torch\n"
        "from crl_lightning.losses import CompetingRatioLoss, competing_ratio_loss\n"
        "z = torch.randn(4, 3, 5, 5, requires_grad=True)\n"
        "t = torch.randint(0, 3, (4, 5, 5))\n"
        "competing_ratio_loss(z, t).backward()\n"
        "CompetingRatioLoss()(torch.randn(8, 10, requires_grad=True), torch.arange(8)).backward()\n"
        "print(json.dumps({'grad_ok': bool(torch.isfinite(z.grad).all()), "
        "'cpp_extension': 'torch.utils.cpp_extension' in sys.modules}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(dirs["home"]),
           "TORCH_EXTENSIONS_DIR": str(dirs["extensions"]), "XDG_CACHE_HOME": str(dirs["cache"]),
           "MPLCONFIGDIR": str(tmp_path / "matplotlib")}  # Lightning's import makes matplotlib create its config dir
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"grad_ok": True, "cpp_extension": False}
    for name, path in dirs.items():
        assert not any(path.rglob("*")), f"{name} dir was written: {sorted(path.rglob('*'))}"


def test_package_ships_no_native_sources_and_needs_no_compiler():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    package = REPO / "crl_lightning"
    native = [p for p in package.rglob("*") if p.suffix in {".c", ".cc", ".cpp", ".cu", ".h", ".hpp"}]
    assert native == []
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = [d.lower() for d in project["project"]["dependencies"]]
    for tool in ("ninja", "cmake", "pybind11"):
        assert not any(d.startswith(tool) for d in deps), deps
    assert "package-data" not in project["tool"].get("setuptools", {})


# ----- F.cross_entropy's contract, K = 0..3 ---------------------------------------------------------------
SPATIAL = {0: (), 1: (4,), 2: (3, 4), 3: (2, 3, 2)}
OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore": 0.3},
    "ignore_a_class": {"ignore_index": 1},
    "all_ignored": {"ignore": 1.0},
    "smoothing": {"label_smoothing": 0.1},
    "weight_ignore_smoothing": {"weight": True, "ignore": 0.3, "label_smoothing": 0.2},
    "all_ignored_weight_smoothing": {"weight": True, "ignore": 1.0, "label_smoothing": 0.2},
    "soft": {"soft": True},
    "soft_weight_smoothing": {"soft": True, "weight": True, "label_smoothing": 0.1},
}


def make_case(k, option, num_classes=5, seed=0):
    """Logits (N, C, *spatial), a target, and the keyword arguments that both losses take."""
    g = torch.Generator().manual_seed(seed)
    n = 6 if k == 0 else 2
    logits = torch.randn(n, num_classes, *SPATIAL[k], generator=g) * 2
    spec = OPTIONS[option]
    kwargs = {}
    if spec.get("weight"):
        kwargs["weight"] = torch.rand(num_classes, generator=g) + 0.2
    if "label_smoothing" in spec:
        kwargs["label_smoothing"] = spec["label_smoothing"]
    if spec.get("soft"):
        return logits, torch.softmax(torch.randn(logits.shape, generator=g), dim=1), kwargs
    target = torch.randint(0, num_classes, (n, *SPATIAL[k]), generator=g)
    if "ignore" in spec:
        kwargs["ignore_index"] = 255
        target[torch.rand(target.shape, generator=g) < spec["ignore"]] = 255
        if spec["ignore"] < 1:
            target.view(-1)[0] = 255  # at least one ignored element, and
            target.view(-1)[1] = 0  # at least one kept
    if "ignore_index" in spec:
        kwargs["ignore_index"] = spec["ignore_index"]
    return logits, target, kwargs


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_beta_zero_equals_cross_entropy(k, option, reduction, fused):
    """beta = 0 is F.cross_entropy for every shape and option; except that an all-ignored mean is 0, not NaN."""
    logits, target, kwargs = make_case(k, option)
    z = logits.clone().requires_grad_()
    got = competing_ratio_loss(z, target, alpha=1.5, beta=0.0, reduction=reduction, fused=fused, **kwargs)
    want = F.cross_entropy(logits, target, reduction=reduction, **kwargs)
    assert got.shape == want.shape == ((logits.shape[0], *logits.shape[2:]) if reduction == "none" else ())
    if option.startswith("all_ignored") and reduction == "mean":
        assert torch.isnan(want)  # F.cross_entropy: 0 / 0
        assert got.item() == 0.0  # documented difference: a fully masked batch gives 0 ...
        got.backward()
        assert torch.equal(z.grad, torch.zeros_like(z))  # ... and no gradient
        return
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    zc = logits.clone().requires_grad_()
    got.sum().backward()
    F.cross_entropy(zc, target, reduction=reduction, **kwargs).sum().backward()
    torch.testing.assert_close(z.grad, zc.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("option", ["plain", "weight_ignore_smoothing", "soft_weight_smoothing", "ignore_a_class"])
def test_crl_on_maps_equals_crl_on_flattened_rows(option, reduction, fused):
    """(N, C, H, W) logits give what the (N*H*W, C) rows give (reshaped back for "none"), value and grad."""
    logits, target, kwargs = make_case(2, option, seed=3)
    flat_target = rows(target) if target.is_floating_point() else target.reshape(-1)
    z_map, z_rows = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got = competing_ratio_loss(z_map, target, 0.5, 1.5, reduction=reduction, fused=fused, **kwargs)
    want = competing_ratio_loss(rows(z_rows), flat_target, 0.5, 1.5, reduction=reduction, fused=fused, **kwargs)
    torch.testing.assert_close(got.reshape(-1) if reduction == "none" else got, want)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(z_map.grad, z_rows.grad)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("criterion", ["focal", "poly1"])
def test_baselines_on_maps_equal_flattened_rows(criterion, reduction):
    logits, target, _ = make_case(2, "ignore", seed=4)
    alpha = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.25])

    def loss(z, t):
        if criterion == "focal":
            return focal_loss(z, t, gamma=2.0, alpha=alpha, ignore_index=255, reduction=reduction)
        return poly1_cross_entropy(z, t, epsilon=2.0, ignore_index=255, reduction=reduction)

    got, want = loss(logits, target), loss(rows(logits), target.reshape(-1))
    assert got.shape == (target.shape if reduction == "none" else ())
    torch.testing.assert_close(got.reshape(-1) if reduction == "none" else got, want)


def test_modules_take_maps():
    g = torch.Generator().manual_seed(8)
    logits, target = torch.randn(2, 4, 3, 5, generator=g), torch.randint(0, 4, (2, 3, 5), generator=g)
    for name in list_criteria():
        criterion = create_criterion(name, reduction="none")
        per_element = criterion(logits, target)
        assert per_element.shape == (2, 3, 5), name
        torch.testing.assert_close(per_element.reshape(-1), criterion(rows(logits), target.reshape(-1)))


def test_weight_as_a_list():
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    torch.testing.assert_close(competing_ratio_loss(logits, target, weight=[1.0, 2.0, 3.0]),
                               competing_ratio_loss(logits, target, weight=torch.tensor([1.0, 2.0, 3.0])))


@pytest.mark.parametrize("weight", [[-1.0] * 5, [1.0, -2.0, 0.5, 1.0, 3.0]])
def test_negative_class_weights_mean_like_cross_entropy(fused, weight):
    """"mean" divides by the kept rows' total weight whatever its sign (F.cross_entropy does); only 0 is special."""
    torch.manual_seed(0)
    logits, target, weight = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 1]), torch.tensor(weight)
    got = competing_ratio_loss(logits, target, beta=0.0, weight=weight, fused=fused)
    torch.testing.assert_close(got, F.cross_entropy(logits, target, weight=weight))


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


@pytest.mark.parametrize("shape", [(20, 7), (4, 7, 3, 5)])
def test_fused_equals_reference_values_and_grads(shape):
    g = torch.Generator().manual_seed(11)
    for alpha, beta, reduction, weighted in itertools.product([FUSED_MIN_ALPHA, 0.5, 1.5], [0.0, 1.0, 2.5],
                                                              ["none", "mean", "sum"], [False, True]):
        logits = torch.randn(shape, generator=g) * 4
        target = torch.randint(0, 7, (shape[0], *shape[2:]), generator=g)
        target.view(-1)[3] = -100
        weight = torch.rand(7, generator=g) + 0.1 if weighted else None
        outs = []
        for use_fused in (True, False):
            z = logits.clone().requires_grad_()
            loss = competing_ratio_loss(z, target, alpha, beta, weight=weight, reduction=reduction, fused=use_fused)
            loss.sum().backward()
            outs.append((loss.detach(), z.grad))
        tol = 1e-5 if alpha > FUSED_MIN_ALPHA else 1e-3  # see FUSED_MIN_ALPHA
        torch.testing.assert_close(outs[0][0], outs[1][0], rtol=tol, atol=tol)
        torch.testing.assert_close(outs[0][1], outs[1][1], rtol=tol, atol=tol)


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


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("option", ["weight_ignore_smoothing", "ignore", "soft_weight_smoothing"])
def test_gradcheck_and_gradgradcheck_float64_on_maps(option, reduction, fused):
    """K = 2: (N, C, H, W) float64 logits, first and second derivatives against finite differences."""
    logits, target, kwargs = make_case(2, option, num_classes=3, seed=9)
    logits = logits[:, :, :2, :2].double().requires_grad_()
    target = target[:, :, :2, :2].double() if target.is_floating_point() else target[:, :2, :2]
    if "weight" in kwargs:
        kwargs["weight"] = kwargs["weight"][:3].double()

    def fn(z):
        return competing_ratio_loss(z, target, 0.5, 1.5, reduction=reduction, fused=fused, **kwargs)

    assert torch.autograd.gradcheck(fn, (logits,))
    assert torch.autograd.gradgradcheck(fn, (logits,))


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
    torch.testing.assert_close(loss.double(), eq16_reference(logits.float(), target, 1e-4, 1.0), rtol=1e-5, atol=1e-5)


# ----- small alpha ----------------------------------------------------------------------------------------
def test_small_alpha_value_and_gradient_in_float32(fused):
    """logits [20, 0], alpha 1e-8: p_c rounds to 1 in float32, yet value and gradient match float64."""
    z64 = torch.tensor([[20.0, 0.0]], dtype=torch.float64, requires_grad=True)
    want = eq16_reference(z64, torch.tensor([0]), 1e-8, 1.0).sum()
    want.backward()
    assert want.item() == pytest.approx(-18.2333, abs=1e-4)  # the float64 reference
    z = torch.tensor([[20.0, 0.0]], requires_grad=True)
    loss = competing_ratio_loss(z, torch.tensor([0]), alpha=1e-8, beta=1.0, fused=fused)
    loss.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)  # not -18.4207 = log(1e-8): p_c rounded to 1
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-5, atol=1e-7)  # [-0.1709, 0.1709]
    assert z.grad[0, 0].item() < -0.17
    assert abs(z.grad.sum().item()) < 1e-7  # softmax invariance: the row sums to 0


@pytest.mark.parametrize("alpha", [1e-8, 1e-6, 1e-4, FUSED_MIN_ALPHA, 1e-2])
def test_small_alpha_accurate_for_confident_rows(alpha, fused):
    """Confident rows (p_c up to 1 - 1e-13) against float64: value and gradient, both paths."""
    g = torch.Generator().manual_seed(17)
    logits = torch.randn(64, 10, generator=g) * 2
    logits[:, 0] += torch.linspace(0, 30, 64)
    target = torch.zeros(64, dtype=torch.long)
    z64 = logits.double().requires_grad_()
    want = competing_ratio_loss(z64, target, alpha, 1.0, reduction="none", fused=False)
    want.sum().backward()
    z = logits.clone().requires_grad_()
    got = competing_ratio_loss(z, target, alpha, 1.0, reduction="none", fused=fused)
    got.sum().backward()
    # alpha >= FUSED_MIN_ALPHA on the fused path: cross-entropy's float32 rounding of p_c, divided by alpha
    tol = 1e-6 / alpha if fused and alpha >= FUSED_MIN_ALPHA else 1e-5
    torch.testing.assert_close(got.double(), want, rtol=0, atol=tol)
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=0, atol=tol)


def test_float64_reference_path_matches_eq16_for_small_alpha():
    g = torch.Generator().manual_seed(18)
    logits = torch.randn(32, 6, generator=g, dtype=torch.float64) * 3
    target = torch.randint(0, 6, (32,), generator=g)
    got = competing_ratio_loss(logits, target, 1e-6, 2.0, reduction="none", fused=False)
    torch.testing.assert_close(got, eq16_reference(logits, target, 1e-6, 2.0), rtol=1e-10, atol=1e-10)


def test_alpha_zero_floor():
    """alpha = 0: 1 - p_c comes from the other classes (exact) and is floored at float32 eps."""
    logits = torch.tensor([[5.0, 0.0], [40.0, 0.0]])
    got = competing_ratio_loss(logits, torch.tensor([0, 0]), alpha=0.0, beta=1.0, reduction="none")
    q0 = 1 / (1 + math.exp(5.0))
    assert got[0].item() == pytest.approx(-math.log(1 - q0) + math.log(q0), rel=1e-5)
    assert got[1].item() == pytest.approx(math.log(ALPHA0_FLOOR), rel=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 1e-8, 1.5])
def test_single_class(alpha, fused):
    """C = 1: p_c = 1 exactly, so CRL = beta * log(alpha) (log of the floor for alpha = 0), zero gradient."""
    z = torch.randn(3, 1, requires_grad=True)
    loss = competing_ratio_loss(z, torch.zeros(3, dtype=torch.long), alpha, 2.0, fused=fused)
    loss.backward()
    assert loss.item() == pytest.approx(2.0 * math.log(alpha if alpha > 0 else ALPHA0_FLOOR), rel=1e-6)
    assert torch.equal(z.grad, torch.zeros(3, 1))


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


def _has_cxx_compiler():
    return any(shutil.which(cc) for cc in ("c++", "g++", "clang++"))


@pytest.mark.parametrize(("backend", "fused"), [("aot_eager", True), ("aot_eager", False), ("inductor", True)])
def test_torch_compile_fullgraph_on_maps(backend, fused):
    """(N, C, H, W) logits with weight and ignore_index under torch.compile(fullgraph=True): value and grad."""
    if backend == "inductor" and not _has_cxx_compiler():
        pytest.skip("TorchInductor on the CPU needs a C++ compiler")
    weight = torch.tensor([1.0, 2.0, 0.5])

    def step(z, t):
        return competing_ratio_loss(z, t, 1.5, 1.0, weight=weight, ignore_index=255, fused=fused)

    compiled = torch.compile(step, backend=backend, fullgraph=True)
    g = torch.Generator().manual_seed(19)
    logits = torch.randn(2, 3, 4, 5, generator=g)
    target = torch.randint(0, 3, (2, 4, 5), generator=g)
    target[0, 0] = 255
    z1, z2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    want = step(z1, target)
    want.backward()
    got = compiled(z2, target)
    got.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(z2.grad, z1.grad)
    assert torch.equal(z2.grad[0, :, 0], torch.zeros(3, 5))  # the ignored pixels


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_cpu_on_maps(dtype, fused):
    """A conv net's (N, C, H, W) logits under CPU autocast: float32 loss equal to the upcast logits' loss."""
    conv = torch.nn.Conv2d(3, 5, 3, padding=1)
    g = torch.Generator().manual_seed(20)
    x, target = torch.randn(2, 3, 6, 6, generator=g), torch.randint(0, 5, (2, 6, 6), generator=g)
    target[:, 0] = 255
    criterion = CompetingRatioLoss(weight=[1.0, 2.0, 1.0, 1.0, 0.5], ignore_index=255, fused=fused)
    with torch.autocast("cpu", dtype=dtype):
        logits = conv(x)
        assert logits.dtype == dtype
        loss = criterion(logits, target)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, criterion(logits.detach().float(), target))
    loss.backward()
    assert torch.isfinite(conv.weight.grad).all() and conv.weight.grad.abs().sum() > 0


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
    with pytest.raises(ValueError, match=r"expected soft targets of the logits' shape \(2, 3\), got \(2, 4\)"):
        competing_ratio_loss(logits, torch.rand(2, 4))
    with pytest.raises(TypeError, match="integer dtype"):
        competing_ratio_loss(logits, torch.tensor([True, False]))
    with pytest.raises(TypeError, match="target: expected a tensor, got list"):
        competing_ratio_loss(logits, [0, 1])
    with pytest.raises(ValueError, match=r"logits: expected a tensor of shape \(N, C\) or \(N, C, d1, ..., dk\)"):
        competing_ratio_loss(torch.randn(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="weight: expected a 1-D tensor of 3"):
        competing_ratio_loss(logits, torch.tensor([0, 1]), weight=torch.ones(4))
    with pytest.raises(TypeError, match=r"^logits: expected a floating-point tensor, got dtype torch.int64$"):
        competing_ratio_loss(torch.zeros(2, 3, dtype=torch.long), torch.tensor([0, 1]))


@pytest.mark.parametrize("criterion", [competing_ratio_loss, focal_loss, poly1_cross_entropy])
def test_bad_map_targets(criterion):
    logits = torch.randn(2, 4, 3, 5)
    with pytest.raises(ValueError, match=r"target: expected class indices of shape \(2, 3, 5\), got \(2, 5, 3\)"):
        criterion(logits, torch.zeros(2, 5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected class indices in \[0, 4\) or ignore_index=255, got 4"):
        criterion(logits, torch.full((2, 3, 5), 4), ignore_index=255)


@pytest.mark.parametrize("criterion", [focal_loss, poly1_cross_entropy])
def test_baselines_reject_soft_targets_and_bad_options(criterion):
    logits = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match=r"expected integer class indices of shape \(2, 3\), got soft targets"):
        criterion(logits, torch.rand(2, 4, 3))
    with pytest.raises(ValueError, match="reduction: expected one of"):
        criterion(logits, torch.zeros(2, 3, dtype=torch.long), reduction="avg")


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


def test_focal_mean_divides_by_count_not_by_summed_alpha():
    """Documented choice: alpha_c re-weights elements; "mean" divides by the number of non-ignored ones."""
    g = torch.Generator().manual_seed(21)
    logits = torch.randn(2, 3, 4, 4, generator=g)
    target = torch.randint(0, 3, (2, 4, 4), generator=g)
    target[0, 0] = 255
    alpha = torch.tensor([0.25, 2.0, 1.0])
    got = focal_loss(logits, target, gamma=0.0, alpha=alpha.tolist(), ignore_index=255)
    weighted_sum = F.cross_entropy(logits, target, weight=alpha, ignore_index=255, reduction="sum")
    torch.testing.assert_close(got, weighted_sum / (target != 255).sum())
    ce_mean = F.cross_entropy(logits, target, weight=alpha, ignore_index=255)  # divides by summed alpha_c
    assert not torch.isclose(got, ce_mean)


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


# ----- transforms and layouts -----------------------------------------------------------------------
def test_any_layout_and_integer_dtype(fused):
    base = torch.randn(7, 5)
    target = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    want = competing_ratio_loss(base, target, 0.5, 2.0, reduction="none", fused=False)
    transposed = base.t().contiguous().t()  # same values, column-major
    assert not transposed.is_contiguous()
    for logits, t in [(transposed, target), (base, target.int()), (base, target.to(torch.uint8))]:
        torch.testing.assert_close(competing_ratio_loss(logits, t, 0.5, 2.0, reduction="none", fused=fused), want)


def test_channels_last_maps(fused):
    logits = torch.randn(2, 4, 3, 5)
    target = torch.randint(0, 4, (2, 3, 5))
    channels_last = logits.to(memory_format=torch.channels_last)
    assert not channels_last.is_contiguous()
    torch.testing.assert_close(competing_ratio_loss(channels_last, target, reduction="none", fused=fused),
                               competing_ratio_loss(logits, target, reduction="none", fused=False))


def test_torch_func_grad_through_the_fused_path():
    from torch.func import grad

    z, t = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    got = grad(lambda x: competing_ratio_loss(x, t))(z)
    want = closed_form_grad(z, t, 1.5, 1.0) / 5
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_forward_mode_ad_matches_reference():
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


@pytest.mark.parametrize("bad", [-100.0, 2**63, -(2**63) - 1, "x"])
def test_ignore_index_must_be_an_int64(bad):
    with pytest.raises(TypeError, match=r"ignore_index: expected a 64-bit integer \(default -100\), got"):
        competing_ratio_loss(torch.randn(2, 3), torch.tensor([0, 1]), ignore_index=bad)
    with pytest.raises(TypeError, match="ignore_index"):
        CompetingRatioLoss(ignore_index=bad)


@pytest.mark.parametrize("ignore_index", [-(2**63), -(2**62), -1000, 2**63 - 1])
def test_every_int64_ignore_index_is_accepted_and_masks(ignore_index):
    """The int64 range is closed at both ends. Guards against a lower bound that refuses a valid int64 (``<``
    for ``<=`` at -2**63, or a mistyped bound such as ``-(2 * 63)``); one beyond it is refused in
    `test_ignore_index_must_be_an_int64`."""
    logits, target = torch.randn(3, 4), torch.tensor([0, ignore_index, 2])
    torch.testing.assert_close(competing_ratio_loss(logits, target, ignore_index=ignore_index),
                               competing_ratio_loss(logits[[0, 2]], target[[0, 2]]))
