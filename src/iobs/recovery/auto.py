"""``solver="auto"``: a portfolio of the registered solvers, chosen from n, d, k and the objective.

Least squares (the rules chosen on the validation seeds of benchmarks/recovery_suite_rules.py, every
rule tried listed in benchmarks/results/recovery_suite_val.md):

* n < d (H = AᵀA has rank ≤ n): restricted I-OBS (Newton steps on a working set) with different
  working-set schedules, because which one wins depends on the signal class, in the order

      ⌈k/4⌉ second-order gains → k gradient coordinates → ⌈k/2⌉ gains → one gain at a time
      → ⌈k/8⌉ gains → subspace pursuit;

* n ≥ d, d ≤ ``GLOBAL_MAX_D`` (H full rank and small): I-OBS (Option 2, greedy OBS support), then
  restricted I-OBS with single swaps from its θ;
* n ≥ d, d > ``GLOBAL_MAX_D``: restricted I-OBS with ⌈k/4⌉ gains alone (at d = 256, n = 320 it was
  both more accurate and 3-7x cheaper than the global form, whose greedy OBS support removes d − k
  coordinates one at a time from a d×d inverse).

Other objectives (logistic, TorchObjective) keep the first pass's portfolio: the global forms for
n ≥ d (or no design) and d ≤ ``LEGACY_GLOBAL_MAX_D``, else ⌈k/8⌉ gains → k gradient coordinates → SP
→ ⌈k/2⌉ gains → HTP → one gain, each run refit on its support (Newton) before the comparison.

Selection. Every schedule solves min f(θ) s.t. ‖θ‖₀ ≤ k from θ0; the θ of lowest f is returned.
Stopping (``stop``): ``"exact"`` ends the portfolio once f ≤ ``rtol``·f(θ0) (noiseless least squares:
with 2k < n and a generic design no other k-sparse θ fits y); ``"stall"`` also ends it at the first
schedule that does not lower the best f (least-squares default); ``"agree"`` instead ends it once a
schedule returns the same support as the best one so far (default of the other objectives);
``"none"`` runs every schedule; ``"auto"`` (the default) is "stall" for least squares, else "agree".
Least squares on the CPU in float64 runs the schedules on the numpy fast path of
:mod:`iobs.recovery.fastls` (the same iterations; ``fast=False``: the torch solvers). The result
reports the choice (``chosen``), every run (``runs``), the total iterations (``n_iter``) and the time.
"""

from __future__ import annotations

import math
import time

import torch

from iobs.recovery import fastls
from iobs.recovery.result import RecoveryResult
from iobs.recovery.solvers import SOLVERS, Solver, _damped_cholesky, _fit_on_support

__all__ = ["auto", "schedules_for", "GLOBAL_MAX_D", "STOPS"]

#: largest d for the global forms on least squares (above: restricted I-OBS, measured faster there)
GLOBAL_MAX_D = 64
#: largest d for the global forms on the other objectives (they factor a d×d matrix)
LEGACY_GLOBAL_MAX_D = 2048
STOPS = ("auto", "exact", "stall", "agree", "none")
#: the least-squares n < d portfolio, in order: (solver, options); "k/8", "k/4", "k/2", "k" are
#: resolved against k
RESTRICTED_LS = (
    ("restricted-iobs", {"expand": "k/4"}),
    ("restricted-iobs", {"select": "gradient", "expand": "k"}),
    ("restricted-iobs", {"expand": "k/2"}),
    ("restricted-iobs", {"expand": 1}),
    ("restricted-iobs", {"expand": "k/8"}),
    ("subspace-pursuit", {}),
)
#: least squares with n ≥ d > GLOBAL_MAX_D
WELL_POSED_LS = (("restricted-iobs", {"expand": "k/4"}),)
#: the portfolio of the other objectives for n < d (the first pass's)
RESTRICTED = (
    ("restricted-iobs", {"expand": "k/8"}),
    ("restricted-iobs", {"select": "gradient", "expand": "k"}),
    ("subspace-pursuit", {}),
    ("restricted-iobs", {"expand": "k/2"}),
    ("htp", {}),
    ("restricted-iobs", {"expand": 1}),
)
#: the n ≥ d portfolio; "warm": start from the best θ so far
GLOBAL = (("iobs", {"support": "greedy"}), ("restricted-iobs", {"expand": 1, "warm": True}))


