"""Corrected Fig. 2 of the CRL paper: the true per-sample gradient weight of CRL against p_c.

Usage: ``python scripts/plot_gradient_weight.py [--out docs/gradient_weight.png]``

Left: ``w(p_c) = 1 + beta * p_c / (alpha + 1 - p_c)`` (alpha = 1.5), the factor by which CRL scales the
cross-entropy gradient ``p - onehot(c)`` of a sample, for beta in {0, .25, .5, .75, 1}.
Right: the paper's setting of Fig. 2 (alpha = 1.5, p_j = 0.5): ``dCRL/dx_j`` for a wrong class j, as the
paper's Eq. 17 prints it (dashed, sign error) and as autograd computes it (solid). p_c is limited to
[0, 0.5] there, since p_c + p_j <= 1. The solid curves are checked against autograd before plotting.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from crl_lightning.losses import competing_ratio_loss  # noqa: E402

ALPHA = 1.5
BETAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def weight(p_c: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    return 1 + beta * p_c / (alpha + 1 - p_c)


def check_against_autograd() -> None:
    """dCRL/dz_j at logits giving p = (p_c, p_j, rest) equals p_j * w(p_c)."""
    p = torch.tensor([[0.3, 0.5, 0.2]], dtype=torch.float64)
    logits = p.log().requires_grad_()
    for beta in BETAS:
        (grad,) = torch.autograd.grad(competing_ratio_loss(logits, torch.tensor([0]), ALPHA, beta), logits)
        want = 0.5 * weight(torch.tensor(0.3, dtype=torch.float64), ALPHA, beta)
        if not torch.isclose(grad[0, 1], want):
            raise RuntimeError(f"autograd {grad[0, 1].item()} != closed form {want.item()} at beta={beta}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/gradient_weight.png"))
    args = parser.parse_args()
    check_against_autograd()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    p_c = torch.linspace(0, 1, 201)
    for beta in BETAS:
        left.plot(p_c, weight(p_c, ALPHA, beta), label=f"beta = {beta}")
    left.set(xlabel="p_c (probability of the correct class)", ylabel="w = dCRL/dCE per sample",
             title=f"True gradient weight of CRL (alpha = {ALPHA})")
    left.legend()
    left.grid(alpha=0.3)
    p_c = torch.linspace(0, 0.5, 101)
    for i, beta in enumerate(BETAS):
        color = f"C{i}"
        right.plot(p_c, 0.5 * weight(p_c, ALPHA, beta), color=color, label=f"beta = {beta} (true)")
        right.plot(p_c, 0.5 * (2 - weight(p_c, ALPHA, beta)), color=color, ls="--")
    right.set(xlabel="p_c", ylabel="dCRL/dx_j (j != c, p_j = 0.5)",
              title="Paper Fig. 2 setting: true (solid) vs Eq. 17 (dashed)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
