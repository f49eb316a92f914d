"""Criteria on their clamps, thresholds and switches: the alpha = 0 floor at float32 eps, the fused path's
``FUSED_MIN_ALPHA`` boundary (1e-3 exactly), ``p_k = 1/2`` at the clamp of ``log(1 - p_k)``, ``ignore_index`` at
the first and last class index and outside the classes, and the limits of the argument checks.

References are per-sample float64 loops written here (``math.exp``/``math.log`` on Python floats), never the
code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from crl_lightning.losses import (
    CompetingRatioLoss,
    FocalLoss,
    competing_ratio_loss,
    focal_loss,
    poly1_cross_entropy,
)
from crl_lightning.losses import functional as LF


def crl_rows(logits: list[list[float]], target: list[int], alpha: float, beta: float, floor: float = 0.0) -> list:
    """Per-row CRL in float64: ``-log p_c + beta * log(alpha + max(1 - p_c, floor))`` (floor only for alpha = 0)."""
    out = []
    for row, c in zip(logits, target, strict=True):
        m = max(row)
        exps = [math.exp(v - m) for v in row]
        total = sum(exps)
        p_c = exps[c] / total
        q = sum(e for k, e in enumerate(exps) if k != c) / total  # 1 - p_c without cancellation
        out.append(-math.log(p_c) + beta * math.log(alpha + (max(q, floor) if alpha == 0 else q)))
    return out


# ----- the alpha = 0 floor -------------------------------------------------------------------------------------
def test_alpha_zero_floor_is_float32_eps_and_only_bites_below_it():
    """``alpha = 0``: ``1 - p_c`` is floored at ``ALPHA0_FLOOR = 2**-23`` (float32 eps). Logits [15, 0] give
    ``1 - p_c = 3.06e-7`` (above the floor: the exact log), [17, 0] give 4.1e-8 and [30, 0] 9.4e-14 (below: the
    loss is ``CE + log(2**-23)``). Guards against a different floor (1e-7, the authors' clamp, or float64 eps),
    a floor applied above it (``clamp_max``) and the floor being dropped (-30 instead of -15.94)."""
    assert LF.ALPHA0_FLOOR == 2.0**-23
    rows = [[15.0, 0.0], [17.0, 0.0], [30.0, 0.0], [0.0, 15.0]]
    target = [0, 0, 0, 0]
    got = competing_ratio_loss(torch.tensor(rows), torch.tensor(target), alpha=0.0, beta=1.0, reduction="none")
    want = crl_rows(rows, target, 0.0, 1.0, floor=2.0**-23)
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    assert want[0] == pytest.approx(math.log(1 / (1 + math.exp(15.0))), rel=1e-6)  # not floored
    assert want[2] == pytest.approx(math.log(2.0**-23), rel=1e-6)  # floored: -15.9424
    assert want[3] == pytest.approx(15.0, rel=1e-6)  # p_c tiny: log(1 - p_c) ~ 0


def test_alpha_zero_floored_rows_get_the_cross_entropy_gradient():
    """Below the floor the log term is constant, so the gradient is cross-entropy's ``p - onehot``; above it the CRL
    weight ``w = 1 + beta p_c / (1 - p_c)`` multiplies it. Guards against the floor being applied to the gradient
    only or to the value only."""
    z = torch.tensor([[30.0, 0.0], [2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    competing_ratio_loss(z, torch.tensor([0, 0]), alpha=0.0, beta=1.0, reduction="sum").backward()
    p30 = 1 / (1 + math.exp(-30.0))
    assert z.grad[0].tolist() == pytest.approx([p30 - 1, 1 - p30], abs=1e-15)  # CE only (about -9.4e-14)
    p2 = 1 / (1 + math.exp(-2.0))
    w = 1 + p2 / (1 - p2)
    assert z.grad[1].tolist() == pytest.approx([(p2 - 1) * w, (1 - p2) * w], rel=1e-9)


# ----- the fused path's alpha threshold ------------------------------------------------------------------------
@pytest.fixture
def path_taken(monkeypatch):
    """Record which implementation `competing_ratio_loss` dispatches to (the real ones still run)."""
    taken = []
    fused, composite = LF._crl_fused, LF._crl_composite

    def spy_fused(*args, **kwargs):
        taken.append("fused")
        return fused(*args, **kwargs)

    def spy_composite(*args, **kwargs):
        taken.append("reference")
        return composite(*args, **kwargs)

    monkeypatch.setattr(LF, "_crl_fused", spy_fused)
    monkeypatch.setattr(LF, "_crl_composite", spy_composite)
    return taken


def test_fused_min_alpha_is_inclusive_at_1e_3(path_taken):
    """``alpha >= FUSED_MIN_ALPHA = 1e-3`` takes the fused path; the next float below takes the reference. Both give
    the float64 value. Guards against ``>`` for ``>=`` and a changed threshold (1e-2 or 1e-4)."""
    assert LF.FUSED_MIN_ALPHA == 1e-3
    rows = [[3.0, 0.0, -1.0], [0.5, 0.2, 0.1]]
    target = [0, 2]
    below = math.nextafter(1e-3, 0.0)
    cases = [(1e-3, "fused"), (below, "reference"), (1e-2, "fused"), (5e-4, "reference"), (0.0, "reference")]
    for alpha, path in cases:
        path_taken.clear()
        got = competing_ratio_loss(torch.tensor(rows), torch.tensor(target), alpha=alpha, reduction="none")
        assert path_taken == [path], alpha
        assert got.tolist() == pytest.approx(crl_rows(rows, target, alpha, 1.0, 2.0**-23), rel=1e-5)


def test_options_that_need_the_reference_path(path_taken):
    """Label smoothing (any eps > 0), soft targets and ``fused=False`` take the reference path; eps = 0 and the
    defaults take the fused one. Guards against the dispatch conditions being inverted or dropped."""
    logits, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    calls = [
        (dict(), "fused"), (dict(label_smoothing=0.0), "fused"), (dict(label_smoothing=1e-6), "reference"),
        (dict(fused=False), "reference"),
    ]
    for kwargs, path in calls:
        path_taken.clear()
        competing_ratio_loss(logits, target, **kwargs)
        assert path_taken == [path], kwargs
    path_taken.clear()
    competing_ratio_loss(logits, torch.softmax(torch.randn(4, 3), 1))
    assert path_taken == ["reference"]


# ----- p_k = 1/2, the clamp of log(1 - p_k) -------------------------------------------------------------------
@pytest.mark.parametrize("fused", [True, False])
def test_two_equal_logits_p_one_half(fused):
    """Two classes with equal logits: ``p = 1/2`` for both, so ``log(1 - p_k)`` is read at its clamp (``-log 2``)
    for the class that is not the argmax and from the other classes' mass for the argmax (class 0). Loss
    ``log 2 + beta log(alpha + 1/2)`` for either target. Guards against the clamp's threshold moving (a different
    ``1 - p`` for the non-argmax class) and against the argmax class being replaced for the wrong class."""
    logits = torch.zeros(2, 2)
    target = torch.tensor([0, 1])
    for alpha, beta in ((1.5, 1.0), (1e-4, 2.0), (0.0, 1.0)):
        got = competing_ratio_loss(logits, target, alpha=alpha, beta=beta, reduction="none", fused=fused)
        want = math.log(2) + beta * math.log(alpha + 0.5)
        assert got.tolist() == pytest.approx([want, want], rel=1e-6), (alpha, beta)


def test_log1m_softmax_values_on_both_sides_of_one_half():
    """``_log1m_softmax`` for p = (0.7, 0.2, 0.1) and p = (1/2, 1/4, 1/4): ``log(1 - p_k)`` for every k. Guards
    against the clamp applying to the argmax class's replacement or a wrong class being the replaced one."""
    for probs in ((0.7, 0.2, 0.1), (0.5, 0.25, 0.25), (0.1, 0.2, 0.7)):
        x = torch.tensor([[math.log(p) for p in probs]], dtype=torch.float64)
        got = LF._log1m_softmax(x, torch.log_softmax(x, 1))
        assert got[0].tolist() == pytest.approx([math.log(1 - p) for p in probs], rel=1e-12)


