"""Sparsity masks. ``True`` = kept. Ties are broken deterministically (lower index kept first)."""

from __future__ import annotations

import torch

from iobs._validate import check_k, parse_nm

#: rows up to this length are ranked by a stable sort, longer ones by a selection
SORT_MAX = 1024


def keep_top(score: torch.Tensor, k) -> torch.Tensor:
    """The one top-k kernel: mask keeping the ``k`` largest scores along the last dim; ``k`` an int or a
    tensor of per-row counts (0 up to the row length). Ties keep the lower index. An int ``k`` on rows
    longer than ``SORT_MAX`` takes a selection (kthvalue, O(n)) instead of a stable sort (same mask)."""
    n = score.shape[-1]
    if not torch.is_tensor(k) and n <= SORT_MAX and 0 < k < n:  # short rows: one sort is faster
        order = torch.sort(score, dim=-1, descending=True, stable=True).indices[..., :k]
        return torch.zeros_like(score, dtype=torch.bool).scatter_(-1, order, True)
    if torch.is_tensor(k):
        order = torch.sort(score, dim=-1, descending=True, stable=True).indices
        ranks = torch.empty_like(order)
        ranks.scatter_(-1, order, torch.arange(n, device=score.device).expand_as(order))
        return ranks < k.to(ranks.device).unsqueeze(-1)
    p = n - int(k)  # pruned per row
    if p <= 0:
        return torch.ones_like(score, dtype=torch.bool)
    if p >= n:
        return torch.zeros_like(score, dtype=torch.bool)
    t = torch.kthvalue(score, p, dim=-1, keepdim=True).values  # the p-th smallest score
    below = score < t
    tied = score == t
    need = p - below.sum(-1, keepdim=True)  # how many of the ties to prune: the highest indices
    if bool((need == tied.sum(-1, keepdim=True)).all()):
        return ~(below | tied)
    from_right = tied.flip(-1).cumsum(-1).flip(-1)  # ties at this index or later
    return ~(below | (tied & (from_right <= need)))


def topk_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Support of T_k: keep the ``k`` entries of largest ``score`` over the whole tensor."""
    k = check_k(k, score.numel())
    return keep_top(score.reshape(-1), k).reshape(score.shape)


def hard_threshold(theta: torch.Tensor, k: int) -> torch.Tensor:
    """T_k(theta): keep the k entries of largest magnitude, zero the rest."""
    return theta * topk_mask(theta.abs(), k)


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M mask along the last dim: in every group of ``m`` consecutive entries keep the ``n`` largest."""
    n, m = parse_nm((n, m))
    cols = score.shape[-1]
    if cols % m:
        raise ValueError(f"row length {cols} is not divisible by M={m} of the {n}:{m} pattern")
    groups = score.reshape(*score.shape[:-1], cols // m, m)
    return keep_top(groups, n).reshape(score.shape)


def check_nm(mask: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive entries (last dim) keeps at most ``n``."""
    groups = mask.reshape(*mask.shape[:-1], mask.shape[-1] // m, m)
    return bool((groups.sum(-1) <= n).all())
