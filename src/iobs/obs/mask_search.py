"""Mask search by I-OBS iterations on the layer quadratic, warm-started from a given mask (SparseGPT's).

Every row w of W is its own sparse least-squares problem f(ŵ) = (ŵ − w)ᵀ H_λ (ŵ − w) (H_λ: the damped
H of :func:`iobs.obs.refit.damped_hessian`). Starting from ŵ = the re-fit on the warm-start mask Q, one
iteration per row:

1. working set 𝒲 = Q ∪ A, A = the ``add`` coordinates outside Q of largest second-order gain
   g_j² / (H_λ)_jj with g = H_λ (ŵ − w) (the decrease of f from re-optimising coordinate j alone);
2. the exact minimiser θ⁺ on 𝒲: (H_λ)_𝒲𝒲 θ⁺ = (H_λ w)_𝒲 (one Cholesky per row, m = |𝒲|);
3. the OBS projection back to the row's budget: greedy removal with exact updates
   (:func:`iobs.obs.projection.greedy_remove`) from θ⁺ with (H_λ)_𝒲𝒲⁻¹, under the budget of the row
   (unstructured: the row keeps |Q|) or of each group of M (N:M: every group keeps N).

A row's step is accepted only when it lowers the row's error tr under the *undamped* H (the reported
layer error ‖(W − Ŵ)X‖² is the sum of the row errors), so the layer error never rises above the warm
start's; a row whose step is refused stops. Rows are independent and are searched ``chunk`` at a time.
"""

from __future__ import annotations

import torch

from iobs._validate import check_int_range
from iobs.obs.damping import cholesky_or_raise
from iobs.obs.projection import greedy_remove, obs_project, restricted, support_index
from iobs.obs.refit import damped_hessian

#: layer solvers ``prune_layer(method="mask-search")`` can start from (``search={"warm": ...}``)
WARM_STARTS = ("sparsegpt", "alps", "wanda", "magnitude")


def row_errors(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """(ŵ_r − w_r)ᵀ H (ŵ_r − w_r) for every row r."""
    D = W_hat - W
    return ((D @ H) * D).sum(1)


def _groups(keep: torch.Tensor, nm):
    """Group id of every coordinate and each group's kept budget (one group per row when unstructured)."""
    r, d = keep.shape
    if nm is None:
        return torch.zeros(r, d, dtype=torch.long, device=keep.device), keep.sum(1, keepdim=True)
    N, M = nm
    group = (torch.arange(d, device=keep.device) // M).expand(r, d)
    return group, torch.full((r, d // M), N, dtype=torch.long, device=keep.device)


def iobs_step(w, w_hat, keep, Hl, add: int, nm):
    """One I-OBS iteration (working set, exact minimiser, OBS projection) for rows (c, d). Returns the
    candidate (ŵ, keep)."""
    c, d = w.shape
    gain = ((w_hat - w) @ Hl).square() / Hl.diagonal()
    gain = gain.masked_fill(keep, -float("inf"))
    a = min(add, d - int(keep.sum(1).min()))
    cand = torch.zeros_like(keep).scatter_(1, gain.topk(a, dim=1).indices, True) & ~keep
    work = keep | cand
    idx, valid = support_index(work)
    L = cholesky_or_raise(restricted(Hl, idx, valid), "H_λ restricted to the working set")
    b = ((w @ Hl).gather(1, idx) * valid)[:, :, None]
    theta = torch.cholesky_solve(b, L).squeeze(-1) * valid
    group, cap = _groups(keep, nm)
    group = group.gather(1, idx).masked_fill(~valid, -1)
    theta, alive = greedy_remove(theta, torch.cholesky_inverse(L), group, cap)
    new_keep = torch.zeros_like(keep).scatter_(1, idx, alive)
    return torch.zeros_like(w).scatter_add_(1, idx, theta * alive), new_keep


def mask_search(
    W: torch.Tensor,
    H: torch.Tensor,
    mask: torch.Tensor,
    nm: tuple[int, int] | None = None,
    *,
    W0: torch.Tensor | None = None,
    add: int = 16,
    iters: int = 3,
    percdamp: float = 0.01,
    chunk: int = 256,
    name: str = "H",
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """I-OBS mask search from ``mask`` (see module). ``W0``: the warm start's weights (default: W ⊙ mask);
    a row starts from the re-fit on its mask only where that beats W0 in the undamped error. Returns
    (Ŵ, mask, info), info = iterations run; every row keeps its warm-start count (N:M: N per group)."""
    check_int_range("add", add, 1, 1 << 30)
    check_int_range("iters", iters, 0, 1 << 30)
    check_int_range("chunk", chunk, 1, 1 << 30)
    Hl, dead = damped_hessian(H, percdamp, name)
    Hl, Herr = Hl.H, H
    W = W.masked_fill(dead[None, :], 0)
    W_hat = obs_project(W, Hl, mask)
    W0 = (W * mask) if W0 is None else W0.to(W).masked_fill(~mask, 0)
    worse = row_errors(W, W_hat, Herr) > row_errors(W, W0, Herr)
    W_hat[worse] = W0[worse]
    out_w, out_m, steps = W_hat.clone(), mask.clone(), 0
    for s in range(0, W.shape[0], chunk):
        sl = slice(s, s + chunk)
        out_w[sl], out_m[sl], n = _search_rows(W[sl], W_hat[sl], mask[sl], Hl, Herr, nm, add, iters)
        steps = max(steps, n)
    return out_w, out_m, {"iterations": steps}


def _search_rows(w, w_hat, keep, Hl, Herr, nm, add, iters):
    """The accept-if-better loop of ``mask_search`` on a chunk of rows."""
    err = row_errors(w, w_hat, Herr)
    active = torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
    done = 0
    for _ in range(iters):
        rows = active.nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        cw, ck = iobs_step(w[rows], w_hat[rows], keep[rows], Hl, add, nm)
        e = row_errors(w[rows], cw, Herr)
        better = e < err[rows]
        sel = rows[better]
        w_hat[sel], keep[sel], err[sel] = cw[better], ck[better], e[better]
        active[rows[~better]] = False
        done += 1
    return w_hat, keep, done
