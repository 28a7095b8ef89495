"""Local convergence on the logistic loss: I-OBS (quadratic) beside k-IHT (linear), the paper's theorem.

On a logistic problem with a planted k-sparse w* and n ≥ d, the reference point θ̂ is the maximum
likelihood fit on supp w* (damped Newton on that support to machine precision). Each solver starts
from θ0 = 0 and records e_t = ‖θ_t − θ̂‖/‖θ̂‖. Near θ̂ I-OBS is a Newton method on the fixed support:
e_{t+1} ≈ C e_t², so log e_t doubles per iteration (slope 2 in log e_{t+1} against log e_t);
k-IHT contracts e_{t+1} ≈ q e_t (slope 1).
"""

from __future__ import annotations

import math

import torch

from iobs.recovery.objectives import Logistic
from iobs.recovery.solvers import _fit_on_support, solve
from iobs.recovery.synthetic import logistic_problem

__all__ = ["logistic_convergence", "fitted_slopes", "convergence_figure", "slope_rows"]

SOLVERS = (
    ("iobs", {}),
    ("restricted-iobs", {}),
    ("topk-iobs", {}),
    ("kiht", {}),
    ("kiht", {"step": "normalized"}),
)


def _label(name, opts):
    return name + ("(" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")" if opts else "")


def logistic_convergence(n=2000, d=100, k=5, scale=1.0, seed=0, max_iter=150, solvers=SOLVERS) -> dict:
    """Per solver the curve e_t (t = 0..), plus the problem's sizes; e_t below 1e-15 ends a curve."""
    X, y, w = logistic_problem(n, d, k, scale=scale, seed=seed)
    obj = Logistic(X, y)
    ref, _ = _fit_on_support(obj, w.clone(), w != 0, None, newton_iters=100, tol=1e-15)
    curves = {}
    for name, opts in solvers:
        res = solve(obj, k, solver=name, max_iter=max_iter, tol=0.0, theta_star=ref, **opts)
        e = [h["rel_distance"] for h in res.history]
        cut = next((i for i, v in enumerate(e) if v < 1e-15), len(e) - 1)
        curves[_label(name, opts)] = e[: cut + 1]
    return dict(n=n, d=d, k=k, seed=seed, curves=curves)


def fitted_slopes(curve: list[float], lo: float = 1e-13, hi: float = 1e-1) -> list[float]:
    """log e_{t+1} / log e_t on the steps with both errors in [lo, hi] (2: quadratic, → 1: linear)."""
    out = []
    for a, b in zip(curve, curve[1:]):
        if lo <= a <= hi and lo <= b <= hi:
            out.append(math.log(b) / math.log(a))
    return out


def convergence_figure(result: dict):
    """log10 e_t per iteration (left) and log e_{t+1} against log e_t with slopes 1 and 2 (right)."""
    from iobs.utils import subplots

    fig, (a, b) = subplots(1, 2, figsize=(11, 4.2))
    for label, e in result["curves"].items():
        e = torch.tensor(e, dtype=torch.float64).clamp_min(1e-17)
        a.semilogy(range(len(e)), e, marker="o", ms=3, label=label)
        b.loglog(e[:-1], e[1:], marker="o", ms=3, label=label)
    a.set(xlabel="iteration t", ylabel="‖θ_t − θ̂‖ / ‖θ̂‖", title="error per iteration (log scale)")
    xs = torch.logspace(-8, 0, 20, dtype=torch.float64)
    b.loglog(xs, xs, "k:", lw=1, label="slope 1 (linear)")
    b.loglog(xs, xs**2, "k--", lw=1, label="slope 2 (quadratic)")
    b.set(xlabel="e_t", ylabel="e_{t+1}", title="e_{t+1} against e_t", ylim=(1e-17, 2), xlim=(1e-9, 2))
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    r = result
    fig.suptitle(
        f"Logistic loss, n={r['n']}, d={r['d']}, k={r['k']} (seed {r['seed']}): I-OBS converges "
        "quadratically, k-IHT linearly",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def slope_rows(result: dict) -> list[dict]:
    """One table row per solver: iterations, final error and the first exponents."""
    rows = []
    for label, e in result["curves"].items():
        s = fitted_slopes(e)
        rows.append(
            {
                "solver": label,
                "iterations": len(e) - 1,
                "final error": f"{e[-1]:.1e}",
                "exponents log e_{t+1}/log e_t": ", ".join(f"{x:.2f}" for x in s[:6])
                + (" …" if len(s) > 6 else ""),
            }
        )
    return rows
