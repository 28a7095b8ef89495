"""Sparse-recovery solvers: min f(θ) s.t. ‖θ‖₀ ≤ k.

The I-OBS family (shared/paper.md §2) and classic peers, each a pure function
``solver(objective, k, *, theta0=None, max_iter=100, tol=1e-10, theta_star=None, damping=None,
device=None, dtype=torch.float64, seed=None, **options) -> RecoveryResult``:

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

H_λ = ∇²f + λI. ``damping=None`` ("auto") adds no λ when the Hessian is numerically positive
definite and otherwise λ = 1e-6·mean(diag H) (logged); ``damping=0.0`` with a singular Hessian is an
error; the λ used is ``result.damping``. Stopping: ‖θ_{t+1} − θ_t‖ ≤ tol·‖θ_{t+1}‖ (``converged``), or
``max_iter`` iterations (the restricted forms and CoSaMP also stop, unconverged, after ``patience``
iterations without a new objective minimum). Solvers never print.

Speed: these loops run many small tensor operations; on a busy CPU one torch thread
(``torch.set_num_threads(1)``) is much faster than several (measured ~10x on a loaded 2-core machine).
"""

from __future__ import annotations

import logging
import math
import time

import torch

from iobs._validate import check_finite, check_int_range, check_k
from iobs.obs.masks import topk_mask
from iobs.obs.projection import (
    _greedy_obs_row,
    cholesky_or_raise,
    exact_support,
    greedy_obs,
    greedy_obs_lowrank,
    obs_project,
    obs_project_lowrank,
)
from iobs.recovery.objectives import LeastSquares, Objective
from iobs.recovery.result import RecoveryResult
from iobs.utils import resolve_device

log = logging.getLogger(__name__)

#: auto damping: λ = AUTO_DAMPING · mean(diag H) when H is not numerically positive definite
AUTO_DAMPING = 1e-6
#: H counts as numerically PD when min(diag L)² ≥ PD_RTOL · max(diag H) for its Cholesky factor L
PD_RTOL = 1e-12

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
# shared machinery
# ----------------------------------------------------------------------------------------------
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
    max_iter = check_int_range("max_iter", max_iter, 0, 10**9)
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
        theta = theta * topk_mask(theta.abs(), k)
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


def _check_damping(damping):
    if damping is None or (isinstance(damping, str) and damping == "auto"):
        return None
    if isinstance(damping, str):
        raise ValueError(f"damping must be None/'auto' or a number >= 0, got {damping!r}")
    lam = float(damping)
    if not lam >= 0 or math.isinf(lam):
        raise ValueError(f"damping must be None/'auto' or a finite number >= 0, got {damping!r}")
    return lam


def _damped_cholesky(M: torch.Tensor, damping, name: str = "Hessian"):
    """Cholesky factor of M + λI and λ. Auto (damping None): λ = 0 when M is numerically PD, else
    AUTO_DAMPING·mean(diag M). A fixed λ whose M + λI is not PD raises a ValueError."""
    lam = _check_damping(damping)
    if lam is not None:
        eye = torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
        L, info = torch.linalg.cholesky_ex(M + lam * eye)
        if int(info) != 0:
            raise ValueError(
                f"{name} + {lam:g}·I is not positive definite (Cholesky failed); "
                "use damping > 0 or damping=None (auto)"
            )
        return L, lam
    L, info = torch.linalg.cholesky_ex(M)
    dmax = float(M.diagonal().max()) if M.numel() else 0.0
    if int(info) == 0 and float(L.diagonal().min()) ** 2 >= PD_RTOL * max(dmax, 1e-300):
        return L, 0.0
    lam = AUTO_DAMPING * max(float(M.diagonal().mean()), 1e-300)
    if dmax <= 0:
        lam = AUTO_DAMPING
    log.info("%s is not numerically positive definite: damping with λ = %.3g", name, lam)
    L, info = torch.linalg.cholesky_ex(M + lam * torch.eye(M.shape[0], dtype=M.dtype, device=M.device))
    if int(info) != 0:
        raise ValueError(f"{name} is not positive semidefinite (Cholesky failed even with λ = {lam:g})")
    return L, lam


