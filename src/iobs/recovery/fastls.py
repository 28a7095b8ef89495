"""Least squares f(θ) = ½‖Aθ − y‖² on the CPU: auto's working-set schedules as lean numpy loops.

The iterations are those of the registered torch solvers (``restricted-iobs`` with ``select="obs"`` or
``"gradient"`` and greedy OBS projection, ``subspace-pursuit``, ``htp`` with the normalised step),
with the same stopping rules (relative step ≤ tol, stall of ``patience`` iterations without a new
minimum of f, max_iter) and the same auto damping (λ = 0 when the Cholesky factor L of H_TT has
min(diag L)² ≥ PD_RTOL·max(diag H_TT), else λ = 1e-6·mean(diag H_TT), ×10 per retry). Only the
arithmetic differs (numpy instead of torch, H_TT⁻¹ = L⁻ᵀL⁻¹ from one triangular inverse): on the
small problems of compressed sensing a torch operation costs 3–10 µs of dispatch, and one iteration
is ~60 of them. tests/recovery/test_fastls.py checks that every schedule takes the same supports
and reaches the same θ as the registered solver.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from iobs.obs.damping import FIRST_DAMPING, MAX_ESCALATIONS

logger = logging.getLogger("iobs.obs.damping")

PD_RTOL = 1e-12  # = iobs.recovery.solvers.PD_RTOL (imported there from here would be circular)
TINY = np.finfo(np.float64).tiny

__all__ = ["LSData", "applies", "run_schedule"]


class LSData:
    """A (n×d), Aᵀ (contiguous), y, Aᵀy and the squared column norms diag AᵀA, as float64 numpy."""

    def __init__(self, objective):
        self.A = objective.A.detach().numpy()
        self.AT = np.ascontiguousarray(self.A.T)
        self.y = objective.y.detach().numpy()
        self.Aty = self.AT @ self.y
        self.diag = np.einsum("ij,ij->i", self.AT, self.AT)
        self.inv_diag = 1.0 / np.maximum(self.diag, TINY)
        self.n, self.d = self.A.shape

    def residual(self, theta):
        """Aθ − y from the columns of supp θ."""
        nz = theta.nonzero()[0]
        return self.AT[nz].T @ theta[nz] - self.y

    def fit(self, idx):
        """argmin f over supp θ ⊆ idx (one damped Cholesky solve on A_TᵀA_T); (θ, λ)."""
        out = np.zeros(self.d)
        if idx.size == 0:
            return out, 0.0
        AT = self.AT[idx]
        L, lam = cholesky(AT @ AT.T, "A_TᵀA_T")
        Li = np.linalg.inv(L)
        out[idx] = Li.T @ (Li @ self.Aty[idx])
        return out, lam


def applies(objective, damping) -> bool:
    """The fast path serves least squares held as float64 CPU tensors with auto damping."""
    A = getattr(objective, "A", None)
    return (
        bool(getattr(objective, "least_squares", False))
        and A is not None
        and A.device.type == "cpu"
        and A.dtype.is_floating_point
        and A.dtype.itemsize == 8
        and damping is None
    )


def cholesky(M, name):
    """(L, λ): lower Cholesky factor of M + λI under the recovery auto-damping rule."""
    dg = M.diagonal()
    dmax = float(dg.max())
    scale = max(float(dg.sum()) / dg.size, 1e-300) if dmax > 0 else 1.0
    lam = 0.0
    for step in range(MAX_ESCALATIONS + 1):
        try:
            L = np.linalg.cholesky(M if lam == 0 else M + lam * np.eye(M.shape[0]))
            if lam > 0 or float(L.diagonal().min()) ** 2 >= PD_RTOL * max(dmax, 1e-300):
                return L, lam
        except np.linalg.LinAlgError:
            pass
        new = lam * 10 if lam > 0 else FIRST_DAMPING * scale
        if step < MAX_ESCALATIONS:
            logger.info("%s: Cholesky failed at damping %.3g; retrying with %.3g", name, lam, new)
            lam = new
    raise ValueError(f"{name}: Cholesky failed, not positive definite with damping={lam:.3g}")


def _norm(v) -> float:
    return math.sqrt(float(v @ v))


def _topk(v, k):
    """Indices of the k largest entries of v (all of them when k ≥ len(v))."""
    if k >= v.size:
        return np.arange(v.size)
    if k <= 0:
        return np.arange(0)
    return np.argpartition(v, v.size - k)[v.size - k :]


def _mask(d, idx):
    m = np.zeros(d, dtype=bool)
    m[idx] = True
    return m


def greedy_obs_row(w, Hinv, n_prune):
    """One-at-a-time OBS removal of ``n_prune`` entries of w under H⁻¹ = Hinv (as
    iobs.obs.projection._greedy_obs_row): (w updated, kept mask, downdated inverse)."""
    t = w.shape[0]
    M = np.empty((t + 1, t + 1))
    M[:t, :t], M[:t, t], M[t, :t], M[t, t] = Hinv, w, w, 0.0
    pen = np.zeros(t)
    wv, dg = M[:t, t], M.diagonal()[:t]  # views: they follow the in-place updates of M
    for _ in range(n_prune):
        i = int((pen + wv * wv / dg).argmin())
        row = M[i].copy()
        M -= row[:, None] * (row * (1.0 / row[i]))
        M[i, i], pen[i] = 1.0, math.inf
    keep = np.isfinite(pen)
    return np.where(keep, M[:t, t], 0.0), keep, M[:t, :t]


class Restricted:
    """The restricted I-OBS step (``select`` "obs" or "gradient", greedy OBS projection) with the cache
    of iobs.recovery.solvers._Restricted: S (indices), H_SS and H_SS⁻¹ of the last projection."""

    def __init__(self, ls: LSData, k, e, select, tol):
        self.ls, self.k, self.e, self.select, self.tol = ls, k, e, select, tol
        self.g0, self.cache, self.lam = None, None, 0.0

    def __call__(self, theta, r, it):
        ls, e = self.ls, self.e
        g = ls.AT @ r
        gnorm = math.sqrt(float(g @ g))
        self.g0 = gnorm if self.g0 is None else self.g0
        if gnorm <= self.tol * self.g0 or gnorm == 0.0:
            return None
        Sidx, HSS, HSS_inv = self.cache if self.cache is not None else self._form(theta)
        free = ls.d - Sidx.size
        if self.select == "obs":
            first = g * g * ls.inv_diag
            first[Sidx] = -1.0
            C = _topk(first, min(2 * e + 8, free))
            HSC = ls.AT[Sidx] @ ls.AT[C].T
            schur = ls.diag[C] - (HSC * (HSS_inv @ HSC)).sum(0) if Sidx.size else ls.diag[C]
            pick = _topk(g[C] ** 2 / np.maximum(schur, TINY), min(e, C.size))
            E, HSE = C[pick], HSC[:, pick]
        else:
            a = np.abs(g)
            a[Sidx] = -1.0
            E = _topk(a, min(e, free))
            HSE = ls.AT[Sidx] @ ls.AT[E].T
        idx = np.concatenate([Sidx, E])
        s, t = Sidx.size, idx.size
        HTT = np.empty((t, t))
        HTT[:s, :s], HTT[:s, s:], HTT[s:, :s] = HSS, HSE, HSE.T
        HTT[s:, s:] = ls.AT[E] @ ls.AT[E].T
        L, lam = cholesky(HTT, "H_TT")
        if lam:
            HTT = HTT + lam * np.eye(idx.size)
        self.lam = max(self.lam, lam)
        Li = np.linalg.inv(L)
        Hinv = Li.T @ Li
        tp = Hinv @ (HTT @ theta[idx] - g[idx])
        return self._project(theta, idx, HTT, Hinv, tp, reuse=not lam)

    def _form(self, theta):
        Sidx = np.flatnonzero(theta)
        HSS = self.ls.AT[Sidx] @ self.ls.AT[Sidx].T
        if not Sidx.size:
            return Sidx, HSS, HSS
        Li = np.linalg.inv(cholesky(HSS, "H_SS")[0])
        return Sidx, HSS, Li.T @ Li

    def _project(self, theta, idx, HTT, Hinv, tp, reuse):
        new = np.zeros_like(theta)
        self.cache = None
        if idx.size <= self.k:
            new[idx] = tp
            if reuse:
                self.cache = (idx, HTT, Hinv)
            return new
        w, keep, Hd = greedy_obs_row(tp, Hinv, idx.size - self.k)
        new[idx] = w
        if reuse:
            kk = np.flatnonzero(keep)
            self.cache = (idx[kk], HTT.take(kk, 0).take(kk, 1), Hd.take(kk, 0).take(kk, 1))
        return new


class SubspacePursuit:
    """Dai & Milenkovic's SP as iobs.recovery.solvers._subspace_pursuit (stop when f does not decrease)."""

    def __init__(self, ls: LSData, k, theta0):
        self.ls, self.k, self.lam = ls, k, 0.0
        r = ls.residual(theta0)
        self.f = 0.5 * float(r @ r)

    def __call__(self, theta, r, it):
        ls, k = self.ls, self.k
        g = ls.AT @ r
        top = _topk(np.abs(g), k)
        if it == 0 and not theta.any():
            new, lam = ls.fit(np.sort(top))
        else:
            b, lam1 = ls.fit(np.flatnonzero(_mask(ls.d, top) | (theta != 0)))
            new, lam = ls.fit(np.sort(_topk(np.abs(b), k)))
            lam = max(lam, lam1)
        self.lam = max(self.lam, lam)
        rn = ls.residual(new)
        f_new = 0.5 * float(rn @ rn)
        if it > 0 and f_new >= self.f:
            return None
        self.f = f_new
        return new


