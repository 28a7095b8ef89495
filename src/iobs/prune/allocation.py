"""Layer-wise sparsity allocation under an exact global budget: uniform, OWL, error-driven.

The layers l = 1..L (n_l weights each) share one budget: K = floor(s · Σ n_l) pruned weights in all.
An allocation gives every layer an integer count k_l with Σ k_l = K exactly, passed to the layer solver
as the fraction k_l / n_l (which prunes floor(k_l / n_l · n_l) = k_l). ``uniform`` is no allocation:
every layer prunes floor(s · n_l) (the solver's default path, untouched).

* ``owl`` (Yin et al. 2024, "Outlier Weighed Layerwise sparsity"): the outlier density of a unit (a
  decoder block, as in OWL: all its layers pooled) is D = the fraction of its Wanda scores
  |W_ij|·‖X_j‖₂ above M · their mean. Units with more outliers keep more: r_u = 2λ (D_u − min D) /
  (max D − min D), s_u = s + r̄ − r_u with r̄ the weight-count-weighted mean of r (so Σ s_u n_u = s Σ n_u),
  clipped to [0, MAX_SPARSITY] with one common shift c re-found so the sum still holds.
* ``error``: each layer's error e_l(k) measured at a few sparsities (the layer solver's own error,
  relative ‖(W−Ŵ)X‖²/‖WX‖² or absolute); on the lower convex hull of these points, Σ e_l is minimised
  by filling the budget with the cheapest segments first (equal marginal error per removed weight).

Pure functions on numbers; :func:`plan` runs the dense pre-pass (iobs.prune.decoder) that measures D
and e_l and returns the per-layer map for :class:`iobs.prune.solve.LayerSolver`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from iobs._validate import check_sparsity, n_pruned

ALLOCATIONS = ("uniform", "owl", "error")  # the one vocabulary of --allocation
ERROR_NORMS = ("relative", "absolute")
MAX_SPARSITY = 0.99  # no layer is allocated more than this
#: the allocation's parameters and their defaults (OWL's typical λ = 0.08, M = 5)
PARAMS = {
    "owl_lambda": 0.08,
    "owl_m": 5.0,
    "alloc_step": 0.1,
    "alloc_points": 2,
    "alloc_error": "relative",
    "alloc_curves": "solver",
}
CURVES = ("solver", "sparsegpt")  # error: whose layer errors (the walk's solver, or SparseGPT's: cheaper)


def check_params(allocation: str, sparsity: float, params: dict) -> dict:
    """:data:`PARAMS` updated by ``params``, range-checked; each error names the parameter."""
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    unknown = set(params) - set(PARAMS)
    if unknown:
        raise TypeError(f"unknown allocation parameters {sorted(unknown)}; allowed: {', '.join(PARAMS)}")
    p = {**PARAMS, **params}
    s = check_sparsity(sparsity)
    if s > MAX_SPARSITY and allocation != "uniform":
        raise ValueError(
            f"sparsity {s} is above the allocation's per-layer maximum {MAX_SPARSITY}: allocation "
            f"{allocation!r} cannot meet that budget"
        )
    for name, lo, hi in (("owl_lambda", 0.0, 0.5), ("alloc_step", 1e-6, 0.5)):
        v = p[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}], got {v!r}")
    M = p["owl_m"]
    if isinstance(M, bool) or not isinstance(M, (int, float)) or not (math.isfinite(M) and M > 0):
        raise ValueError(f"owl_m must be a finite number > 0 (outliers: score > M · mean), got {M!r}")
    k = p["alloc_points"]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 20:
        raise ValueError(f"alloc_points must be an integer in [1, 20], got {k!r}")
    if p["alloc_curves"] not in CURVES:
        raise ValueError(f"alloc_curves must be one of {', '.join(CURVES)}, got {p['alloc_curves']!r}")
    if p["alloc_error"] not in ERROR_NORMS:
        raise ValueError(f"alloc_error must be one of {', '.join(ERROR_NORMS)}, got {p['alloc_error']!r}")
    return p


def global_budget(sparsity: float, numels: Sequence[int]) -> int:
    """K = floor(s · Σ n_l): the weights pruned in all layers together."""
    return n_pruned(check_sparsity(sparsity), int(sum(numels)))


def round_to_total(x: Sequence[float], total: int, lo: Sequence[int], hi: Sequence[int]) -> list[int]:
    """Integers k_l in [lo_l, hi_l] with Σ k_l = total, nearest to x (largest remainders first, ties by
    index)."""
    if sum(lo) > total or sum(hi) < total:
        raise ValueError(
            f"a budget of {total} pruned weights cannot be met with per-layer counts summing to "
            f"[{sum(lo)}, {sum(hi)}]"
        )
    k = [min(max(math.floor(v), a), b) for v, a, b in zip(x, lo, hi)]
    d = total - sum(k)
    frac = [v - math.floor(v) for v in x]
    order = sorted(range(len(k)), key=lambda i: (-frac[i], i) if d > 0 else (frac[i], i))
    while d:
        moved = False
        for i in order:
            if d == 0:
                break
            step = 1 if d > 0 else -1
            if lo[i] <= k[i] + step <= hi[i]:
                k[i] += step
                d -= step
                moved = True
        if not moved:  # unreachable given the check above
            raise RuntimeError("round_to_total could not place the remainder")
    return k


def outlier_density(scores: Sequence, M: float) -> float:
    """D = fraction of the unit's scores (tensors, pooled) above M · their mean."""
    numel = sum(t.numel() for t in scores)
    mean = sum(float(t.double().sum()) for t in scores) / numel
    return sum(int((t > M * mean).sum()) for t in scores) / numel