class _Curvature:
    """H_λ = ∇²f(θ) + λI at one point: dense (Cholesky of H_λ) or low-rank H_λ = BᵀB + μI with B of
    fewer rows than columns (all solves through the m×m system μI + BBᵀ)."""

    def __init__(self, objective, theta, damping):
        self.objective = objective
        d = objective.d
        factor = objective.hessian_factor(theta)
        self.lowrank = factor is not None and factor[0].shape[0] < d
        if self.lowrank:
            B, c = factor
            lam = _check_damping(damping)
            if lam is None:
                lam = 0.0 if c > 0 else AUTO_DAMPING * max(float((B * B).sum()) / d, 1e-300)
                if lam > 0:
                    log.info("Hessian has rank <= %d < d = %d: damping with λ = %.3g", B.shape[0], d, lam)
            self.mu = c + lam
            if self.mu <= 0:
                raise ValueError(
                    f"the Hessian has rank <= {B.shape[0]} < d = {d}, so it is not positive definite with "
                    "damping=0; use damping > 0 or damping=None (auto)"
                )
            self.B, self.lam = B, lam
            m = B.shape[0]
            K = self.mu * torch.eye(m, dtype=B.dtype, device=B.device) + B @ B.T
            self.LK = cholesky_or_raise(K, "μI + BBᵀ")
        else:
            H = objective.hessian(theta)
            self.L, self.lam = _damped_cholesky(H, damping)
            self.H = H + self.lam * torch.eye(d, dtype=H.dtype, device=H.device)

    def solve(self, v):
        """H_λ⁻¹ v."""
        if self.lowrank:
            B = self.B
            return (v - B.T @ torch.cholesky_solve((B @ v)[:, None], self.LK).squeeze(1)) / self.mu
        return torch.cholesky_solve(v[:, None], self.L).squeeze(1)

    def newton_point(self, theta):
        """θ⁺ = θ − H_λ⁻¹∇f(θ); for least squares with n < d via Aᵀ(λI + AAᵀ)⁻¹r (no 1/λ)."""
        obj = self.objective
        if self.lowrank and isinstance(obj, LeastSquares) and self.mu == self.lam:
            r = obj.residual(theta)
            return theta - obj.A.T @ torch.cholesky_solve(r[:, None], self.LK).squeeze(1)
        return theta - self.solve(obj.grad(theta))

    def dense(self):
        if self.lowrank:
            return self.B.T @ self.B + self.mu * torch.eye(
                self.B.shape[1], dtype=self.B.dtype, device=self.B.device
            )
        return self.H

    def project(self, theta_plus, mask):
        if self.lowrank:
            return obs_project_lowrank(theta_plus, self.B, self.mu, mask)
        return obs_project(theta_plus, self.H, mask)

    def support(self, theta_plus, k, rule):
        """(θ, mask): support by ``rule`` then the exact OBS update."""
        if rule == "topk":
            mask = topk_mask(theta_plus.abs(), k)
        elif rule == "greedy":
            if self.lowrank:
                return greedy_obs_lowrank(theta_plus, self.B, self.mu, k)
            Hinv = torch.cholesky_inverse(self.L)
            _, mask = greedy_obs(theta_plus, 0.5 * (Hinv + Hinv.T), n_prune=theta_plus.shape[0] - k)
        elif rule == "exact":
            mask = exact_support(theta_plus, self.dense(), k)
        else:
            raise ValueError(f"support must be one of 'greedy', 'topk', 'exact', got {rule!r}")
        return self.project(theta_plus, mask), mask


def _hard_threshold(v, k):
    return v * topk_mask(v.abs(), k)


def _quad_form(objective, theta, v):
    """vᵀ ∇²f(θ) v, through the low-rank factor when there is one."""
    factor = objective.hessian_factor(theta)
    if factor is not None:
        B, c = factor
        Bv = B @ v
        return float(Bv @ Bv) + c * float(v @ v)
    return float(v @ (objective.hessian(theta) @ v))


def _lipschitz(objective, theta):
    if hasattr(objective, "lipschitz"):
        return float(objective.lipschitz())
    return float(torch.linalg.eigvalsh(objective.hessian(theta))[-1])


