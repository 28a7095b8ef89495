"""Sparse-recovery solvers: min f(θ) s.t. ‖θ‖₀ ≤ k.

Each solver is a step function registered in ``SOLVERS`` with its defaults and driven by one
iteration loop (:func:`_iterate`: tolerance, history and stopping). Every solver is called as
``solver(objective, k, *, theta0=None, max_iter=<its default>, tol=1e-10, theta_star=None,
damping=None, device=None, dtype=torch.float64, seed=None, **options) -> RecoveryResult``:

* ``kiht``                 θ ← T_k(θ − η∇f), η = 1/λ_max(H) or the NIHT normalised step.
* ``topk_iobs``            Option 1: θ ← T_k(θ − H_λ⁻¹∇f).
* ``iobs``                 Option 2: Newton point θ⁺, support by greedy OBS / top-k / exact
                           enumeration, then the exact OBS update on that support.
* ``restricted_iobs``      Newton step on a working set T = supp θ ∪ E, then the OBS projection back
                           to k. E: the e = ⌈k/8⌉ coordinates of largest second-order gain
                           g_j²/(H_jj − H_jS H_SS⁻¹ H_Sj) by default (``select="obs"``), or of
                           largest |∇f| (``select="gradient"``, ``expand=k``: the issue's form).
* ``restricted_topk_iobs`` the same working-set Newton step, then T_k.
* ``stochastic_iobs``      the appendix rule θ ← T_k(θ − g/(λ + ‖E_Q g‖²/‖g‖)) with mini-batches.
* ``htp``, ``cosamp``, ``subspace_pursuit``  the classic algorithms.
* ``auto`` (the default of ``solve``; :mod:`iobs.recovery.auto`) a portfolio of the above chosen from
                           n, d, k: the global form for n ≥ d (least squares: d ≤ 64), restricted
                           schedules otherwise; lowest objective kept, the choice in
                           ``result.chosen`` / ``result.runs``.

H_λ = ∇²f + λI, held by :class:`iobs.obs.curvature.Curvature` and damped by the policy of
:mod:`iobs.obs.damping`. ``damping=None`` ("auto") adds no λ when the Hessian is numerically positive
definite and otherwise λ = 1e-6·mean(diag H), escalated ×10 while the Cholesky factorisation fails
(logged); a fixed ``damping`` (e.g. 0.0 with a singular Hessian) whose H_λ is not positive definite is
an error; the λ used is ``result.damping``. Stopping: ‖θ_{t+1} − θ_t‖ ≤ tol·‖θ_{t+1}‖ (``converged``),
or ``max_iter`` iterations (100; 200 for the restricted forms; ``solve`` uses the same defaults), and
the restricted forms and CoSaMP also stop, unconverged, after ``patience`` iterations without a new
objective minimum. Solvers never print.

Speed: these loops run many small tensor operations; on a busy CPU one torch thread
(``torch.set_num_threads(1)``) is much faster than several (measured ~10x on a loaded 2-core machine).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from iobs._validate import check_finite, check_int_range, check_k
from iobs.obs.curvature import Curvature
from iobs.obs.damping import cholesky_damped
from iobs.obs.masks import hard_threshold, topk_mask
from iobs.obs.projection import (
    _greedy_obs_row,
    exact_support,
    greedy_obs,
    greedy_obs_lowrank,
    obs_project,
    project,
)
from iobs.recovery.objectives import Objective
from iobs.recovery.result import RecoveryResult
from iobs.utils import resolve_device

#: H counts as numerically PD when min(diag L)² ≥ PD_RTOL · max(diag H) for its Cholesky factor L
PD_RTOL = 1e-12
SUPPORTS = ("greedy", "topk", "exact")
#: the registry: name -> Solver (filled as the solvers are defined below)
SOLVERS: dict[str, Solver] = {}

__all__ = [
    "SOLVERS",
    "solve",
    "kiht",
    "htp",
    "topk_iobs",
    "iobs",
    "restricted_iobs",
    "restricted_topk_iobs",
    "stochastic_iobs",
    "cosamp",
    "subspace_pursuit",
]


# ----------------------------------------------------------------------------------------------
# the loop and the registry
# ----------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One iteration's outcome: θ_{t+1} (None: stop, converged, without moving: e.g. ∇f = 0), the λ
    used, and ``fixed`` for a solver's own fixed-point rule (HTP: the support repeats)."""

    theta: torch.Tensor | None
    lam: float = 0.0
    fixed: bool = False


@dataclass
class Plan:
    """What a solver's ``start`` returns: the step function θ_t, t -> Step, the options recorded in the
    result, the ``patience`` of the stall rule (None: none) and ``refine`` (called at a stop; True to go
    on, e.g. with fewer additions)."""

    step: Callable[[torch.Tensor, int], Step]
    options: dict
    patience: int | None = None
    refine: Callable[[], bool] | None = None