class HTP:
    """Normalised hard thresholding pursuit as iobs.recovery.solvers._htp (step="normalized")."""

    def __init__(self, ls: LSData, k):
        self.ls, self.k, self.prev, self.lam = ls, k, None, 0.0
        self.fixed = False

    def __call__(self, theta, r, it):
        ls, k = self.ls, self.k
        g = ls.AT @ r
        gamma = theta != 0
        if not gamma.any():
            gamma = _mask(ls.d, _topk(np.abs(g), k))
        gG = g * gamma
        Ag = ls.A @ gG
        den = float(Ag @ Ag)
        eta = float(gG @ gG) / den if den > 0 else 1.0 / float(np.linalg.norm(ls.A, 2)) ** 2
        S = np.sort(_topk(np.abs(theta - eta * g), k))
        new, lam = ls.fit(S)
        self.lam = max(self.lam, lam)
        self.fixed = self.prev is not None and np.array_equal(S, self.prev)
        self.prev = S
        return new


#: the schedules served here: (solver name, its options) -> a step factory and the stall patience
def _plan(ls, name, opts, k, theta0, tol):
    if name == "restricted-iobs":
        e = max(1, math.ceil(k / 8)) if opts.get("expand") is None else int(opts["expand"])
        return Restricted(ls, k, e, opts.get("select", "obs"), tol), int(opts.get("patience", 3))
    if name == "subspace-pursuit":
        return SubspacePursuit(ls, k, theta0), None
    return HTP(ls, k), None


