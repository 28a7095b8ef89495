"""Optimal re-fit of a layer on a given mask: per row the exact minimiser on its kept set Q.

With H_λ = H + λI (the damping policy of :mod:`iobs.obs.damping`, λ = percdamp · mean(diag H), dead
inputs H_jj = 0 set to 1 first and their weights zeroed) each row w of W solves

    min over supp(ŵ) ⊆ Q of (ŵ − w)ᵀ H_λ (ŵ − w)   ⇔   (H_λ)_QQ ŵ_Q = (H_λ w)_Q,

which is exactly the OBS projection of w onto Q (:func:`iobs.obs.projection.obs_project`). Two ways:

* ``"cholesky"``: per row a Cholesky of (H_λ)_QQ (gathered, m = max |Q| wide), k³/3 per row;
* ``"cg"``: preconditioned conjugate gradients on all rows at once, one shared product (R × d)·H_λ per
  iteration, Jacobi preconditioner diag(H_λ)_Q, warm-started at W ⊙ mask (or ``W0``);
* ``"auto"``: Cholesky while max|Q|³/3 ≤ 2·cg_iters·d², else CG.
"""

from __future__ import annotations

import torch

from iobs._validate import check_finite, check_int_range
from iobs.obs.curvature import Curvature
from iobs.obs.damping import check_hessian, fill_dead
from iobs.obs.projection import obs_project

REFIT_SOLVERS = ("auto", "cholesky", "cg")


def damped_hessian(
    H: torch.Tensor, percdamp: float = 0.01, name: str = "H"
) -> tuple[Curvature, torch.Tensor]:
    """(H_λ as a dense Curvature, dead-input mask): dead diagonal entries set to 1, λ = percdamp · mean
    diag, escalated by the damping policy when the Cholesky fails."""
    check_hessian(H, name, percdamp)
    Hd, dead = fill_dead(H)
    lam = float(percdamp) * float(Hd.diagonal().mean())
    return Curvature.dense(Hd, lam, name=name), dead


def pcg_refit(
    W: torch.Tensor, H: torch.Tensor, mask: torch.Tensor, W0=None, iters: int = 50, rtol: float = 1e-6
) -> torch.Tensor:
    """Solve H_QQ ŵ_Q = (H w)_Q for every row (Q = row's mask) by Jacobi-preconditioned CG, batched:
    each iteration is one (R × d)·H product shared by all rows. Stops when every row's residual norm is
    ≤ rtol·‖(H w)_Q‖ or after ``iters`` iterations."""
    keep = mask.to(W.dtype)
    B = (W @ H) * keep
    X = (W if W0 is None else W0) * keep
    R = B - (X @ H) * keep
    Minv = keep / H.diagonal().clamp_min(torch.finfo(W.dtype).tiny)
    Z = R * Minv
    P = Z.clone()
    rz = (R * Z).sum(1)
    stop = rtol * B.norm(dim=1)
    for _ in range(iters):
        if bool((R.norm(dim=1) <= stop).all()):
            break
        AP = (P @ H) * keep
        alpha = rz / (P * AP).sum(1).clamp_min(torch.finfo(W.dtype).tiny)
        X.addcmul_(P, alpha[:, None])
        R.addcmul_(AP, alpha[:, None], value=-1.0)
        Z = R * Minv
        rz_new = (R * Z).sum(1)
        P = Z + (rz_new / rz.clamp_min(torch.finfo(W.dtype).tiny))[:, None] * P
        rz = rz_new
    return X


def refit(
    W: torch.Tensor,
    H: torch.Tensor,
    mask: torch.Tensor,
    *,
    percdamp: float = 0.01,
    solver: str = "auto",
    cg_iters: int = 50,
    W0: torch.Tensor | None = None,
    name: str = "H",
) -> torch.Tensor:
    """Ŵ with Ŵ_r = argmin over supp ⊆ mask_r of (ŵ − w_r)ᵀ H_λ (ŵ − w_r) for every row r (see module)."""
    if solver not in REFIT_SOLVERS:
        raise ValueError(f"solver must be one of {', '.join(REFIT_SOLVERS)}, got {solver!r}")
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(W.shape):
        raise ValueError(
            f"mask must be a boolean tensor of W's shape {tuple(W.shape)}, got {mask.dtype} "
            f"{tuple(mask.shape)}"
        )
    check_int_range("cg_iters", cg_iters, 1, 1 << 30)
    check_finite("W", W)
    Hl, dead = damped_hessian(H, percdamp, name)
    W = W.masked_fill(dead[None, :], 0)
    d = W.shape[1]
    k = int(mask.sum(1).max()) if mask.numel() else 0
    if solver == "cholesky" or (solver == "auto" and k**3 / 3 <= 2 * cg_iters * d * d):
        return obs_project(W, Hl.H, mask)
    return pcg_refit(W, Hl.H, mask, W0, cg_iters)