def _resolve(opts: dict, k: int) -> dict:
    frac = {"k/8": 8, "k/4": 4, "k/2": 2, "k": 1}
    return {
        key: max(1, math.ceil(k / frac[v])) if key == "expand" and v in frac else v for key, v in opts.items()
    }


def uses_global(objective, k: int) -> bool:
    """The global Newton forms when H can be full rank and factored: n ≥ d (or no design) and d at most
    GLOBAL_MAX_D (least squares) or LEGACY_GLOBAL_MAX_D (other objectives)."""
    n = getattr(objective, "n", None)
    cap = GLOBAL_MAX_D if objective.least_squares else LEGACY_GLOBAL_MAX_D
    return objective.d <= cap and (n is None or n >= objective.d)


def _base(objective, k):
    if uses_global(objective, k):
        return GLOBAL
    if not objective.least_squares:
        return RESTRICTED
    return WELL_POSED_LS if objective.n >= objective.d else RESTRICTED_LS


def schedules_for(objective, k: int) -> list[tuple[str, dict, str]]:
    """The portfolio auto runs on this objective: (solver, options resolved against k, label)."""
    base = _base(objective, k)
    return [(name, _resolve(opts, k), _label(name, opts)) for name, opts in base]


def _label(name: str, opts: dict) -> str:
    """e.g. "restricted-iobs(select=gradient, expand=k)" (symbolic sizes kept: comparable across k)."""
    shown = ", ".join(f"{key}={v}" for key, v in opts.items() if key != "warm")
    shown += ", from the best θ" if opts.get("warm") else ""
    return f"{name}({shown.lstrip(', ')})" if shown else name


def _better(r: RecoveryResult, best: RecoveryResult | None) -> bool:
    return best is None or r.objective < best.objective - 1e-12 * abs(best.objective)


def _check_schedules(schedules):
    if schedules is None:
        return None
    out = []
    for item in schedules:
        ok = isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], dict)
        if not ok or item[0] not in SOLVERS or item[0] == "auto":
            raise ValueError(
                "schedules must be a list of (solver name, options dict) pairs with names from "
                f"{sorted(set(SOLVERS) - {'auto'})}, got {item!r}"
            )
        out.append((item[0], dict(item[1]), _label(item[0], item[1])))
    return out


class _Auto(Solver):
    """The portfolio meta-solver (registered as ``SOLVERS["auto"]``)."""

    def run(self, p, theta_star, max_iter, opts) -> RecoveryResult:
        if opts["stop"] not in STOPS:
            raise ValueError(f"stop must be one of {list(STOPS)}, got {opts['stop']!r}")
        rtol = float(opts["rtol"])
        if not 0 <= rtol < 1:
            raise ValueError(f"rtol must be a number in [0, 1), got {opts['rtol']!r}")
        plan = _check_schedules(opts["schedules"]) or schedules_for(p.objective, p.k)
        common = dict(max_iter=max_iter, tol=p.tol, theta_star=theta_star, damping=p.damping, seed=p.seed)
        f_exact = rtol * float(p.objective.value(p.theta0))
        if not isinstance(opts["fast"], bool):
            raise ValueError(f"fast must be True or False, got {opts['fast']!r}")
        stop = opts["stop"]
        if stop == "auto":
            stop = "stall" if p.objective.least_squares else "agree"
        return _portfolio(p.objective, p.k, p.theta0, plan, common, stop, f_exact, opts["fast"])


def _newton_on_support(objective, theta, mask, damping, iters=50, tol=1e-12):
    """argmin f over supp ⊆ mask: the damped Newton steps of solvers._fit_on_support, with
    H_SS = B_SᵀB_S + cI taken from the low-rank factor (the d×d Hessian is never formed)."""
    if not objective.has_lowrank_hessian:
        return _fit_on_support(objective, theta, mask, damping, newton_iters=iters, tol=tol)[0]
    idx = mask.nonzero().squeeze(1)
    out = torch.zeros_like(theta)
    out[idx] = theta[idx]
    eye = torch.eye(idx.numel(), dtype=theta.dtype, device=theta.device)
    for _ in range(iters):
        g = objective.grad(out)[idx]
        B, c = objective.hessian_factor(out)
        BS = B[:, idx]
        L, _ = _damped_cholesky(BS.T @ BS + c * eye, damping, "H_TT")
        step = torch.cholesky_solve(g[:, None], L).squeeze(1)
        out[idx] -= step
        if float(step.norm()) <= tol * max(float(out.norm()), 1e-300):
            break
    return out