def _fit_on_support(objective, theta, T, damping, newton_iters=50, tol=1e-12):
    """argmin f(θ) over supp θ ⊆ T (least squares: one Cholesky solve on A_TᵀA_T; otherwise damped
    Newton steps restricted to T). Returns (θ, λ used)."""
    idx = T.nonzero().squeeze(1)
    out = torch.zeros_like(theta)
    if idx.numel() == 0:
        return out, 0.0
    if isinstance(objective, LeastSquares):
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
        factor = self.objective.hessian_factor(theta)
        if factor is not None:
            B, self.c = factor
            self.H = None
            if isinstance(self.objective, LeastSquares):  # fixed A: prepared once per objective
                self.Bt, self.diag = self.objective.columns()
            else:
                self.Bt = B.T.contiguous()  # rows of Bᵀ = columns of B, gathered contiguously
                self.diag = torch.linalg.vector_norm(B, dim=0).square_() + self.c
        else:
            self.H = self.objective.hessian(theta)
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


# ----------------------------------------------------------------------------------------------
# solvers
# ----------------------------------------------------------------------------------------------
def kiht(
    objective,
    k,
    *,
    theta0=None,
    max_iter=100,
    tol=1e-10,
    theta_star=None,
    damping=None,
    device=None,
    dtype=torch.float64,
    seed=None,
    step="1/L",
) -> RecoveryResult:
    """k-IHT: θ ← T_k(θ − η∇f(θ)).

    ``step="1/L"`` (default): η = 1/λ_max(∇²f(θ0)) (least squares: 1/σ_max(A)²; logistic: its upper
    bound). ``step="normalized"``: the NIHT adaptive step of Blumensath & Davies (2010), η = ‖g_Γ‖²/
    (g_Γᵀ H g_Γ) on Γ = supp θ (or supp T_k(g) at θ = 0), halved while a support change makes
    η > 0.99·‖Δθ‖²/(Δθᵀ H Δθ). A number: that fixed η. ``damping`` and ``seed`` are unused.
    """
    objective, k, theta, theta_star, max_iter, tol = _setup(
        objective, k, theta0, theta_star, max_iter, tol, device, dtype
    )
    if isinstance(step, str) and step not in ("1/L", "normalized"):
        raise ValueError(f"step must be '1/L', 'normalized' or a positive number, got {step!r}")
    if not isinstance(step, str):
        eta = float(step)
        if not eta > 0 or math.isinf(eta):
            raise ValueError(f"step must be '1/L', 'normalized' or a positive number, got {step!r}")
    elif step == "1/L":
        eta = 1.0 / _lipschitz(objective, theta)
    trace = _Trace(objective, theta, theta_star, tol)
    converged = False
    for _ in range(max_iter):
        g = objective.grad(theta)
        if step == "normalized":
            gamma = theta != 0
            if not bool(gamma.any()):
                gamma = topk_mask(g.abs(), k)
            gG = g * gamma
            den = _quad_form(objective, theta, gG)
            eta = float(gG @ gG) / den if den > 0 else 1.0 / _lipschitz(objective, theta)
            new = _hard_threshold(theta - eta * g, k)
            for _ in range(60):
                if bool(((new != 0) == gamma).all()):
                    break
                dth = new - theta
                q = _quad_form(objective, theta, dth)
                if q <= 0 or eta <= 0.99 * float(dth @ dth) / q:
                    break
                eta /= 2.0
                new = _hard_threshold(theta - eta * g, k)
        else:
            new = _hard_threshold(theta - eta * g, k)
        converged = trace.step(new, theta)
        theta = new
        if converged:
            break
    return trace.result(theta, converged, 0.0, "kiht", {"step": step})


def topk_iobs(
    objective,
    k,
    *,
    theta0=None,
    max_iter=100,
    tol=1e-10,
    theta_star=None,
    damping=None,
    device=None,
    dtype=torch.float64,
    seed=None,
) -> RecoveryResult:
    """Topk-I-OBS (Option 1): θ ← T_k(θ − H_λ⁻¹∇f(θ)), H_λ = ∇²f(θ) + λI."""
    objective, k, theta, theta_star, max_iter, tol = _setup(
        objective, k, theta0, theta_star, max_iter, tol, device, dtype
    )
    trace = _Trace(objective, theta, theta_star, tol)
    curv, lam_used, converged = None, 0.0, False
    for _ in range(max_iter):
        if curv is None or not objective.is_quadratic:
            curv = _Curvature(objective, theta, damping)
            lam_used = max(lam_used, curv.lam)
        new = _hard_threshold(curv.newton_point(theta), k)
        converged = trace.step(new, theta)
        theta = new
        if converged:
            break
    return trace.result(theta, converged, lam_used, "topk-iobs", {})