@dataclass(frozen=True)
class Problem:
    """What every step function sees: the objective (moved to the device/dtype), k, θ0, the damping
    argument, the seed and tol."""

    objective: Objective
    k: int
    theta0: torch.Tensor
    damping: object
    seed: int | None
    tol: float


class Solver:
    """A solver registered in ``SOLVERS`` under ``name``: ``start(problem, **options) -> Plan`` with its
    ``defaults`` (the options it accepts, and ``max_iter``). Calling it runs :func:`_iterate`."""

    def __init__(self, name: str, start, doc: str, max_iter: int = 100, **defaults):
        self.name, self.start, self.max_iter, self.defaults = name, start, max_iter, defaults
        self.__doc__ = doc
        SOLVERS[name] = self

    def __call__(
        self,
        objective,
        k,
        *,
        theta0=None,
        max_iter=None,
        tol=1e-10,
        theta_star=None,
        damping=None,
        device=None,
        dtype=torch.float64,
        seed=None,
        **options,
    ) -> RecoveryResult:
        opts = self.options(options)
        max_iter = self.max_iter if max_iter is None else max_iter
        objective, k, theta, theta_star, max_iter, tol = _setup(
            objective, k, theta0, theta_star, max_iter, tol, device, dtype
        )
        return self.run(Problem(objective, k, theta, damping, seed, tol), theta_star, max_iter, opts)

    def options(self, options: dict) -> dict:
        """The solver's defaults updated by ``options``; an unknown option is a TypeError naming it."""
        bad = sorted(set(options) - set(self.defaults))
        if bad:
            raise TypeError(f"{self.name} got unexpected options {bad}; it accepts {sorted(self.defaults)}")
        return {**self.defaults, **options}

    def run(self, p: Problem, theta_star, max_iter, opts: dict) -> RecoveryResult:
        """Plan the steps and drive them with the one loop."""
        plan = self.start(p, **opts)
        return _iterate(plan, p.objective, p.theta0, theta_star, max_iter, p.tol, self.name)


def _iterate(plan: Plan, objective, theta, theta_star, max_iter: int, tol: float, name: str):
    """The one iteration loop: run ``plan.step`` until a fixed point (relative step ≤ tol, or the step's
    own rule), a stall of ``plan.patience`` iterations, or ``max_iter``; record the history."""
    trace = _Trace(objective, theta, theta_star, tol)
    lam_used, converged = 0.0, False
    for it in range(max_iter):
        out = plan.step(theta, it)
        lam_used = max(lam_used, out.lam)
        if out.theta is None:
            converged = True
            break
        fixed = trace.step(out.theta, theta) or out.fixed
        theta = out.theta
        if fixed or trace.stalled(plan.patience):
            if plan.refine is not None and plan.refine():
                trace.since_best = 0
                continue
            converged = fixed
            break
    return trace.result(theta, converged, lam_used, name, plan.options)


def _setup(objective, k, theta0, theta_star, max_iter, tol, device, dtype):
    if not isinstance(objective, Objective):
        raise TypeError(
            "objective must be an iobs.recovery.objectives.Objective "
            f"(LeastSquares, Logistic, TorchObjective), "
            f"got {type(objective).__name__}"
        )
    if device is not None:
        device = resolve_device(device)  # "auto" picks CUDA when present; unavailable CUDA is a ValueError
    if device is not None or dtype is not None:
        objective = objective.to(device, dtype)
    d = objective.d
    k = check_k(k, d)
    max_iter = None if max_iter is None else check_int_range("max_iter", max_iter, 0, 10**9)  # None: auto
    tol = float(tol)
    if not tol >= 0 or math.isinf(tol):
        raise ValueError(f"tol must be a finite number >= 0, got {tol}")
    like = dict(dtype=objective.dtype, device=objective.device)

    def vec(name, v):
        v = torch.as_tensor(v).to(**like)
        if v.shape != (d,):
            raise ValueError(f"{name} must have shape ({d},), got {tuple(v.shape)}")
        return check_finite(name, v)

    theta = torch.zeros(d, **like) if theta0 is None else vec("theta0", theta0).clone()
    if int((theta != 0).sum()) > k:
        theta = hard_threshold(theta, k)
    theta_star = None if theta_star is None else vec("theta_star", theta_star)
    return objective, k, theta, theta_star, max_iter, tol