def owl_sparsities(
    density: Sequence[float], unit_numels: Sequence[int], sparsity: float, lam: float
) -> list[float]:
    """Per-unit sparsity s_u = clip(s + r̄ − r_u + c, 0, MAX_SPARSITY), r_u = 2λ(D_u − min D)/(max D − min D),
    r̄ its n-weighted mean, c = 0 unless clipping: then the c with Σ s_u n_u = s Σ n_u (bisection)."""
    s = check_sparsity(sparsity)
    if not 0 <= lam <= 0.5:
        raise ValueError(f"owl_lambda must be a number in [0, 0.5], got {lam!r}")
    lo, hi = min(density), max(density)
    r = [0.0 if hi == lo else 2 * lam * (d - lo) / (hi - lo) for d in density]
    N = sum(unit_numels)
    base = [s + sum(ri * n for ri, n in zip(r, unit_numels)) / N - ri for ri in r]

    def at(c):
        return [min(max(b + c, 0.0), MAX_SPARSITY) for b in base]

    def excess(c):
        return sum(v * n for v, n in zip(at(c), unit_numels)) - s * N

    if all(0.0 <= b <= MAX_SPARSITY for b in base):
        return base
    a, b = -1.0, 1.0  # excess(-1) < 0 < excess(1) since 0 <= s <= MAX_SPARSITY
    for _ in range(200):
        m = 0.5 * (a + b)
        a, b = (m, b) if excess(m) < 0 else (a, m)
    return at(0.5 * (a + b))


def counts_from_sparsities(sparsities: Sequence[float], numels: Sequence[int], sparsity: float) -> list[int]:
    """Integer pruned counts nearest to s_l · n_l with Σ k_l = floor(s · Σ n_l) exactly."""
    total = global_budget(sparsity, numels)
    hi = [n_pruned(MAX_SPARSITY, n) for n in numels]
    return round_to_total([v * n for v, n in zip(sparsities, numels)], total, [0] * len(numels), hi)


def error_grid(sparsity: float, step: float, points: int) -> list[float]:
    """Sparsities s + j·step, j = −points..points, inside [0, MAX_SPARSITY] (s itself always included)."""
    g = {round(sparsity + j * step, 12) for j in range(-points, points + 1)}
    return sorted(v for v in g if 0.0 <= v <= MAX_SPARSITY)