# ----- ignore_index at the class boundaries ---------------------------------------------------------------------
ROWS = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-1.0, 1.5, 0.0], [0.3, -0.2, 1.1]]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(("ignore", "target"), [(0, [0, 1, 2, 0]), (2, [2, 1, 0, 2]), (3, [3, 1, 0, 3]),
                                                 (-1, [-1, 1, 0, -1])])
def test_crl_ignore_index_first_last_and_outside_the_classes(ignore, target, fused):
    """``ignore_index`` = 0 (the first class), 2 (the last), 3 (= C, just outside) and -1: rows 0 and 3 are ignored
    in every case. Ignored rows give 0, ``mean`` divides by the 2 kept rows. Guards against ``0 <= i < C`` in the
    all-valid shortcut moving by one at either end (the shortcut would skip the mask: ignored rows would add
    ``beta * log(alpha)`` and count in the mean) and against an out-of-range ignore value being rejected."""
    t = torch.tensor(target)
    logits = torch.tensor(ROWS)
    kept = crl_rows([ROWS[1], ROWS[2]], [target[1], target[2]], 1.5, 1.0)
    none = competing_ratio_loss(logits, t, ignore_index=ignore, reduction="none", fused=fused)
    assert none.tolist() == pytest.approx([0.0, kept[0], kept[1], 0.0], rel=1e-6, abs=1e-7)
    mean = competing_ratio_loss(logits, t, ignore_index=ignore, reduction="mean", fused=fused)
    assert mean.item() == pytest.approx(sum(kept) / 2, rel=1e-6)
    total = competing_ratio_loss(logits, t, ignore_index=ignore, reduction="sum", fused=fused)
    assert total.item() == pytest.approx(sum(kept), rel=1e-6)
    module = CompetingRatioLoss(ignore_index=ignore, fused=fused)
    assert module(logits, t).item() == pytest.approx(sum(kept) / 2, rel=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_ignore_index_that_is_a_class_but_absent(fused):
    """``ignore_index`` = 1 (a class) and no target equal to it: every row counts (mean over 4). Guards against the
    shortcut treating "ignore_index is a class" as "some row is ignored" with a wrong denominator."""
    t = torch.tensor([0, 2, 0, 2])
    got = competing_ratio_loss(torch.tensor(ROWS), t, ignore_index=1, fused=fused)
    assert got.item() == pytest.approx(sum(crl_rows(ROWS, t.tolist(), 1.5, 1.0)) / 4, rel=1e-6)


@pytest.mark.parametrize("bad", [3, -1])
def test_target_just_outside_the_classes_is_refused(bad):
    """Class indices ``-1`` and ``C`` are refused unless they are ``ignore_index``, naming the value. Guards against
    ``>= C`` becoming ``> C`` (C accepted) and ``< 0`` becoming ``< -1``."""
    t = torch.tensor([0, bad, 1, 2])
    for call in (competing_ratio_loss, focal_loss, poly1_cross_entropy):
        with pytest.raises(ValueError, match=rf"expected class indices in \[0, 3\) or ignore_index=-100, got {bad}"):
            call(torch.tensor(ROWS), t)
    assert competing_ratio_loss(torch.tensor(ROWS), torch.tensor([0, 2, 1, 2])).isfinite()  # C - 1 and 0 are fine


@pytest.mark.parametrize(("ignore", "target"), [(0, [0, 1, 2, 0]), (2, [2, 1, 0, 2]), (3, [3, 1, 0, 3])])
def test_baselines_ignore_index_first_last_and_outside(ignore, target):
    """Focal and poly-1 with the same ignore values: rows 0 and 3 give 0, ``mean`` over the 2 kept rows."""
    t = torch.tensor(target)
    logits = torch.tensor(ROWS)
    expect_focal, expect_poly = [], []
    for i in (1, 2):
        row, c = ROWS[i], target[i]
        p_c = math.exp(row[c]) / sum(math.exp(v) for v in row)
        expect_focal.append(-((1 - p_c) ** 2) * math.log(p_c))
        expect_poly.append(-math.log(p_c) + (1 - p_c))
    focal = focal_loss(logits, t, gamma=2.0, ignore_index=ignore, reduction="none")
    assert focal.tolist() == pytest.approx([0.0, *expect_focal, 0.0], rel=1e-5, abs=1e-7)
    assert focal_loss(logits, t, ignore_index=ignore).item() == pytest.approx(sum(expect_focal) / 2, rel=1e-5)
    poly = poly1_cross_entropy(logits, t, ignore_index=ignore, reduction="none")
    assert poly.tolist() == pytest.approx([0.0, *expect_poly, 0.0], rel=1e-5, abs=1e-7)
    assert poly1_cross_entropy(logits, t, ignore_index=ignore).item() == pytest.approx(sum(expect_poly) / 2, rel=1e-5)


# ----- limits of the argument checks ----------------------------------------------------------------------------
def test_argument_limits_are_inclusive_where_documented():
    """alpha = 0, beta = 0, label_smoothing = 0 and 1, gamma = 0 are valid; just outside each is not. Guards
    against ``>=``/``<=`` becoming strict (a valid edge refused) or the checks dropped (a negative accepted)."""
    logits, target = torch.tensor(ROWS), torch.tensor([0, 1, 2, 0])
    assert competing_ratio_loss(logits, target, alpha=0.0).isfinite()
    ce = torch.nn.functional.cross_entropy(logits, target)
    assert competing_ratio_loss(logits, target, beta=0.0).item() == pytest.approx(ce.item(), rel=1e-6)
    for eps in (0.0, 1.0):
        smooth = torch.nn.functional.cross_entropy(logits, target, label_smoothing=eps)
        assert competing_ratio_loss(logits, target, beta=0.0, label_smoothing=eps).item() == pytest.approx(
            smooth.item(), rel=1e-6)
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(ce.item(), rel=1e-6)
    bad = [
        (dict(alpha=-1e-12), "alpha: expected a finite alpha >= 0"),
        (dict(beta=-1e-12), "beta: expected a finite beta >= 0"),
        (dict(alpha=math.inf), "alpha: expected a finite alpha >= 0"),
        (dict(beta=math.nan), "beta: expected a finite beta >= 0"),
        (dict(label_smoothing=-1e-9), r"label_smoothing: expected a value in \[0, 1\]"),
        (dict(label_smoothing=1 + 1e-9), r"label_smoothing: expected a value in \[0, 1\]"),
        (dict(reduction="avg"), "reduction: expected one of"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            competing_ratio_loss(logits, target, **kwargs)
        with pytest.raises(ValueError, match=message):
            CompetingRatioLoss(**kwargs)
    for gamma in (-1e-9, math.nan):
        with pytest.raises(ValueError, match="gamma: expected gamma >= 0"):
            focal_loss(logits, target, gamma=gamma)


def test_weighted_mean_with_zero_total_weight_is_zero_not_nan():
    """Every kept row has weight 0: ``mean`` is 0 (the zero-denominator guard), ``sum`` 0, gradients 0. Guards
    against the guard testing ``> 0`` (a negative total weight would then divide by 1) or being dropped (NaN)."""
    z = torch.tensor(ROWS, requires_grad=True)
    weight = torch.tensor([0.0, 1.0, 0.0])
    target = torch.tensor([0, 2, 0, 2])
    for fused in (True, False):
        loss = competing_ratio_loss(z, target, weight=weight, fused=fused)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.count_nonzero(z.grad) == 0
        z.grad = None
    negative = torch.tensor([-1.0, 1.0, -1.0])  # total weight -4 over the 4 rows of classes 0 and 2: divides by -4
    rows = crl_rows(ROWS, target.tolist(), 1.5, 1.0)
    got = competing_ratio_loss(z, target, weight=negative)
    assert got.item() == pytest.approx(-sum(rows) / -4, rel=1e-6)


def test_poly1_default_epsilon_is_one():
    """Poly-1's default ``epsilon = 1`` (Leng et al.): ``CE + (1 - p_c)``, functional and module. Guards against a
    changed default."""
    logits, target = torch.tensor(ROWS), torch.tensor([0, 1, 2, 0])
    rows = []
    for row, c in zip(ROWS, target.tolist(), strict=True):
        p_c = math.exp(row[c]) / sum(math.exp(v) for v in row)
        rows.append(-math.log(p_c) + 1.0 * (1 - p_c))
    from crl_lightning.losses import Poly1CrossEntropyLoss

    assert poly1_cross_entropy(logits, target).item() == pytest.approx(sum(rows) / 4, rel=1e-6)
    assert Poly1CrossEntropyLoss()(logits, target).item() == pytest.approx(sum(rows) / 4, rel=1e-6)


def test_registered_class_is_what_the_registry_returns(monkeypatch):
    """`register_criterion` stores the class itself: `criterion_class` returns it and `create_criterion` builds it,
    dropping ``None`` arguments. Guards against the decorator storing something else or returning another object."""
    from crl_lightning.losses import registry

    monkeypatch.setattr(registry, "_CRITERIA", dict(registry._CRITERIA))

    class Doubled(torch.nn.Module):
        def __init__(self, scale: float = 2.0):
            super().__init__()
            self.scale = scale

    assert registry.register_criterion("doubled_test")(Doubled) is Doubled
    assert registry.criterion_class("doubled_test") is Doubled
    made = registry.create_criterion("doubled_test", scale=None)
    assert isinstance(made, Doubled) and made.scale == 2.0
    assert "doubled_test" in registry.list_criteria()


def test_focal_module_default_gamma_and_its_lower_limit():
    """`FocalLoss()` is gamma = 2 (Lin et al.); gamma = 0 (cross-entropy) and 0.5 are valid in the module as in the
    function, a negative gamma is not. Guards against a changed default and ``>= 0`` becoming ``> 0`` or ``>= 1``."""
    from crl_lightning.losses import FocalLoss

    logits, target = torch.tensor(ROWS), torch.tensor([0, 1, 2, 0])
    p = [math.exp(r[c]) / sum(math.exp(v) for v in r) for r, c in zip(ROWS, target.tolist(), strict=True)]
    for module, gamma in ((FocalLoss(), 2.0), (FocalLoss(gamma=0.0), 0.0), (FocalLoss(gamma=0.5), 0.5)):
        want = sum(-((1 - q) ** gamma) * math.log(q) for q in p) / 4
        assert module(logits, target).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="gamma: expected gamma >= 0, got -1e-09"):
        FocalLoss(gamma=-1e-9)


def test_baselines_name_themselves_when_given_soft_targets():
    """The soft-target error names the criterion that refused it."""
    logits = torch.tensor(ROWS)
    soft = torch.softmax(logits, 1)
    with pytest.raises(ValueError, match=r"^target: poly1_cross_entropy expected integer class indices of shape"):
        poly1_cross_entropy(logits, soft)
    with pytest.raises(ValueError, match=r"^target: focal_loss expected integer class indices of shape \(4,\)"):
        focal_loss(logits, soft)


def test_focal_alpha_of_another_length_is_refused_with_the_documented_message():
    """Guards against checking the shape of no weight (``None``) instead of ``alpha``: a wrong length then fails
    later, or broadcasts, instead of this message."""
    with pytest.raises(ValueError, match=r"^weight: expected a 1-D tensor of 3 per-class weights, got shape \(2,\)$"):
        focal_loss(torch.zeros(2, 3), torch.tensor([0, 1]), alpha=[0.5, 0.5])


def test_a_list_alpha_goes_to_the_logits_device():
    """Guards against building a list ``alpha`` without the logits' device (CPU; an error on an accelerator). The
    meta device stands in for a GPU: mixing it with a CPU tensor raises, as CUDA does."""
    logits, target = torch.zeros(2, 2, device="meta"), torch.zeros(2, dtype=torch.long, device="meta")
    assert focal_loss(logits, target, alpha=[0.25, 0.75]).device.type == "meta"


@pytest.mark.parametrize(("cls", "key"), [(CompetingRatioLoss, "weight"), (FocalLoss, "alpha")])
def test_class_weights_stay_out_of_the_state_dict_and_refuse_two_dimensions(cls, key):
    """Guards against a persistent weight buffer (checkpoints would then carry, and demand, ``criterion.weight``)
    and against a 2-D weight error that is not this message."""
    criterion = cls(**{key: [1.0, 2.0, 3.0]})
    assert criterion.state_dict() == {}
    assert torch.equal(criterion.weight, torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match=r"^weight: expected a 1-D list of per-class weights, got shape \(2, 2\)$"):
        cls(**{key: [[1.0, 2.0], [3.0, 4.0]]})


# ----- dtypes, empty and degenerate batches, masked classes, higher-rank logits ---------------------------------
@pytest.mark.parametrize("fused", [True, False])
def test_loss_dtype_follows_the_logits_not_the_weight_or_soft_target(fused):
    """float32 (and bfloat16) logits give a float32 loss, float64 logits a float64 one, whatever the dtype of the
    class weight, focal ``alpha`` or soft target. Guards against a ``.to(x.dtype)`` on the weight, ``alpha`` or
    soft target being dropped: a float64 weight would then promote the loss (and its gradient) to float64."""
    target = torch.tensor([0, 2, 1, 2])
    w64 = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    soft64 = torch.softmax(torch.tensor(ROWS, dtype=torch.float64) * 2, 1)
    for dtype, want in ((torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                        (torch.float64, torch.float64)):
        logits = torch.tensor(ROWS, dtype=dtype)
        for reduction in ("none", "mean"):
            assert competing_ratio_loss(logits, target, weight=w64, reduction=reduction, fused=fused).dtype == want
            assert competing_ratio_loss(logits, soft64, reduction=reduction, fused=fused).dtype == want
            assert competing_ratio_loss(logits, soft64, weight=w64, label_smoothing=0.1, reduction=reduction,
                                        fused=fused).dtype == want
            assert competing_ratio_loss(logits, target, weight=w64, label_smoothing=0.1, reduction=reduction,
                                        fused=fused).dtype == want
            assert focal_loss(logits, target, alpha=w64, reduction=reduction).dtype == want
            assert poly1_cross_entropy(logits, target, reduction=reduction).dtype == want
    weighted = competing_ratio_loss(torch.tensor(ROWS), target, weight=w64, reduction="none", fused=fused)
    rows = crl_rows(ROWS, target.tolist(), 1.5, 1.0)
    want = [r * w64[c].item() for r, c in zip(rows, target.tolist(), strict=True)]
    assert weighted.tolist() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_every_target_ignored_with_an_ignore_index_that_is_a_class(fused):
    """``ignore_index = 0`` (a class) and every target 0: every row is ignored, so ``none`` gives zeros and
    ``mean``/``sum`` 0. Guards against the all-valid shortcut asking "is some target *not* ignore_index" instead of
    "is some target ignore_index" (the mask would be skipped: each row would add ``beta * log(alpha)``)."""
    logits, target = torch.tensor(ROWS), torch.zeros(4, dtype=torch.long)
    for reduction in ("none", "mean", "sum"):
        got = competing_ratio_loss(logits, target, ignore_index=0, reduction=reduction, fused=fused)
        assert torch.count_nonzero(got) == 0
        assert torch.count_nonzero(focal_loss(logits, target, ignore_index=0, reduction=reduction)) == 0
        assert torch.count_nonzero(poly1_cross_entropy(logits, target, ignore_index=0, reduction=reduction)) == 0


@pytest.mark.parametrize("fused", [True, False])
def test_an_empty_batch_gives_zero_and_a_single_target_is_still_checked(fused):
    """An empty batch (N = 0) gives a ``mean`` of 0 (not NaN, and no error from reading the range of no targets);
    a batch of one out-of-range target is refused like any other. Guards against the range check's "nothing to
    check" test moving from ``numel() == 0`` to another size (an empty batch would then fail in ``aminmax``, a
    single target would go unchecked)."""
    empty = competing_ratio_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), fused=fused)
    assert empty.item() == 0.0
    assert focal_loss(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)).item() == 0.0
    for call in (competing_ratio_loss, focal_loss, poly1_cross_entropy):
        with pytest.raises(ValueError, match=r"expected class indices in \[0, 3\) or ignore_index=-100, got 3"):
            call(torch.zeros(1, 3), torch.tensor([3]))


