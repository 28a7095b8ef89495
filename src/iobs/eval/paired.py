"""Paired comparison of two classifiers on the same test samples (exact McNemar test).

b = samples only A gets right, c = samples only B gets right. Under H0 (equal accuracy) the discordant
count b is Binomial(b + c, 1/2); the two-sided exact p-value is min(1, 2·P(X ≤ min(b, c))).
"""

from __future__ import annotations

from math import comb

import torch


def mcnemar(right_a: torch.Tensor, right_b: torch.Tensor) -> dict:
    """{"only_a", "only_b", "p"} for two boolean per-sample correctness vectors of equal length."""
    right_a, right_b = torch.as_tensor(right_a), torch.as_tensor(right_b)
    if right_a.dtype != torch.bool or right_b.dtype != torch.bool:
        raise ValueError("mcnemar: right_a and right_b must be boolean vectors")
    if right_a.shape != right_b.shape or right_a.dim() != 1:
        raise ValueError(
            f"mcnemar: right_a and right_b must be 1-D of equal length, got {tuple(right_a.shape)} "
            f"and {tuple(right_b.shape)}"
        )
    b = int((right_a & ~right_b).sum())
    c = int((right_b & ~right_a).sum())
    n = b + c
    tail = sum(comb(n, i) for i in range(min(b, c) + 1)) / 2**n if n else 1.0
    return {"only_a": b, "only_b": c, "p": min(1.0, 2.0 * tail)}