def iobs(
    objective,
    k,
    *,
    theta0=None,
    max_iter=100,
    tol=1e-10,
    theta_star=None,
    damping=None,
    device=None,
    dtype=torch.float64,
    seed=None,
    support="greedy",
) -> RecoveryResult:
    """I-OBS (Option 2): Newton point θ⁺ = θ − H_λ⁻¹∇f(θ), a support Q of size k, then the exact OBS
    update θ = argmin_{supp ⊆ Q} (θ − θ⁺)ᵀ H_λ (θ − θ⁺).

    ``support="greedy"``: one-at-a-time OBS removal (low-rank form when H has rank < d);
    ``"topk"``: Q = supp T_k(θ⁺); ``"exact"``: enumeration of all C(d, k) supports (tiny d only).
    """
    if support not in ("greedy", "topk", "exact"):
        raise ValueError(f"support must be one of 'greedy', 'topk', 'exact', got {support!r}")
    objective, k, theta, theta_star, max_iter, tol = _setup(
        objective, k, theta0, theta_star, max_iter, tol, device, dtype
    )
    trace = _Trace(objective, theta, theta_star, tol)
    curv, lam_used, converged = None, 0.0, False
    for _ in range(max_iter):
        if curv is None or not objective.is_quadratic:
            curv = _Curvature(objective, theta, damping)
            lam_used = max(lam_used, curv.lam)
        new, _ = curv.support(curv.newton_point(theta), k, support)
        converged = trace.step(new, theta)
        theta = new
        if converged:
            break
    return trace.result(theta, converged, lam_used, "iobs", {"support": support})