@pytest.mark.parametrize("fused", [True, False])
def test_vmap_over_batches_with_ignored_targets_matches_a_loop(fused):
    """Under ``torch.func.vmap`` the target has no values to read, so the loss must keep the ``ignore_index`` mask:
    the batched result equals the per-batch loop (and the closed form: ignored rows excluded from the mean).
    Guards against the range check reporting "none ignored" for traced or batched targets (ignored rows would then
    count ``beta * log(alpha)`` each and enter the mean's denominator)."""
    from torch.func import vmap

    logits = torch.tensor([ROWS, [r[::-1] for r in ROWS]])
    target = torch.tensor([[0, -100, 2, 1], [-100, -100, 1, 0]])
    got = vmap(lambda z, t: competing_ratio_loss(z, t, fused=fused))(logits, target)
    loop = torch.stack([competing_ratio_loss(z, t, fused=fused) for z, t in zip(logits, target, strict=True)])
    assert got.tolist() == pytest.approx(loop.tolist(), rel=1e-6)
    first = crl_rows([ROWS[0], ROWS[2], ROWS[3]], [0, 2, 1], 1.5, 1.0)
    assert got[0].item() == pytest.approx(sum(first) / 3, rel=1e-6)


@pytest.mark.parametrize("fused", [True, False])
def test_a_single_class_with_an_ignored_target(fused):
    """C = 1: ``p_c = 1``, so CE = 0, CRL = ``beta * log(alpha)``, focal = poly-1 = 0; the ignored row is left out.
    Guards against ignored targets being replaced by class 1 rather than 0 before indexing (with one class,
    index 1 does not exist)."""
    logits, target = torch.tensor([[0.3], [-2.0]]), torch.tensor([0, -100])
    got = competing_ratio_loss(logits, target, weight=torch.tensor([2.0]), reduction="none", fused=fused)
    assert got.tolist() == pytest.approx([2.0 * math.log(1.5), 0.0], abs=1e-6)
    assert competing_ratio_loss(logits, target, fused=fused).item() == pytest.approx(math.log(1.5), rel=1e-6)
    assert focal_loss(logits, target, alpha=[0.5]).item() == 0.0
    assert poly1_cross_entropy(logits, target).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("fused", [True, False])