def lower_hull(points: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """Lower convex hull of (k, e) points sorted by k (monotone chain; collinear points dropped)."""
    hull: list[tuple[int, float]] = []
    for p in sorted(set(points)):
        if hull and hull[-1][0] == p[0]:  # same k: keep the lower error
            if p[1] >= hull[-1][1]:
                continue
            hull.pop()
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):  # hull[-1] on or above the chord
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def error_counts(curves: Sequence[Sequence[tuple[int, float]]], total: int) -> list[int]:
    """Counts k_l minimising Σ e_l(k_l) (e_l piecewise linear on its lower hull) with Σ k_l = total:
    every layer starts at its smallest measured k; hull segments are taken cheapest slope (Δe/Δk)
    first, the last one partly."""
    hulls = [lower_hull(c) for c in curves]
    k = [h[0][0] for h in hulls]
    room = sum(h[-1][0] for h in hulls)
    if not sum(k) <= total <= room:
        raise ValueError(
            f"a budget of {total} pruned weights is outside what the measured sparsities cover "
            f"[{sum(k)}, {room}]: widen alloc_step or alloc_points"
        )
    segs = [
        ((e2 - e1) / (k2 - k1), l, k2 - k1)
        for l, h in enumerate(hulls)
        for (k1, e1), (k2, e2) in zip(h, h[1:])
    ]
    left = total - sum(k)
    for _, l, width in sorted(segs, key=lambda t: (t[0], t[1])):
        if left == 0:
            break
        take = min(width, left)
        k[l] += take
        left -= take
    return k


# --- the pre-pass: statistics of the dense model, then the per-layer map ---------------------------


@dataclass
class DenseStats:
    """What the pre-pass measured on the dense model: layer names, weight counts, block of each layer,
    OWL outlier density per block for each M (``density[M][block]``), and per layer ``curves[name]`` =
    [(k, ‖(W−Ŵ)X‖²), ...] of the solver at the grid sparsities with ``norms[name]`` = ‖WX‖²."""

    names: list[str] = field(default_factory=list)
    numels: list[int] = field(default_factory=list)
    unit_of: list[int] = field(default_factory=list)
    density: dict[float, dict[int, float]] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    norms: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def layer_curve(solver, W, H, name: str, grid: Sequence[float]) -> list[tuple[int, float]]:
    """(k, ‖(W−Ŵ)X‖²) of ``solver`` on one layer at each sparsity of ``grid`` (k = floor(g·n) pruned)."""
    out = []
    for g in grid:
        k = n_pruned(g, W.numel())
        one = dataclasses.replace(solver, sparsity=g, pattern=None, layer_sparsity=None)
        out.append((k, 0.0 if k == 0 else float(one(W.clone(), H, name).error)))
    return out


def dense_stats(model, calib_ids, *, Ms=(), solver=None, grid=(), include=None, exclude=None, device=None):
    """One pass over the dense blocks (:func:`iobs.prune.decoder.dense_block_hessians`): the OWL densities
    for every M in ``Ms`` and, with ``solver``, its layer errors at every sparsity of ``grid``."""
    from iobs.obs.scores import wanda_score
    from iobs.prune.decoder import dense_block_hessians
    from iobs.prune.layers import get_weight

    t0, st = time.perf_counter(), DenseStats()
    for i, layers, acc in dense_block_hessians(
        model, calib_ids, include=include, exclude=exclude, device=device
    ):
        scores = []
        for name, module in layers.items():
            a = acc[name]
            if a.tokens == 0:
                raise ValueError(
                    f"layer {name} received no input during the calibration forward pass; exclude it"
                )
            W = get_weight(module).to(a.H.dtype)
            st.names.append(name), st.numels.append(W.numel()), st.unit_of.append(i)
            if Ms:
                scores.append(wanda_score(W, a.H))
            if solver is not None:
                st.curves[name] = layer_curve(solver, W, a.H, name, grid)
                st.norms[name] = float((W @ a.H * W).sum())
            a.H = None
        for M in Ms:
            st.density.setdefault(M, {})[i] = outlier_density(scores, M)
    st.seconds = time.perf_counter() - t0
    return st