class _Trace:
    """Per-iteration history and the stopping rule."""

    def __init__(self, objective, theta, theta_star, tol):
        self.objective, self.theta_star, self.tol = objective, theta_star, tol
        self.star_norm = None if theta_star is None else float(theta_star.norm())
        self.t0 = time.perf_counter()
        self.history: list[dict] = []
        self.mask = theta != 0
        self.best, self.since_best = math.inf, 0
        self._record(theta, 0, 0)

    def _record(self, theta, it, changes):
        dist = rel = None
        if self.theta_star is not None:
            dist = float((theta - self.theta_star).norm())
            rel = dist / self.star_norm if self.star_norm > 0 else None
        self.history.append(
            dict(
                iteration=it,
                objective=float(self.objective.value(theta)),
                distance=dist,
                rel_distance=rel,
                support_changes=changes,
                time=time.perf_counter() - self.t0,
            )
        )
        f = self.history[-1]["objective"]
        if f < self.best * (1 - 1e-12) or (f == 0.0 and self.best > 0):
            self.best, self.since_best = f, 0
        else:
            self.since_best += 1

    def stalled(self, patience) -> bool:
        """True when the objective has not reached a new minimum in ``patience`` iterations (cycling)."""
        return patience is not None and self.since_best >= patience

    def step(self, theta_new, theta_old) -> bool:
        """Record θ_{t+1}; True when the relative step is below tol."""
        mask = theta_new != 0
        changes = int((mask ^ self.mask).sum())
        self.mask = mask
        self._record(theta_new, len(self.history), changes)
        step = float((theta_new - theta_old).norm())
        return step <= self.tol * float(theta_new.norm()) or step == 0.0

    def result(self, theta, converged, damping, solver, options):
        return RecoveryResult(
            theta=theta,
            mask=theta != 0,
            n_iter=len(self.history) - 1,
            converged=bool(converged),
            history=self.history,
            damping=float(damping),
            solver=solver,
            options=options,
        )


# ----------------------------------------------------------------------------------------------
# curvature and damping (the policy of iobs.obs.damping with the recovery solvers' starting λ)
# ----------------------------------------------------------------------------------------------
_FIXED_HINT = "use damping > 0 or damping=None (auto)"


def _check_damping(damping):
    """None for auto damping, else the fixed λ ≥ 0."""
    if damping is None or (isinstance(damping, str) and damping == "auto"):
        return None
    if isinstance(damping, str):
        raise ValueError(f"damping must be None/'auto' or a number >= 0, got {damping!r}")
    lam = float(damping)
    if not lam >= 0 or math.isinf(lam):
        raise ValueError(f"damping must be None/'auto' or a finite number >= 0, got {damping!r}")
    return lam


def _dense_policy(M: torch.Tensor, damping) -> dict:
    """Fixed λ: M + λI or an error. Auto: λ = 0 when M is numerically PD, else escalate from
    1e-6·mean(diag M) (logged at INFO: an expected step, e.g. |T| > n)."""
    lam = _check_damping(damping)
    if lam is not None:
        return dict(lam=lam, max_escalations=0, hint=_FIXED_HINT)
    dmax = float(M.diagonal().max()) if M.numel() else 0.0
    scale = max(float(M.diagonal().mean()), 1e-300) if dmax > 0 else 1.0

    def accept(L):
        return float(L.diagonal().min()) ** 2 >= PD_RTOL * max(dmax, 1e-300)

    return dict(lam=0.0, scale=scale, level=logging.INFO, accept=accept)


def _damped_cholesky(M: torch.Tensor, damping, name: str = "Hessian"):
    """(Cholesky factor of M + λI, λ) under the recovery damping rule."""
    return cholesky_damped(M, name=name, **_dense_policy(M, damping))


def _curvature(objective, theta, damping) -> Curvature:
    """H_λ = ∇²f(θ) + λI: low-rank (BᵀB + μI, μ = c + λ) when the objective has a factor with fewer rows
    than columns, else dense."""
    factor = objective.hessian_factor(theta) if objective.has_lowrank_hessian else None
    if factor is not None and factor[0].shape[0] < objective.d:
        B, c = factor
        lam = _check_damping(damping)
        name = f"the Hessian (rank <= {B.shape[0]} < d = {objective.d})"
        if lam is None:
            return Curvature.lowrank(B, c, 0.0, name=name, level=logging.INFO, hint=_FIXED_HINT)
        return Curvature.lowrank(B, c, lam, name=name, max_escalations=0, hint=_FIXED_HINT)
    H = objective.hessian(theta)
    return Curvature.dense(H, name="Hessian", **_dense_policy(H, damping))


def _newton_point(objective, H: Curvature, theta):
    """θ⁺ = θ − H_λ⁻¹∇f(θ); for least squares with n < d via Aᵀ(λI + AAᵀ)⁻¹r (no 1/λ)."""
    if H.lowrank_form and objective.least_squares and H.mu == H.lam:
        return theta - H.solve_range(objective.residual(theta))
    return theta - H.solve(objective.grad(theta))