def test_a_masked_class_with_logit_minus_inf_is_as_if_absent(fused):
    """A non-target class with logit ``-inf`` (a masked class) has ``p = 0``: the loss equals the loss without that
    column, finite, with no smoothing (label_smoothing 0). Guards against the smoothing term being added with
    weight 0 (``>= 0`` for ``> 0``): ``0 * inf`` of the masked class would turn every row NaN."""
    masked = torch.tensor([[*row, -math.inf] for row in ROWS])
    target = torch.tensor([0, 1, 2, 0])
    for alpha in (1.5, 1e-4):  # 1e-4 < FUSED_MIN_ALPHA: the reference path even when fused=True
        got = competing_ratio_loss(masked, target, alpha=alpha, reduction="none", fused=fused)
        assert got.isfinite().all()
        assert got.tolist() == pytest.approx(crl_rows(ROWS, target.tolist(), alpha, 1.0), rel=1e-5)


def test_baselines_on_three_dimensional_logits_use_the_class_dimension():
    """(N, C, L) logits (a sequence or a 1-D signal): focal and poly-1 take the softmax over dim 1 at every
    position, equal to the per-position (N * L, C) loss. Guards against the softmax dimension being left
    implicit: for 3-D input PyTorch's implicit choice is dim 0, the batch."""
    logits = torch.tensor([ROWS[:3], ROWS[1:]]).transpose(1, 2)  # (2, 3 classes, 3 positions)
    target = torch.tensor([[0, 2, 1], [1, 1, 0]])
    flat_logits, flat_target = logits.transpose(1, 2).reshape(-1, 3), target.reshape(-1)
    for call in (focal_loss, poly1_cross_entropy, competing_ratio_loss):
        got = call(logits, target, reduction="none")
        assert got.shape == (2, 3)
        assert got.reshape(-1).tolist() == pytest.approx(call(flat_logits, flat_target, reduction="none").tolist(),
                                                         rel=1e-6)


