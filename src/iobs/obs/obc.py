"""OBC (Frantar & Alistarh 2022): exact greedy OBS per row, every row from the same damped H_λ⁻¹.

A thin layer over ``iobs.obs.projection.greedy_obs`` (the one implementation of the greedy removal
formula): this module adds damping (``iobs.obs.damping``, dead inputs zeroed as in SparseGPT), the
per-row budgets and the memory plan.

Budget. Rows are solved independently. With ``per_row`` every row loses floor(s·cols); with a
per-layer budget P = floor(s·rows·cols) the rows lose floor(P/rows) or one more (the first P mod rows
rows), so the layer total is exact. (OBC's cross-row allocation by per-row loss traces is not done.)

Cost. Each row carries its own d_in × d_in inverse, downdated after each removal: memory
chunk·d_in²·8 bytes (rows are solved ``chunk`` at a time within ``memory_bytes``), time about
rows · removals · d_in² multiply-adds. The work is done in float64, because the explicit inverse
downdates lose accuracy in float32. Layers with d_in² · 8 > ``memory_bytes`` are refused.
"""

from __future__ import annotations

import torch

from iobs.obs.damping import damped_inverse
from iobs.obs.projection import greedy_obs
from iobs.obs.scores import row_budgets

OBC_MEMORY_BYTES = 1 << 29  # per chunk of rows; greedy_obs's temporaries add about as much again


def obc(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    *,
    per_row: bool = False,
    percdamp: float = 0.01,
    name: str = "H",
    memory_bytes: int = OBC_MEMORY_BYTES,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Prune W (d_out, d_in) against H = X Xᵀ by greedy OBS. Returns (Ŵ in W's dtype, mask, λ)."""
    rows, cols = W.shape
    per_row_bytes = cols * cols * 8
    if per_row_bytes > memory_bytes:
        raise ValueError(
            f"obc needs a d_in x d_in float64 inverse per row: d_in={cols} takes "
            f"{per_row_bytes / 2**20:.0f} MiB per row, more than memory_bytes="
            f"{memory_bytes / 2**20:.0f} MiB; use method='sparsegpt' for layers this wide"
        )
    chunk = max(1, min(rows, memory_bytes // per_row_bytes))
    H64 = H.to(torch.float64)
    Hinv, lam = damped_inverse(H64, percdamp, name=name)
    W64 = W.to(torch.float64).clone()
    W64[:, torch.diagonal(H64) == 0] = 0  # dead inputs (see iobs.obs.damping)
    if nm is not None:
        W_new, mask = greedy_obs(W64, Hinv, nm=nm, chunk_rows=chunk)
        return W_new.to(W.dtype), mask, lam
    counts = row_budgets(sparsity, rows, cols, per_row, device=W.device)
    W_new = torch.empty_like(W64)
    mask = torch.empty(rows, cols, dtype=torch.bool, device=W.device)
    for c in torch.unique(counts).tolist():
        idx = (counts == c).nonzero().squeeze(1)
        W_new[idx], mask[idx] = greedy_obs(W64[idx], Hinv, n_prune=int(c), chunk_rows=chunk)
    return W_new.to(W.dtype), mask, lam