def _obs_support(H: Curvature, theta_plus, k, rule):
    """(θ, mask): support by ``rule`` then the exact OBS update under H."""
    if rule == "topk":
        mask = topk_mask(theta_plus.abs(), k)
    elif rule == "greedy":
        if H.lowrank_form:
            return greedy_obs_lowrank(theta_plus, H.B, H.mu, k)
        _, mask = greedy_obs(theta_plus, H.inverse(), n_prune=theta_plus.shape[0] - k)
    else:
        mask = exact_support(theta_plus, H.to_dense(), k)
    return project(theta_plus, H, mask), mask


def _check_support(support):
    if support not in SUPPORTS:
        raise ValueError(f"support must be one of 'greedy', 'topk', 'exact', got {support!r}")


def _quad_form(objective, theta, v):
    """vᵀ ∇²f(θ) v, through the low-rank factor when there is one."""
    if objective.has_lowrank_hessian:
        B, c = objective.hessian_factor(theta)
        Bv = B @ v
        return float(Bv @ Bv) + c * float(v @ v)
    return float(v @ (objective.hessian(theta) @ v))


def _lipschitz(objective, theta):
    if objective.has_lipschitz:
        return float(objective.lipschitz())
    return float(torch.linalg.eigvalsh(objective.hessian(theta))[-1])


def _fit_on_support(objective, theta, T, damping, newton_iters=50, tol=1e-12):
    """argmin f(θ) over supp θ ⊆ T (least squares: one Cholesky solve on A_TᵀA_T; otherwise damped
    Newton steps restricted to T). Returns (θ, λ used)."""
    idx = T.nonzero().squeeze(1)
    out = torch.zeros_like(theta)
    if idx.numel() == 0:
        return out, 0.0
    if objective.least_squares:
        AT = objective.A[:, idx]
        L, lam = _damped_cholesky(AT.T @ AT, damping, "A_TᵀA_T")
        out[idx] = torch.cholesky_solve((AT.T @ objective.y)[:, None], L).squeeze(1)
        return out, lam
    out[idx] = theta[idx]
    lam_max = 0.0
    for _ in range(newton_iters if not objective.is_quadratic else 1):
        g = objective.grad(out)[idx]
        H = objective.hessian(out)[idx][:, idx]
        L, lam = _damped_cholesky(H, damping, "H_TT")
        lam_max = max(lam_max, lam)
        step = torch.cholesky_solve(g[:, None], L).squeeze(1)
        out[idx] -= step
        if float(step.norm()) <= tol * max(float(out.norm()), 1e-300):
            break
    return out, lam_max


def _check_step(step):
    """η for a number, else the rule name ("1/L" or "normalized")."""
    if isinstance(step, str) and step not in ("1/L", "normalized"):
        raise ValueError(f"step must be '1/L', 'normalized' or a positive number, got {step!r}")
    if not isinstance(step, str):
        eta = float(step)
        if not eta > 0 or math.isinf(eta):
            raise ValueError(f"step must be '1/L', 'normalized' or a positive number, got {step!r}")
    return step


def _normalized_step(objective, theta, g, k):
    """(η, Γ): the NIHT step ‖g_Γ‖²/(g_Γᵀ H g_Γ) on Γ = supp θ (supp T_k(g) at θ = 0)."""
    gamma = theta != 0
    if not bool(gamma.any()):
        gamma = topk_mask(g.abs(), k)
    gG = g * gamma
    den = _quad_form(objective, theta, gG)
    return (float(gG @ gG) / den if den > 0 else 1.0 / _lipschitz(objective, theta)), gamma


def _fixed_eta(objective, theta, step):
    """η for a fixed step rule: the number, or 1/λ_max(∇²f(θ0)) for "1/L" (None for "normalized")."""
    if not isinstance(step, str):
        return float(step)
    return 1.0 / _lipschitz(objective, theta) if step == "1/L" else None


# ----------------------------------------------------------------------------------------------
# step functions
# ----------------------------------------------------------------------------------------------
def _kiht(p: Problem, step):
    obj, k = p.objective, p.k
    eta0 = _fixed_eta(obj, p.theta0, _check_step(step))

    def kiht_step(theta, it):
        g = obj.grad(theta)
        if eta0 is not None:
            return Step(hard_threshold(theta - eta0 * g, k))
        eta, gamma = _normalized_step(obj, theta, g, k)
        new = hard_threshold(theta - eta * g, k)
        for _ in range(60):  # halve η while a support change makes it too long for the curvature
            if bool(((new != 0) == gamma).all()):
                break
            dth = new - theta
            q = _quad_form(obj, theta, dth)
            if q <= 0 or eta <= 0.99 * float(dth @ dth) / q:
                break
            eta /= 2.0
            new = hard_threshold(theta - eta * g, k)
        return Step(new)

    return Plan(kiht_step, {"step": step})