def test_logits_that_are_not_a_batch_of_scores_are_named_by_what_they_are():
    """A 1-D tensor is reported by its shape, a list by its type, also when a list ``weight`` comes with it.
    Guards against the message losing what was got (``None``, the wrong type name) and against the list weight
    asking a non-tensor for its device before the logits are checked (an AttributeError instead)."""
    shape = r"\(N, C\) or \(N, C, d1, \.\.\., dk\)"
    for call in (competing_ratio_loss, focal_loss, poly1_cross_entropy):
        with pytest.raises(ValueError, match=rf"^logits: expected a tensor of shape {shape}, got \(3,\)$"):
            call(torch.zeros(3), torch.tensor([0]))
        with pytest.raises(ValueError, match=r"^logits: expected a tensor of shape .*, got list$"):
            call([[0.0, 1.0]], torch.tensor([0]))
    with pytest.raises(ValueError, match=r"^logits: expected a tensor of shape .*, got list$"):
        competing_ratio_loss([[0.0, 1.0]], torch.tensor([0]), weight=[1.0, 2.0])


def test_a_list_weight_goes_to_the_logits_device():
    """As for focal's ``alpha``: CRL's list ``weight`` is built on the logits' device (meta stands in for a GPU).
    Guards against building it without the logits (on the CPU: an error on an accelerator)."""
    logits, target = torch.zeros(2, 2, device="meta"), torch.zeros(2, dtype=torch.long, device="meta")
    for fused in (True, False):
        assert competing_ratio_loss(logits, target, weight=[1.0, 2.0], fused=fused).device.type == "meta"


@pytest.mark.parametrize("fused", [True, False])
def test_a_traced_loss_keeps_the_ignore_mask_for_targets_it_was_not_traced_with(fused):
    """``torch.jit.trace`` with targets where nothing is ignored, then called with ignored targets: the recorded
    computation must still mask them (rows left out of the mean). Guards against the "traced" test requiring both
    ``torch.compile`` and ``jit`` tracing (``and`` for ``or``): the range check would then read the example
    target's values while tracing and bake "nothing ignored" into the graph."""
    logits = torch.tensor(ROWS)
    traced = torch.jit.trace(lambda z, c: competing_ratio_loss(z, c, fused=fused),
                             (logits, torch.tensor([0, 1, 2, 0])), check_trace=False)
    target = torch.tensor([0, -100, 2, -100])
    want = crl_rows([ROWS[0], ROWS[2]], [0, 2], 1.5, 1.0)
    assert traced(logits, target).item() == pytest.approx(sum(want) / 2, rel=1e-6)
