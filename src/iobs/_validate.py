"""Argument checks shared by every layer: each error names the parameter, the value and what is allowed."""

from __future__ import annotations

import math
import operator

import torch


def check_int_range(name: str, value, low: int, high: int) -> int:
    """``low <= value <= high`` for an integer ``value``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer in [{low}, {high}], got {value!r}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value}")
    return value


def check_k(k, d: int, name: str = "k") -> int:
    """Number of kept entries: an integer with 1 <= k <= d."""
    return check_int_range(name, k, 1, d)


def check_sparsity(sparsity, name: str = "sparsity") -> float:
    """Fraction of pruned weights: a finite float in [0, 1)."""
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in [0, 1), got {sparsity!r}") from None
    if not math.isfinite(s) or not 0.0 <= s < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {sparsity!r}")
    return s


def n_pruned(sparsity: float, n: int) -> int:
    """How many of ``n`` entries a sparsity fraction removes: floor(s * n) (robust to 0.29*100)."""
    return int(math.floor(sparsity * n + 1e-9))


def parse_nm(pattern: str | tuple[int, int], name: str = "pattern") -> tuple[int, int]:
    """Parse an N:M pattern ("2:4" = keep 2 of every 4 consecutive weights); requires 0 < N < M."""
    if isinstance(pattern, str):
        parts = pattern.split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(
                f"{name} must look like 'N:M' with integers 0 < N < M (e.g. '2:4'), got {pattern!r}"
            )
        n, m = (int(p) for p in parts)
    else:
        n, m = (int(p) for p in pattern)
    if not 0 < n < m:
        raise ValueError(f"{name} must be N:M with 0 < N < M (e.g. 2:4), got {n}:{m}")
    return n, m


def check_finite(name: str, t: torch.Tensor) -> torch.Tensor:
    """Reject NaN/Inf entries."""
    if not torch.is_tensor(t):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN/Inf entries; all entries must be finite")
    return t


def check_shape(name: str, t: torch.Tensor, shape: tuple) -> torch.Tensor:
    """``t.shape`` must equal ``shape``; ``None`` entries match anything."""
    ok = t.dim() == len(shape) and all(s is None or s == a for s, a in zip(shape, t.shape))
    if not ok:
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    return t