def _newton(p: Problem, support):
    """Topk-I-OBS (``support=None``: T_k of the Newton point) and I-OBS (support rule, OBS update)."""
    obj, k = p.objective, p.k
    if support is not None:
        _check_support(support)
    state = {"H": None}

    def newton_step(theta, it):
        H = state["H"]
        if H is None or not obj.is_quadratic:
            H = state["H"] = _curvature(obj, theta, p.damping)
        theta_plus = _newton_point(obj, H, theta)
        new = hard_threshold(theta_plus, k) if support is None else _obs_support(H, theta_plus, k, support)[0]
        return Step(new, H.lam)

    return Plan(newton_step, {} if support is None else {"support": support})


def _stochastic(p: Problem, batch_size, lam):
    obj, k = p.objective, p.k
    n = obj.n if obj.has_batch_grad else None
    if batch_size is not None:
        if not obj.has_batch_grad:
            raise ValueError(f"batch_size needs an objective with batch_grad, got {type(obj).__name__}")
        batch_size = check_int_range("batch_size", batch_size, 1, n)
    lam = _lipschitz(obj, p.theta0) if lam is None else float(lam)
    if not lam > 0 or math.isinf(lam):
        raise ValueError(f"lam must be a finite number > 0, got {lam}")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(0 if p.seed is None else int(p.seed))

    def stochastic_step(theta, it):
        if batch_size is None or batch_size == n:
            g = obj.grad(theta)
        else:
            rows = torch.randperm(n, generator=gen)[:batch_size].to(obj.device)
            g = obj.batch_grad(theta, rows)
        gnorm = float(g.norm())
        gQ = g * (theta != 0)
        denom = lam + (float(gQ @ gQ) / gnorm if gnorm > 0 else 0.0)
        return Step(hard_threshold(theta - g / denom, k))  # converges where every batch gradient vanishes

    return Plan(stochastic_step, {"batch_size": batch_size, "lam": lam})


def _htp(p: Problem, step):
    obj, k = p.objective, p.k
    eta0 = _fixed_eta(obj, p.theta0, _check_step(step))
    prev = {"S": None}

    def htp_step(theta, it):
        g = obj.grad(theta)
        eta = eta0 if eta0 is not None else _normalized_step(obj, theta, g, k)[0]
        S = topk_mask((theta - eta * g).abs(), k)
        new, lam = _fit_on_support(obj, theta, S, p.damping)
        repeat = prev["S"] is not None and bool((S == prev["S"]).all())
        prev["S"] = S
        return Step(new, lam, fixed=repeat)

    return Plan(htp_step, {"step": step})


def _cosamp(p: Problem, patience):
    obj, k = p.objective, p.k

    def cosamp_step(theta, it):
        g = obj.grad(theta)
        T = (theta != 0) | topk_mask(g.abs(), min(2 * k, obj.d))
        b, lam = _fit_on_support(obj, theta, T, p.damping)
        return Step(hard_threshold(b, k), lam)

    return Plan(cosamp_step, {"patience": patience}, patience=patience)


def _subspace_pursuit(p: Problem):
    obj, k, damping = p.objective, p.k, p.damping
    last = {"f": float(obj.value(p.theta0))}

    def sp_step(theta, it):
        g = obj.grad(theta)
        if it == 0 and not bool((theta != 0).any()):
            new, lam = _fit_on_support(obj, theta, topk_mask(g.abs(), k), damping)
        else:
            b, lam1 = _fit_on_support(obj, theta, (theta != 0) | topk_mask(g.abs(), k), damping)
            new, lam = _fit_on_support(obj, theta, topk_mask(b.abs(), k), damping)
            lam = max(lam, lam1)
        f_new = float(obj.value(new))
        if it > 0 and f_new >= last["f"]:
            return Step(None, lam)  # no decrease: keep θ (classic SP stopping rule)
        last["f"] = f_new
        return Step(new, lam)

    return Plan(sp_step, {})


class _HessianBlocks:
    """Blocks H_RC of ∇²f(θ) without forming H when a factor H = BᵀB + cI is known (least squares:
    B = A, c = 0, the same at every θ, so Bᵀ and the diagonal are prepared once)."""

    def __init__(self, objective):
        self.objective = objective
        self.ready = False

    def at(self, theta):
        if self.ready and self.objective.is_quadratic:
            return self
        self.ready = True
        obj = self.objective
        if obj.has_lowrank_hessian:
            B, self.c = obj.hessian_factor(theta)
            self.H = None
            if obj.least_squares:  # fixed A: prepared once per objective
                self.Bt, self.diag = obj.columns()
            else:
                self.Bt = B.T.contiguous()  # rows of Bᵀ = columns of B, gathered contiguously
                self.diag = torch.linalg.vector_norm(B, dim=0).square_() + self.c
        else:
            self.H = obj.hessian(theta)
            self.diag = self.H.diagonal()
        self.inv_diag = 1.0 / self.diag.clamp_min(torch.finfo(self.diag.dtype).tiny)
        return self

    def block(self, rows, cols):
        if self.H is not None:
            return self.H[rows][:, cols]
        out = self.Bt[rows] @ self.Bt[cols].T
        if self.c:
            out = out + self.c * (rows[:, None] == cols[None, :]).to(out.dtype)
        return out


