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
(R = rows), or floor(s·i2) − floor(s·i1) in every row.
"""

from __future__ import annotations

import torch

from iobs._validate import n_pruned
from iobs.obs.damping import inverse_cholesky
from iobs.obs.scores import keep_top

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
    W = W.clone()
    W[:, torch.diagonal(H) == 0] = 0  # dead inputs (see iobs.obs.damping)
    mask = torch.ones_like(W, dtype=torch.bool)
    B, inner = int(blocksize), INNER
    if nm is not None:
        n, m = nm
        B = -(-B // m) * m
        inner = -(-inner // m) * m
    inner = min(inner, B)
    for i1 in range(0, cols, B):
        i2 = min(i1 + B, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        d = torch.diagonal(U1)
        Err1 = torch.zeros_like(W1)
        if nm is None:
            keep1 = _block_mask(W1.square() / d.square(), sparsity, i1, i2, per_row)
        else:
            keep1 = torch.ones_like(W1, dtype=torch.bool)
        for j1 in range(0, i2 - i1, inner):
            j2 = min(j1 + inner, i2 - i1)
            for i in range(j1, j2):
                if nm is not None and i % m == 0:
                    keep1[:, i : i + m] = keep_top(W1[:, i : i + m].square() / d[i : i + m].square(), n)
                err = W1[:, i].masked_fill(keep1[:, i], 0) / d[i]
                W1[:, i:j2].addr_(err, U1[i, i:j2], alpha=-1)
                Err1[:, i] = err
            if j2 < i2 - i1:
                W1[:, j2:].addmm_(Err1[:, j1:j2], U1[j1:j2, j2:], alpha=-1)
        W[:, i1:i2] = W1.masked_fill_(~keep1, 0)
        mask[:, i1:i2] = keep1
        if i2 < cols:
            W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1)
    return W, mask, lam