def _restricted(objective, k, setup, damping, projection, support, expand, select, patience, refine):
    """The restricted I-OBS loop. Cached between iterations: S = supp θ (as indices), H_SS and H_SS⁻¹
    (the kept block of the downdated inverse that greedy OBS leaves behind), so each iteration forms
    only H_SC for the candidates C and H_EE for the e added coordinates E."""
    if support not in ("greedy", "topk", "exact"):
        raise ValueError(f"support must be one of 'greedy', 'topk', 'exact', got {support!r}")
    if select not in ("obs", "gradient"):
        raise ValueError(f"select must be 'obs' or 'gradient', got {select!r}")
    objective, k, theta, theta_star, max_iter, tol = _setup(objective, k, *setup)
    e = max(1, math.ceil(k / 8)) if expand is None else check_int_range("expand", expand, 1, objective.d)
    patience = check_int_range("patience", patience, 1, 10**9)
    trace = _Trace(objective, theta, theta_star, tol)
    blocks = _HessianBlocks(objective)
    lam_used, converged, g0 = 0.0, False, None
    cache = None  # (Sidx, H_SS, H_SS⁻¹) valid for the current θ (quadratic objectives only)
    for _ in range(max_iter):
        g = objective.grad(theta)
        gnorm = float(g.norm())
        g0 = gnorm if g0 is None else g0
        if gnorm <= tol * g0 or gnorm == 0.0:  # stationary without the constraint: nothing left to gain
            converged = True
            break
        blocks.at(theta)
        if cache is None:
            S = theta != 0
            Sidx = S.nonzero().squeeze(1)
            HSS = blocks.block(Sidx, Sidx)
            # (H_SS + λI)⁻¹ ranks the additions; H_TT below is damped on its own
            HSS_inv = (
                torch.cholesky_inverse(_damped_cholesky(HSS, damping, "H_SS")[0]) if Sidx.numel() else HSS
            )
        else:  # the kept set of the last projection (even where an OBS-updated weight is exactly 0)
            Sidx, HSS, HSS_inv = cache
            S = torch.zeros_like(theta, dtype=torch.bool).index_fill_(0, Sidx, True)
        # working set T = S ∪ E, ordered [S, E]
        if select == "obs":
            C = _candidates(blocks, S, objective.d - Sidx.numel(), g, 2 * e + 8)
            HSC = blocks.block(Sidx, C)
            pick = torch.topk(_addition_gain(blocks, g, Sidx, C, HSC, HSS_inv), min(e, C.numel())).indices
            E, HSE = C[pick], HSC[:, pick]
        else:
            E = torch.topk(g.abs().masked_fill(S, -1.0), min(e, objective.d - Sidx.numel())).indices
            HSE = blocks.block(Sidx, E)
        idx = torch.cat([Sidx, E])
        HTT = torch.cat([torch.cat([HSS, HSE], 1), torch.cat([HSE.T, blocks.block(E, E)], 1)], 0)
        # Newton step on T: θ⁺_T = H_TT⁻¹ (H_TT θ_T − g_T)  (least squares: the fit on A_T)
        L, lam = _damped_cholesky(HTT, damping, "H_TT")
        lam_used = max(lam_used, lam)
        if lam:
            HTT = HTT + lam * torch.eye(len(idx), dtype=HTT.dtype, device=HTT.device)
        tp = torch.cholesky_solve((HTT @ theta[idx] - g[idx])[:, None], L).squeeze(1)
        new = torch.zeros_like(theta)
        cache = None
        reuse = objective.is_quadratic and not lam
        if idx.numel() <= k:  # building up the support: T is the new support
            new[idx] = tp
            if reuse:
                cache = (idx, HTT, torch.cholesky_inverse(L))
        elif projection == "topk":
            keep = topk_mask(tp.abs(), k)
            new[idx] = tp * keep
            if reuse:
                HKK = HTT[keep][:, keep]
                cache = (idx[keep], HKK, torch.cholesky_inverse(torch.linalg.cholesky(HKK)))
        elif support == "greedy":  # sequential OBS removals = the joint OBS update on the kept set
            w, keep, Hinv = _greedy_obs_row(tp, torch.cholesky_inverse(L), idx.numel() - k)
            new[idx] = w
            if reuse:
                cache = (idx[keep], HTT[keep][:, keep], Hinv[keep][:, keep])
        else:
            sub = topk_mask(tp.abs(), k) if support == "topk" else exact_support(tp, HTT, k)
            new[idx] = obs_project(tp, HTT, sub)
        fixed = trace.step(new, theta)
        theta = new
        if fixed or trace.stalled(patience):
            if refine and e > 1:  # a fixed point for e additions: refine the search with fewer
                e = max(1, e // 2)
                trace.since_best = 0
                continue
            converged = fixed
            break
    name = "restricted-topk-iobs" if projection == "topk" else "restricted-iobs"
    opts = {"expand": expand, "select": select, "patience": patience, "refine": refine}
    if projection != "topk":
        opts["support"] = support
    return trace.result(theta, converged, lam_used, name, opts)


def restricted_iobs(
    objective,
    k,
    *,
    theta0=None,
    max_iter=200,
    tol=1e-10,
    theta_star=None,
    damping=None,
    device=None,
    dtype=torch.float64,
    seed=None,
    support="greedy",
    expand=None,
    select="obs",
    patience=3,
    refine=False,
) -> RecoveryResult:
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
    when it is not numerically positive definite, e.g. |T| > n).
    """
    setup = (theta0, theta_star, max_iter, tol, device, dtype)
    return _restricted(objective, k, setup, damping, "obs", support, expand, select, patience, refine)


def restricted_topk_iobs(
    objective,
    k,
    *,
    theta0=None,
    max_iter=200,
    tol=1e-10,
    theta_star=None,
    damping=None,
    device=None,
    dtype=torch.float64,
    seed=None,
    expand=None,
    select="obs",
    patience=3,
    refine=False,
) -> RecoveryResult:
    """Restricted Topk-I-OBS: the working set and Newton step of ``restricted_iobs``, then T_k
    (``expand``, ``select`` and ``patience`` as there)."""
    setup = (theta0, theta_star, max_iter, tol, device, dtype)
    return _restricted(objective, k, setup, damping, "topk", "greedy", expand, select, patience, refine)


def stochastic_iobs(
    objective,
    k,
    *,
    theta0=None,
    max_iter=100,
    tol=1e-10,
    theta_star=None,
    damping=None,
    device=None,
    dtype=torch.float64,
    seed=None,
    batch_size=None,
    lam=None,
) -> RecoveryResult:
    """Stochastic I-OBS (paper appendix): with Q = supp θ_t and a mini-batch gradient g,

        θ ← T_k(θ − g / (λ + ‖E_Q g‖² / ‖g‖)),

    i.e. the Hessian over-approximated by λI + ggᵀ/‖g‖. ``batch_size=None`` uses the full gradient;
    ``lam=None`` uses λ = λ_max(∇²f(θ0)) (the paper's full-batch choice). Mini-batches need an
    objective with ``batch_grad`` (LeastSquares, Logistic); ``seed`` seeds the batch draws.
    """
    objective, k, theta, theta_star, max_iter, tol = _setup(
        objective, k, theta0, theta_star, max_iter, tol, device, dtype
    )
    n = getattr(objective, "n", None)
    if batch_size is not None:
        if not hasattr(objective, "batch_grad"):
            raise ValueError(f"batch_size needs an objective with batch_grad, got {type(objective).__name__}")
        batch_size = check_int_range("batch_size", batch_size, 1, n)
    lam = _lipschitz(objective, theta) if lam is None else float(lam)
    if not lam > 0 or math.isinf(lam):
        raise ValueError(f"lam must be a finite number > 0, got {lam}")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(0 if seed is None else int(seed))
    trace = _Trace(objective, theta, theta_star, tol)
    converged = False
    for _ in range(max_iter):
        if batch_size is None or batch_size == n:
            g = objective.grad(theta)
        else:
            rows = torch.randperm(n, generator=gen)[:batch_size].to(objective.device)
            g = objective.batch_grad(theta, rows)
        gnorm = float(g.norm())
        gQ = g * (theta != 0)
        denom = lam + (float(gQ @ gQ) / gnorm if gnorm > 0 else 0.0)
        new = _hard_threshold(theta - g / denom, k)
        converged = trace.step(new, theta)  # with mini-batches only where every batch gradient vanishes
        theta = new
        if converged:
            break
    return trace.result(theta, converged, 0.0, "stochastic-iobs", {"batch_size": batch_size, "lam": lam})


def htp(
    objective,
    k,
    *,
    theta0=None,
    max_iter=100,
    tol=1e-10,
    theta_star=None,
    damping=None,
    device=None,
    dtype=torch.float64,
    seed=None,
    step="normalized",
) -> RecoveryResult:
    """Hard thresholding pursuit (Foucart 2011): S = supp T_k(θ − η∇f(θ)), θ = argmin_{supp ⊆ S} f.

    ``step="normalized"`` (default; NHTP): η = ‖g_Γ‖²/(g_Γᵀ H g_Γ) on Γ = supp θ (supp T_k(g) at
    θ = 0); ``"1/L"``: η = 1/λ_max(H); a number: that η (Foucart's HTP uses 1 for unit-norm columns).
    Converged when S repeats (the classic stopping rule) or the relative step is below tol.
    """
    objective, k, theta, theta_star, max_iter, tol = _setup(
        objective, k, theta0, theta_star, max_iter, tol, device, dtype
    )
    if isinstance(step, str) and step not in ("1/L", "normalized"):
        raise ValueError(f"step must be '1/L', 'normalized' or a positive number, got {step!r}")
    eta = None
    if not isinstance(step, str):
        eta = float(step)
        if not eta > 0 or math.isinf(eta):
            raise ValueError(f"step must be '1/L', 'normalized' or a positive number, got {step!r}")
    elif step == "1/L":
        eta = 1.0 / _lipschitz(objective, theta)
    trace = _Trace(objective, theta, theta_star, tol)
    lam_used, converged = 0.0, False
    S_prev = None
    for _ in range(max_iter):
        g = objective.grad(theta)
        if step == "normalized":
            gamma = theta != 0
            if not bool(gamma.any()):
                gamma = topk_mask(g.abs(), k)
            gG = g * gamma
            den = _quad_form(objective, theta, gG)
            eta = float(gG @ gG) / den if den > 0 else 1.0 / _lipschitz(objective, theta)
        S = topk_mask((theta - eta * g).abs(), k)
        new, lam = _fit_on_support(objective, theta, S, damping)
        lam_used = max(lam_used, lam)
        converged = trace.step(new, theta) or (S_prev is not None and bool((S == S_prev).all()))
        theta, S_prev = new, S
        if converged:
            break
    return trace.result(theta, converged, lam_used, "htp", {"step": step})


def cosamp(
    objective,
    k,
    *,
    theta0=None,
    max_iter=100,
    tol=1e-10,
    theta_star=None,
    damping=None,
    device=None,
    dtype=torch.float64,
    seed=None,
    patience=20,
) -> RecoveryResult:
    """CoSaMP (Needell & Tropp 2009): T = supp θ ∪ top-2k of |∇f|, b = argmin_{supp ⊆ T} f, θ = T_k(b).
    |T| may exceed n: then the fit on T is damped (auto damping). Stops (not converged) when the
    objective has made no new minimum in ``patience`` iterations."""
    objective, k, theta, theta_star, max_iter, tol = _setup(
        objective, k, theta0, theta_star, max_iter, tol, device, dtype
    )
    trace = _Trace(objective, theta, theta_star, tol)
    lam_used, converged = 0.0, False
    for _ in range(max_iter):
        g = objective.grad(theta)
        T = (theta != 0) | topk_mask(g.abs(), min(2 * k, objective.d))
        b, lam = _fit_on_support(objective, theta, T, damping)
        lam_used = max(lam_used, lam)
        new = _hard_threshold(b, k)
        converged = trace.step(new, theta)
        theta = new
        if converged or trace.stalled(patience):
            break
    return trace.result(theta, converged, lam_used, "cosamp", {"patience": patience})


def subspace_pursuit(
    objective,
    k,
    *,
    theta0=None,
    max_iter=100,
    tol=1e-10,
    theta_star=None,
    damping=None,
    device=None,
    dtype=torch.float64,
    seed=None,
) -> RecoveryResult:
    """Subspace pursuit (Dai & Milenkovic 2009): T' = supp θ ∪ top-k |∇f|, b = argmin_{supp ⊆ T'} f,
    T = supp T_k(b), θ = argmin_{supp ⊆ T} f; stop when the objective no longer decreases (keeping the
    better iterate) or the relative step is below tol. Starts from the fit on top-k |∇f(θ0)|."""
    objective, k, theta, theta_star, max_iter, tol = _setup(
        objective, k, theta0, theta_star, max_iter, tol, device, dtype
    )
    trace = _Trace(objective, theta, theta_star, tol)
    lam_used, converged = 0.0, False
    f_prev = float(objective.value(theta))
    for it in range(max_iter):
        g = objective.grad(theta)
        if it == 0 and not bool((theta != 0).any()):
            new, lam = _fit_on_support(objective, theta, topk_mask(g.abs(), k), damping)
        else:
            T1 = (theta != 0) | topk_mask(g.abs(), k)
            b, lam1 = _fit_on_support(objective, theta, T1, damping)
            new, lam = _fit_on_support(objective, theta, topk_mask(b.abs(), k), damping)
            lam = max(lam, lam1)
        lam_used = max(lam_used, lam)
        f_new = float(objective.value(new))
        if it > 0 and f_new >= f_prev:
            converged = True  # no decrease: keep θ (classic SP stopping rule)
            break
        converged = trace.step(new, theta)
        theta, f_prev = new, f_new
        if converged:
            break
    return trace.result(theta, converged, lam_used, "subspace-pursuit", {})


SOLVERS = {
    "kiht": kiht,
    "htp": htp,
    "topk-iobs": topk_iobs,
    "iobs": iobs,
    "restricted-iobs": restricted_iobs,
    "restricted-topk-iobs": restricted_topk_iobs,
    "stochastic-iobs": stochastic_iobs,
    "cosamp": cosamp,
    "subspace-pursuit": subspace_pursuit,
}


def solve(
    objective,
    k,
    solver="iobs",
    *,
    theta0=None,
    max_iter=100,
    tol=1e-10,
    theta_star=None,
    damping=None,
    device=None,
    dtype=torch.float64,
    seed=None,
    **options,
) -> RecoveryResult:
    """Run the named solver (a key of ``SOLVERS``) with solver-specific ``options`` (e.g. step=,
    support=, batch_size=, lam=). The objective is moved to ``device``/``dtype`` first."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    return SOLVERS[solver](
        objective,
        k,
        theta0=theta0,
        max_iter=max_iter,
        tol=tol,
        theta_star=theta_star,
        damping=damping,
        device=device,
        dtype=dtype,
        seed=seed,
        **options,
    )