def allocate(st: DenseStats, allocation: str, sparsity: float, **params):
    """(layer_sparsity map for LayerSolver, report entry) of ``allocation`` at global ``sparsity`` from the
    pre-pass ``st`` (``params``: any of :data:`PARAMS`; error: only the curve points at s ± j·alloc_step,
    j ≤ alloc_points)."""
    p = check_params(allocation, sparsity, params)
    s, owl_lambda, owl_m, alloc_error = sparsity, p["owl_lambda"], p["owl_m"], p["alloc_error"]
    if allocation == "owl":
        units = sorted(set(st.unit_of))
        unit_n = [sum(n for n, u in zip(st.numels, st.unit_of) if u == v) for v in units]
        dens = [st.density[owl_m][u] for u in units]
        s_unit = dict(zip(units, owl_sparsities(dens, unit_n, s, owl_lambda)))
        counts = counts_from_sparsities([s_unit[u] for u in st.unit_of], st.numels, s)
        info = {"lambda": owl_lambda, "M": owl_m, "density": dict(zip(map(str, units), dens))}
    elif allocation == "error":
        grid = error_grid(s, p["alloc_step"], p["alloc_points"])
        curves = [_curve(st, n, m, grid, alloc_error) for n, m in zip(st.names, st.numels)]
        counts = error_counts(curves, global_budget(s, st.numels))
        info = {
            "grid": grid,
            "error": alloc_error,
            "curves_of": p["alloc_curves"],
            "curves": dict(zip(st.names, curves)),
        }
    else:
        raise ValueError(f"allocation {allocation!r} has no plan: uniform keeps every layer at the sparsity")
    fractions = tuple((n, k / m) for n, k, m in zip(st.names, counts, st.numels))
    head = {
        "allocation": allocation,
        "sparsity": s,
        "budget": global_budget(s, st.numels),
        "pruned": sum(counts),
    }
    return fractions, {**head, **info, "layer_sparsity": dict(fractions), "seconds": st.seconds}


def _curve(st: DenseStats, name: str, numel: int, grid, norm: str) -> list[tuple[int, float]]:
    """The measured (k, e) of ``name`` at the grid's counts; e ÷ ‖WX‖² when ``norm`` is relative."""
    want = {n_pruned(g, numel) for g in grid}
    scale = st.norms[name] if norm == "relative" and st.norms[name] > 0 else 1.0
    pts = [(k, e / scale) for k, e in st.curves[name] if k in want]
    if len(pts) < len(want):
        raise ValueError(f"layer {name}: the pre-pass measured no error at some of the sparsities {grid}")
    return pts


def plan(
    model,
    calib_ids,
    solver,
    allocation: str,
    sparsity: float,
    *,
    include=None,
    exclude=None,
    device=None,
    **params,
):
    """:func:`allocate` after :func:`dense_stats` measured what ``allocation`` needs on the dense model
    (``params``: any of :data:`PARAMS`)."""
    p = check_params(allocation, sparsity, params)
    if allocation == "owl":
        need = {"Ms": (p["owl_m"],)}
    elif allocation == "uniform":
        raise ValueError("allocation 'uniform' has no plan: uniform keeps every layer at the sparsity")
    else:
        if p["alloc_curves"] == "sparsegpt":
            solver = dataclasses.replace(solver, method="sparsegpt", refit=False)
        need = {"solver": solver, "grid": error_grid(sparsity, p["alloc_step"], p["alloc_points"])}
    st = dense_stats(model, calib_ids, include=include, exclude=exclude, device=device, **need)
    return allocate(st, allocation, sparsity, **p)
