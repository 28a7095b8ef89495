"""Score-based pruning (no weight update): magnitude |W_ij| and Wanda |W_ij|·‖X_j‖₂, plus budget helpers.

Budgets (shared with the OBS solvers so that every method prunes exactly the same count):
* per layer: floor(s · rows · cols) weights pruned in total;
* per row:   floor(s · cols) in every row.
Wanda compares scores within each output row (as in its paper). With a per-layer budget the rows get
floor(P / rows) or one more (the first P mod rows rows), so the layer total is still exactly
floor(s · rows · cols). Magnitude with a per-layer budget compares over the whole matrix.
Ties are broken deterministically: among equal scores the lower index is kept (as iobs.obs.masks).
"""

from __future__ import annotations

import torch

from iobs._validate import n_pruned
from iobs.obs.masks import keep_top, nm_mask


def magnitude_score(W: torch.Tensor) -> torch.Tensor:
    """|W|."""
    return W.abs()


def wanda_score(W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """|W_ij| · ‖X_j‖₂ with ‖X_j‖₂ = sqrt(H_jj) for H = X Xᵀ."""
    return W.abs() * torch.diagonal(H).clamp_min(0).sqrt().to(W.dtype).unsqueeze(0)


def row_budgets(sparsity: float, rows: int, cols: int, per_row: bool, device=None) -> torch.Tensor:
    """Pruned count per row: floor(s·cols) each (per_row), or a split of floor(s·rows·cols) (per layer)."""
    if per_row:
        return torch.full((rows,), n_pruned(sparsity, cols), dtype=torch.long, device=device)
    total = n_pruned(sparsity, rows * cols)
    counts = torch.full((rows,), total // rows, dtype=torch.long, device=device)
    counts[: total % rows] += 1
    return counts


def score_mask(
    score: torch.Tensor,
    sparsity: float | None = None,
    nm: tuple[int, int] | None = None,
    per_row: bool = False,
    row_groups: bool = False,
) -> torch.Tensor:
    """Mask (True = kept) pruning the lowest scores.

    ``nm``: keep the N largest of every M consecutive entries in each row. Otherwise prune exactly
    floor(s·n): compared over the whole matrix when neither ``per_row`` nor ``row_groups``; within
    each row when ``row_groups`` (per-layer budget split over rows) or ``per_row`` (floor(s·cols) each).
    """
    if nm is not None:
        return nm_mask(score, *nm)
    rows, cols = score.shape
    if per_row or row_groups:
        pruned = row_budgets(sparsity, rows, cols, per_row, device=score.device)
        return keep_top(score, cols - pruned)
    return keep_top(score.reshape(-1), score.numel() - n_pruned(sparsity, score.numel())).reshape(score.shape)


def magnitude_mask(W, sparsity=None, nm=None, per_row=False) -> torch.Tensor:
    """Magnitude pruning mask: layer-wide comparison unless ``per_row``."""
    return score_mask(magnitude_score(W), sparsity, nm, per_row=per_row)


def wanda_mask(W, H, sparsity=None, nm=None, per_row=False) -> torch.Tensor:
    """Wanda mask: scores |W|·‖X_j‖ compared within each output row."""
    return score_mask(wanda_score(W, H), sparsity, nm, per_row=per_row, row_groups=True)
