"""ALPS (Meng, Behdin, Wang & Mazumder, NeurIPS 2024): ADMM for the ℓ0-constrained layer problem, then
PCG on the final mask. Written here from the paper's description (no code of theirs).

Problem (rows of W = outputs): min ‖(W − Ŵ)X‖² s.t. Ŵ has the budget (top-k over the layer, per row, or
N:M). After damping (H_λ, :func:`iobs.obs.refit.damped_hessian`) the problem is normalised to unit
diagonal: s = sqrt(diag H_λ), Ĥ = H_λ / (s sᵀ), Ŵ ↦ Ŵ·diag(s), so magnitudes are comparable across
inputs. With the split Ŵ = D (D feasible) and scaled dual V, ADMM iterates

    B ← (W Ĥ − V + ρ D)(Ĥ + ρI)⁻¹,   D ← P(B + V/ρ),   V ← V + ρ(B − D),

where P keeps the largest magnitudes under the budget. (Ĥ + ρI)⁻¹ = Q diag(1/(Λ + ρ)) Qᵀ for every ρ
from one eigendecomposition Ĥ = QΛQᵀ: the shared factorisation. ρ grows with the support's stability:
every ``update_every`` iterations, with c = |supp D Δ supp D_prev| / k, ρ ×1.3 if c > 0.1, ×1.2 if
c > 0.005, ×1.1 if the support still moves; stop when it no longer moves (after ρ has grown at least
once; before that, ρ is divided by 5 and ADMM restarts), or when c < 3e-4 after ``min_iters``, or after
``max_iters``. Finally the weights on supp D are re-fitted by preconditioned CG (``pcg_iters``
iterations, warm start D; :func:`iobs.obs.refit.pcg_refit`). Settings: the paper's (ρ₀ = 0.1, 300
iterations, 10 CG iterations).
"""

from __future__ import annotations

import torch

from iobs.obs.refit import damped_hessian, pcg_refit
from iobs.obs.scores import score_mask


def _rho_update(rho: float, change: float, grown: bool) -> tuple[float, str]:
    """The ρ rule: (new ρ, action) with action one of 'grow', 'restart', 'stop'."""
    if change > 0.1:
        return rho * 1.3, "grow"
    if change > 0.005:
        return rho * 1.2, "grow"
    if change > 0:
        return (rho * 1.1, "grow") if grown else (rho / 5, "restart")
    return (rho, "stop") if grown else (rho / 5, "restart")


def alps(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    *,
    per_row: bool = False,
    percdamp: float = 0.01,
    rho: float = 0.1,
    max_iters: int = 300,
    min_iters: int = 30,
    update_every: int = 3,
    pcg_iters: int = 10,
    name: str = "H",
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """ALPS on W (d_out, d_in) against H = X Xᵀ (see module). Returns (Ŵ, mask, info), info = ADMM
    iterations, final ρ and the damping λ used."""
    Hl, dead = damped_hessian(H, percdamp, name)
    s = Hl.H.diagonal().sqrt()
    Hn = Hl.H / (s[:, None] * s[None, :])
    Wn = W.masked_fill(dead[None, :], 0) * s
    lam, Q = torch.linalg.eigh(Hn.double())

    def project(M):
        keep = score_mask(M.abs(), sparsity, nm, per_row=per_row)
        return M * keep, keep

    def inv(r):
        return (Q * (1 / (lam + r))) @ Q.T

    YH = Wn @ Hn
    D0, keep0 = project(Wn)
    D, keep, V, Hinv = D0, keep0, torch.zeros_like(Wn), inv(rho).to(Wn)
    k = max(1, int(keep0.sum()))
    prev, grown, it = keep0, False, 0
    for it in range(1, max_iters + 1):
        B = (YH - V + rho * D) @ Hinv
        D, keep = project(B + V / rho)
        V = V + rho * (B - D)
        if it % update_every:
            continue
        change = float((keep ^ prev).sum()) / k
        prev = keep
        if it >= min_iters and change < 3e-4:
            break
        rho, action = _rho_update(rho, change, grown)
        if action == "stop":
            break
        if action == "restart":
            D, keep, V = D0, keep0, torch.zeros_like(Wn)
        grown |= action == "grow"
        rho = min(rho, 1e6)
        Hinv = inv(rho).to(Wn)
    Wn_hat = pcg_refit(Wn, Hn, keep, W0=D, iters=pcg_iters)
    return Wn_hat / s, keep, {"iterations": it, "rho": rho, "damping": Hl.lam}