def _refit(objective, r: RecoveryResult, damping, theta_star) -> RecoveryResult:
    """Non-quadratic f: replace θ by argmin f over supp θ (Newton on the support), so that the runs are
    compared by the best loss of their supports; recorded as one more history entry and
    ``options["refit"]`` = (f before, f after). Quadratic f: every schedule already returns the
    minimiser on its support, nothing is done."""
    if objective.is_quadratic or not bool(r.mask.any()):
        return r
    theta = _newton_on_support(objective, r.theta, r.mask, damping)
    f = float(objective.value(theta))
    if not f < r.objective:
        return r
    last = dict(r.history[-1], iteration=r.history[-1]["iteration"] + 1, objective=f, support_changes=0)
    if theta_star is not None:
        dist, norm = float((theta - theta_star).norm()), float(theta_star.norm())
        last.update(distance=dist, rel_distance=dist / norm if norm > 0 else None)
    r.options = {**r.options, "refit": (r.objective, f)}
    r.history, r.theta, r.n_iter = r.history + [last], theta, r.n_iter + 1
    return r


def _run_one(objective, k, name, opts, start, common, ls) -> RecoveryResult:
    """One schedule: on the numpy fast path (iobs.recovery.fastls: least squares on the CPU, the same
    iterations) when ``ls`` is given and it serves the schedule, else the registered torch solver."""
    if ls is None or name == "htp" or not fastls.serves(name, opts):
        return SOLVERS[name](objective, k, theta0=start, **common, **opts)
    max_iter = SOLVERS[name].max_iter if common["max_iter"] is None else common["max_iter"]
    star = common["theta_star"]
    out = fastls.run_schedule(
        ls, name, opts, k, start.numpy(), max_iter, common["tol"], None if star is None else star.numpy()
    )
    theta = torch.from_numpy(out["theta"])
    return RecoveryResult(
        theta=theta,
        mask=theta != 0,
        n_iter=out["n_iter"],
        converged=out["converged"],
        history=out["history"],
        damping=out["lam"],
        solver=name,
        options=dict(opts),
    )


def _portfolio(objective, k, theta0, plan, common, stop, f_exact, fast=True) -> RecoveryResult:
    """Run the schedules in order, keep the lowest objective, stop early by the ``stop`` rule."""
    runs, best = [], None
    t_start = time.perf_counter()
    ls = fastls.LSData(objective) if fast and fastls.applies(objective, common["damping"]) else None
    for name, opts, label in plan:
        opts = dict(opts)
        start = best.theta if opts.pop("warm", False) and best is not None else theta0
        t0 = time.perf_counter()
        r = _run_one(objective, k, name, opts, start, common, ls)
        r = _refit(objective, r, common["damping"], common["theta_star"])
        runs.append(
            dict(
                label=label,
                objective=r.objective,
                n_iter=r.n_iter,
                converged=r.converged,
                refit=r.options.get("refit"),
                time=time.perf_counter() - t0,
            )
        )
        same = best is not None and bool((r.mask == best.mask).all())
        improved = _better(r, best)
        if improved:
            best, best_label = r, label
        if stop != "none" and best.objective <= f_exact:
            break
        if (stop == "agree" and same) or (stop == "stall" and not improved):
            break
    return RecoveryResult(
        theta=best.theta,
        mask=best.mask,
        n_iter=sum(x["n_iter"] for x in runs),
        converged=best.converged,
        history=best.history,
        damping=best.damping,
        solver="auto",
        options={
            "schedules": [x["label"] for x in runs],
            "stop": stop,
            "total_time": time.perf_counter() - t_start,
        },
        chosen=best_label,
        runs=runs,
    )


auto = _Auto(
    "auto",
    None,
    __doc__,
    max_iter=None,
    schedules=None,
    stop="auto",
    rtol=1e-20,
    fast=True,
)