def _candidates(blocks, S, n_out, g, n):
    """The ``n`` coordinates outside S (``n_out`` of them) of largest g_j²/H_jj (the gain of adding j
    with S frozen)."""
    first = (g * g * blocks.inv_diag).masked_fill(S, -1.0)
    return torch.topk(first, min(n, n_out)).indices


def _addition_gain(blocks, g, Sidx, C, HSC, HSS_inv):
    """Second-order gain of adding j ∈ C alone to S with S re-optimised (the OBS saliency read
    backwards; for least squares the exact decrease of f): g_j² / (H_jj − H_jS H_SS⁻¹ H_Sj)."""
    schur = blocks.diag[C]
    if Sidx.numel():
        schur = schur - (HSC * (HSS_inv @ HSC)).sum(0)
    return g[C] ** 2 / schur.clamp_min(torch.finfo(g.dtype).tiny)


class _Restricted:
    """The restricted I-OBS step. Cached between iterations (quadratic objectives): S = supp θ (as
    indices), H_SS and H_SS⁻¹ (the kept block of the downdated inverse that greedy OBS leaves behind),
    so each iteration forms only H_SC for the candidates C and H_EE for the e added coordinates E."""

    def __init__(self, p: Problem, projection, support, expand, select, patience, refine):
        _check_support(support)
        if select not in ("obs", "gradient"):
            raise ValueError(f"select must be 'obs' or 'gradient', got {select!r}")
        obj = p.objective
        self.obj, self.k, self.damping, self.tol = obj, p.k, p.damping, p.tol
        self.projection, self.support, self.select, self.refine_on = projection, support, select, refine
        self.e = max(1, math.ceil(p.k / 8)) if expand is None else check_int_range("expand", expand, 1, obj.d)
        self.patience = check_int_range("patience", patience, 1, 10**9)
        self.blocks = _HessianBlocks(obj)
        self.g0, self.cache = None, None  # cache: (Sidx, H_SS, H_SS⁻¹) valid for the current θ

    def refine(self) -> bool:
        """At a fixed point or stall for e additions: halve e (``refine=True``) and go on while e > 1."""
        if self.refine_on and self.e > 1:
            self.e = max(1, self.e // 2)
            return True
        return False

    def __call__(self, theta, it) -> Step:
        g = self.obj.grad(theta)
        gnorm = float(g.norm())
        self.g0 = gnorm if self.g0 is None else self.g0
        if gnorm <= self.tol * self.g0 or gnorm == 0.0:  # stationary without the constraint
            return Step(None)
        self.blocks.at(theta)
        Sidx, HSS, HSS_inv = self._kept(theta)
        idx, HTT = self._working_set(theta, g, Sidx, HSS, HSS_inv)
        # Newton step on T: θ⁺_T = H_TT⁻¹ (H_TT θ_T − g_T)  (least squares: the fit on A_T)
        L, lam = _damped_cholesky(HTT, self.damping, "H_TT")
        if lam:
            HTT = HTT + lam * torch.eye(len(idx), dtype=HTT.dtype, device=HTT.device)
        tp = torch.cholesky_solve((HTT @ theta[idx] - g[idx])[:, None], L).squeeze(1)
        return Step(self._project(theta, idx, HTT, L, tp, reuse=self.obj.is_quadratic and not lam), lam)

    def _kept(self, theta):
        """(S as indices, H_SS, (H_SS + λI)⁻¹): from the cache (the kept set of the last projection, even
        where an OBS-updated weight is exactly 0) or formed at θ."""
        if self.cache is not None:
            return self.cache
        Sidx = (theta != 0).nonzero().squeeze(1)
        HSS = self.blocks.block(Sidx, Sidx)
        # (H_SS + λI)⁻¹ ranks the additions; H_TT is damped on its own
        if not Sidx.numel():
            return Sidx, HSS, HSS
        return Sidx, HSS, torch.cholesky_inverse(_damped_cholesky(HSS, self.damping, "H_SS")[0])

    def _working_set(self, theta, g, Sidx, HSS, HSS_inv):
        """T = S ∪ E ordered [S, E] and H_TT."""
        blocks, e = self.blocks, self.e
        S = torch.zeros_like(theta, dtype=torch.bool).index_fill_(0, Sidx, True)
        if self.select == "obs":
            C = _candidates(blocks, S, self.obj.d - Sidx.numel(), g, 2 * e + 8)
            HSC = blocks.block(Sidx, C)
            pick = torch.topk(_addition_gain(blocks, g, Sidx, C, HSC, HSS_inv), min(e, C.numel())).indices
            E, HSE = C[pick], HSC[:, pick]
        else:
            E = torch.topk(g.abs().masked_fill(S, -1.0), min(e, self.obj.d - Sidx.numel())).indices
            HSE = blocks.block(Sidx, E)
        HTT = torch.cat([torch.cat([HSS, HSE], 1), torch.cat([HSE.T, blocks.block(E, E)], 1)], 0)
        return torch.cat([Sidx, E]), HTT

    def _project(self, theta, idx, HTT, L, tp, reuse):
        """θ_{t+1}: θ⁺_T back to k entries (T itself while |T| ≤ k); caches the kept block when ``reuse``."""
        k, new = self.k, torch.zeros_like(theta)
        self.cache = None
        if idx.numel() <= k:  # building up the support: T is the new support
            new[idx] = tp
            if reuse:
                self.cache = (idx, HTT, torch.cholesky_inverse(L))
        elif self.projection == "topk":
            keep = topk_mask(tp.abs(), k)
            new[idx] = tp * keep
            if reuse:
                HKK = HTT[keep][:, keep]
                self.cache = (idx[keep], HKK, torch.cholesky_inverse(torch.linalg.cholesky(HKK)))
        elif self.support == "greedy":  # sequential OBS removals = the joint OBS update on the kept set
            w, keep, Hinv = _greedy_obs_row(tp, torch.cholesky_inverse(L), idx.numel() - k)
            new[idx] = w
            if reuse:
                self.cache = (idx[keep], HTT[keep][:, keep], Hinv[keep][:, keep])
        else:
            sub = topk_mask(tp.abs(), k) if self.support == "topk" else exact_support(tp, HTT, k)
            new[idx] = obs_project(tp, HTT, sub)
        return new


def _restricted_iobs(p: Problem, support, expand, select, patience, refine):
    step = _Restricted(p, "obs", support, expand, select, patience, refine)
    opts = {"expand": expand, "select": select, "patience": patience, "refine": refine, "support": support}
    return Plan(step, opts, patience=step.patience, refine=step.refine)


def _restricted_topk_iobs(p: Problem, expand, select, patience, refine):
    step = _Restricted(p, "topk", "greedy", expand, select, patience, refine)
    opts = {"expand": expand, "select": select, "patience": patience, "refine": refine}
    return Plan(step, opts, patience=step.patience, refine=step.refine)


# ----------------------------------------------------------------------------------------------
# the registry
# ----------------------------------------------------------------------------------------------
kiht = Solver(
    "kiht",
    _kiht,
    """k-IHT: θ ← T_k(θ − η∇f(θ)).

    ``step="1/L"`` (default): η = 1/λ_max(∇²f(θ0)) (least squares: 1/σ_max(A)²; logistic: its upper
    bound). ``step="normalized"``: the NIHT adaptive step of Blumensath & Davies (2010), η = ‖g_Γ‖²/
    (g_Γᵀ H g_Γ) on Γ = supp θ (or supp T_k(g) at θ = 0), halved while a support change makes
    η > 0.99·‖Δθ‖²/(Δθᵀ H Δθ). A number: that fixed η. ``damping`` and ``seed`` are unused.
    """,
    step="1/L",
)
htp = Solver(
    "htp",
    _htp,
    """Hard thresholding pursuit (Foucart 2011): S = supp T_k(θ − η∇f(θ)), θ = argmin_{supp ⊆ S} f.

    ``step="normalized"`` (default; NHTP): η = ‖g_Γ‖²/(g_Γᵀ H g_Γ) on Γ = supp θ (supp T_k(g) at
    θ = 0); ``"1/L"``: η = 1/λ_max(H); a number: that η (Foucart's HTP uses 1 for unit-norm columns).
    Converged when S repeats (the classic stopping rule) or the relative step is below tol.
    """,
    step="normalized",
)
topk_iobs = Solver(
    "topk-iobs",
    lambda p: _newton(p, None),
    """Topk-I-OBS (Option 1): θ ← T_k(θ − H_λ⁻¹∇f(θ)), H_λ = ∇²f(θ) + λI.""",
)
iobs = Solver(
    "iobs",
    _newton,
    """I-OBS (Option 2): Newton point θ⁺ = θ − H_λ⁻¹∇f(θ), a support Q of size k, then the exact OBS
    update θ = argmin_{supp ⊆ Q} (θ − θ⁺)ᵀ H_λ (θ − θ⁺).

    ``support="greedy"``: one-at-a-time OBS removal (low-rank form when H has rank < d);
    ``"topk"``: Q = supp T_k(θ⁺); ``"exact"``: enumeration of all C(d, k) supports (tiny d only).
    """,
    support="greedy",
)
restricted_iobs = Solver(
    "restricted-iobs",
    _restricted_iobs,
    """Restricted I-OBS. Each iteration:

    1. working set T = supp θ ∪ (``e`` coordinates outside supp θ of largest gain): ``select="obs"``
       (default) ranks j by the second-order gain of adding it, g_j²/(H_jj − H_jS H_SS⁻¹ H_Sj), on the
       2e + 8 coordinates of largest g_j²/H_jj; ``select="gradient"`` by |g_j| as in Newton HTP;
    2. Newton step on T: θ⁺_T = θ_T − H_TT⁻¹ g_T (least squares: the least-squares fit on A_T);
    3. projection back to k entries with the OBS update on H_TT, support by ``support``
       ("greedy" one-at-a-time OBS removal, "topk", or "exact" enumeration).

    e = ``expand`` coordinates are added per iteration (default ⌈k/8⌉: from θ0 = 0 the support is built
    up e at a time, a second-order forward selection, then refined by e-swaps). The solver stops at a
    fixed point or after ``patience`` iterations without a new objective minimum; with ``refine=True``
    it then halves e and continues, down to single swaps. Converged: a fixed point of the final stage
    or a vanishing gradient (‖∇f‖ ≤ tol·‖∇f(θ0)‖). ``damping`` is added to H_TT (auto: only
    when it is not numerically positive definite, e.g. |T| > n). ``max_iter`` defaults to 200.
    """,
    max_iter=200,
    support="greedy",
    expand=None,
    select="obs",
    patience=3,
    refine=False,
)
restricted_topk_iobs = Solver(
    "restricted-topk-iobs",
    _restricted_topk_iobs,
    """Restricted Topk-I-OBS: the working set and Newton step of ``restricted_iobs``, then T_k
    (``expand``, ``select``, ``patience``, ``refine`` and the default ``max_iter`` 200 as there).""",
    max_iter=200,
    expand=None,
    select="obs",
    patience=3,
    refine=False,
)
stochastic_iobs = Solver(
    "stochastic-iobs",
    _stochastic,
    """Stochastic I-OBS (paper appendix): with Q = supp θ_t and a mini-batch gradient g,

        θ ← T_k(θ − g / (λ + ‖E_Q g‖² / ‖g‖)),

    i.e. the Hessian over-approximated by λI + ggᵀ/‖g‖. ``batch_size=None`` uses the full gradient;
    ``lam=None`` uses λ = λ_max(∇²f(θ0)) (the paper's full-batch choice). Mini-batches need an
    objective with ``batch_grad`` (LeastSquares, Logistic); ``seed`` seeds the batch draws.
    """,
    batch_size=None,
    lam=None,
)
cosamp = Solver(
    "cosamp",
    _cosamp,
    """CoSaMP (Needell & Tropp 2009): T = supp θ ∪ top-2k of |∇f|, b = argmin_{supp ⊆ T} f, θ = T_k(b).
    |T| may exceed n: then the fit on T is damped (auto damping). Stops (not converged) when the
    objective has made no new minimum in ``patience`` iterations.""",
    patience=20,
)
subspace_pursuit = Solver(
    "subspace-pursuit",
    _subspace_pursuit,
    """Subspace pursuit (Dai & Milenkovic 2009): T' = supp θ ∪ top-k |∇f|, b = argmin_{supp ⊆ T'} f,
    T = supp T_k(b), θ = argmin_{supp ⊆ T} f; stop when the objective no longer decreases (keeping the
    better iterate) or the relative step is below tol. Starts from the fit on top-k |∇f(θ0)|.""",
)


def solve(objective, k, solver="auto", *, max_iter=None, **kwargs) -> RecoveryResult:
    """Run the named solver (a key of ``SOLVERS``; default ``"auto"``, the portfolio of
    :mod:`iobs.recovery.auto` that picks the form from n, d and k) with the common arguments (theta0,
    max_iter, tol, theta_star, damping, device, dtype, seed) and solver-specific options (e.g. step=,
    support=, batch_size=, lam=). ``max_iter=None``: the solver's own default (100; 200 for the
    restricted forms; auto: each schedule's own).
    The objective is moved to ``device``/``dtype`` first."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    return SOLVERS[solver](objective, k, max_iter=max_iter, **kwargs)


from iobs.recovery import auto as _auto  # noqa: E402,F401  (registers SOLVERS["auto"])
