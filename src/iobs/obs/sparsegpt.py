"""SparseGPT (Frantar & Alistarh 2023): approximate OBS for a whole layer in one pass over the columns.

Columns are pruned left to right. With U the upper Cholesky factor of H_λ⁻¹ (``inverse_cholesky``),
processing column i sets q = w_i·mask_i, err = (w_i − q)/U_ii and updates the later columns
W[:, j] -= err·U_ij (j > i): the OBS compensation of removing w_i given that columns < i are fixed.

Updates are lazy and batched: inside a block of ``blocksize`` columns the rank-1 updates touch only a
sub-block of ``INNER`` columns; the rest of the block, then all columns after the block, receive the
accumulated errors as one matrix product (Err · U[block, later]). The arithmetic equals the plain
column-by-column update.

Mask rule. N:M: at the first column of every group of M, keep the N largest of w²/U_ii² in each row,
using the weights as updated so far. Unstructured: the mask of a block is chosen when the block
starts, from w²/U_ii² of the updated weights, with an exact budget per block so that the layer gets
exactly floor(s·rows·cols) (per layer) or every row floor(s·cols) (``per_row``) pruned:
block [i1, i2) prunes floor(s·R·i2) − floor(s·R·i1) weights chosen over the whole block
(R = rows), or floor(s·i2) − floor(s·i1) in every row. Ties keep the lower index (row-major).

The loop runs on Wᵀ so that a column of W and every update are contiguous in memory. Dead inputs
(H_jj = 0) are zeroed first, as in SparseGPT (see iobs.obs.damping).
"""

from __future__ import annotations

import torch

from iobs._validate import n_pruned
from iobs.obs.damping import inverse_cholesky
from iobs.obs.masks import keep_top

INNER = 32  # columns per sub-block for the rank-1 updates


def _block_mask(score: torch.Tensor, sparsity: float, i1: int, i2: int, per_row: bool) -> torch.Tensor:
    rows = score.shape[0]
    if per_row:
        p = n_pruned(sparsity, i2) - n_pruned(sparsity, i1)
        return keep_top(score, score.shape[1] - p)
    p = n_pruned(sparsity, rows * i2) - n_pruned(sparsity, rows * i1)
    return keep_top(score.reshape(-1), score.numel() - p).reshape(score.shape)


def sparsegpt(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    *,
    per_row: bool = False,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "H",
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Prune W (d_out, d_in) against H = X Xᵀ. Returns (Ŵ, mask, λ). Inputs are validated by prune_layer.

    W and H must share dtype and device; W is not modified.
    """
    rows, cols = W.shape
    U, lam = inverse_cholesky(H, percdamp, name=name)
    # Work on Wᵀ (cols, rows): every column of W is a contiguous row, every update a contiguous slab.
    Wt = W.t().clone(memory_format=torch.contiguous_format)  # a copy even when W is a transposed view
    Wt[torch.diagonal(H) == 0] = 0  # dead inputs (see iobs.obs.damping)
    keep_t = torch.ones_like(Wt, dtype=torch.bool)
    B, inner = int(blocksize), INNER
    if nm is not None:
        n, m = nm
        B = -(-B // m) * m
        inner = -(-inner // m) * m
    inner = min(inner, B)
    for i1 in range(0, cols, B):
        i2 = min(i1 + B, cols)
        W1 = Wt[i1:i2]  # a view: updated in place
        U1 = U[i1:i2, i1:i2]
        d = torch.diagonal(U1)
        Err1 = torch.empty_like(W1)
        keep1 = keep_t[i1:i2]
        if nm is None:
            keep1.copy_(_block_mask((W1 / d[:, None]).square().t(), sparsity, i1, i2, per_row).t())
            prune_scale = (~keep1).to(W1.dtype) / d[:, None]  # err = w·[pruned]/U_ii
        w_rows, err_rows = W1.unbind(0), Err1.unbind(0)  # views made once per block, not per column
        if nm is None:
            ps_rows = prune_scale.unbind(0)
        for j1 in range(0, i2 - i1, inner):
            j2 = min(j1 + inner, i2 - i1)
            for i in range(j1, j2):
                if nm is not None and i % m == 0:  # the group's mask, from the weights updated so far
                    score = (W1[i : i + m] / d[i : i + m, None]).square()
                    keep1[i : i + m] = keep_top(score.t(), n).t()
                    ps_group = ((~keep1[i : i + m]).to(W1.dtype) / d[i : i + m, None]).unbind(0)
                torch.mul(w_rows[i], ps_rows[i] if nm is None else ps_group[i % m], out=err_rows[i])
                W1[i:j2].addr_(U1[i, i:j2], err_rows[i], alpha=-1)
            if j2 < i2 - i1:
                W1[j2:].addmm_(U1[j1:j2, j2:].t(), Err1[j1:j2], alpha=-1)
        if i2 < cols:
            Wt[i2:].addmm_(U[i1:i2, i2:].t(), Err1, alpha=-1)
    Wt.masked_fill_(~keep_t, 0)
    return Wt.t().contiguous(), keep_t.t().contiguous(), lam