def serves(name, opts) -> bool:
    """True for the schedules this module runs (others go to the registered torch solver)."""
    if name == "restricted-iobs":
        ok_keys = set(opts) <= {"expand", "select", "patience", "support", "refine"}
        return (
            ok_keys
            and opts.get("support", "greedy") == "greedy"
            and not opts.get("refine", False)
            and opts.get("select", "obs") in ("obs", "gradient")
        )
    if name == "subspace-pursuit":
        return not opts
    return name == "htp" and set(opts) <= {"step"} and opts.get("step", "normalized") == "normalized"


def run_schedule(ls: LSData, name, opts, k, theta0, max_iter, tol, theta_star=None) -> dict:
    """The one loop of iobs.recovery.solvers._iterate for a served schedule: θ (numpy), n_iter,
    converged, λ and the history (same keys as RecoveryResult.history)."""
    step, patience = _plan(ls, name, opts, k, theta0, tol)
    t0 = time.perf_counter()
    star_norm = None if theta_star is None else float(np.linalg.norm(theta_star))
    theta, r = theta0.copy(), ls.residual(theta0)
    history, best, since = [], math.inf, 0

    def record(th, r, changes):
        nonlocal best, since
        f = 0.5 * float(r @ r)
        dist = rel = None
        if theta_star is not None:
            dist = _norm(th - theta_star)
            rel = dist / star_norm if star_norm > 0 else None
        it = len(history)
        history.append(
            dict(
                iteration=it,
                objective=f,
                distance=dist,
                rel_distance=rel,
                support_changes=changes,
                time=time.perf_counter() - t0,
            )
        )
        if f < best * (1 - 1e-12) or (f == 0.0 and best > 0):
            best, since = f, 0
        else:
            since += 1

    record(theta, r, 0)
    converged = False
    for it in range(max_iter):
        new = step(theta, r, it)
        if new is None:
            converged = True
            break
        r = ls.residual(new)
        record(new, r, int(np.count_nonzero((new != 0) ^ (theta != 0))))
        dstep = _norm(new - theta)
        fixed = dstep <= tol * _norm(new) or dstep == 0.0 or getattr(step, "fixed", False)
        theta = new
        if fixed or (patience is not None and since >= patience):
            converged = fixed
            break
    return dict(theta=theta, n_iter=len(history) - 1, converged=converged, lam=step.lam, history=history)
