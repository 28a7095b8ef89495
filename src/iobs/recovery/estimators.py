"""scikit-learn style estimators on top of :func:`iobs.recovery.solvers.solve`.

- :class:`IOBSRegressor`: min ½‖Xw + b − y‖² subject to ‖w‖₀ ≤ k. The intercept b is not counted
  in k and not thresholded: with ``fit_intercept`` X and y are centred, the sparse problem is solved
  on the centred data (which profiles b out exactly), and b = ȳ − x̄ᵀw.
- :class:`IOBSClassifier`: binary logistic regression, min (1/n) Σᵢ [log(1 + exp(zᵢ)) − yᵢzᵢ] + ½α‖w‖²,
  z = Xw + b, y ∈ {0, 1}, subject to ‖w‖₀ ≤ k (the loss of ``objectives.Logistic``). The intercept
  is profiled out exactly: f(w) = min_b L(w, b), ∇f = ∇_w L(w, b*(w)) (envelope theorem),
  ∇²f = H_ww − H_wb H_bwᵀ / H_bb (Schur complement), so the solvers see an ordinary objective over
  w alone. Multiclass targets are rejected with a pointer to ``sklearn.multiclass.OneVsRestClassifier``.

Both follow scikit-learn's conventions: ``__init__`` only stores parameters, ``fit`` validates them
(errors name the parameter), numpy in and out, fitted attributes end with an underscore.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from iobs.recovery.objectives import DesignObjective, LeastSquares, Logistic

__all__ = ["IOBSRegressor", "IOBSClassifier"]


def _check_params(est, n_features: int) -> int:
    """Validate the shared constructor parameters; return k."""
    from iobs.recovery.solvers import SOLVERS

    k = est.n_nonzero_coefs
    if k is None:
        k = max(int(0.1 * n_features), 1)  # scikit-learn's OMP default
    elif isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"n_nonzero_coefs must be an integer in [1, n_features] or None, got {k!r}")
    elif not 1 <= k <= n_features:
        raise ValueError(f"n_nonzero_coefs must be in [1, n_features={n_features}], got {k}")
    if not isinstance(est.solver, str) or est.solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {est.solver!r}")
    if isinstance(est.max_iter, bool) or not isinstance(est.max_iter, numbers.Integral) or est.max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {est.max_iter!r}")
    if est.tol is not None and not _nonneg(est.tol):
        raise ValueError(f"tol must be a finite number >= 0 or None, got {est.tol!r}")
    if est.damping is not None and not _nonneg(est.damping):
        raise ValueError(
            f"damping must be a finite number >= 0 or None (solver default), got {est.damping!r}"
        )
    if not isinstance(est.fit_intercept, (bool, np.bool_)):
        raise TypeError(f"fit_intercept must be a bool, got {est.fit_intercept!r}")
    if est.solver_options is not None and not isinstance(est.solver_options, dict):
        raise TypeError(
            f"solver_options must be a dict of extra solver arguments or None, got {est.solver_options!r}"
        )
    return int(k)


def _warn_degenerate(X: np.ndarray, k: int, centred: bool) -> None:
    """Warn (naming the parameter) about constant columns and k >= n_samples."""
    n = X.shape[0]
    const = np.flatnonzero(np.ptp(X, axis=0) == 0) if centred else np.flatnonzero(~X.any(axis=0))
    if n > 1 and const.size:
        what = "constant (all-zero after centring)" if centred else "all-zero"
        warnings.warn(
            f"X has {const.size} {what} column(s) {const[:10].tolist()}: they carry no signal and get "
            "coefficient 0; drop them (e.g. sklearn.feature_selection.VarianceThreshold)",
            UserWarning,
            stacklevel=3,
        )
    if n > 1 and k >= n:
        warnings.warn(
            f"n_nonzero_coefs={k} >= n_samples={n}: a {k}-sparse fit can interpolate y, so the support "
            "is not identifiable (exact recovery needs n_samples > 2*n_nonzero_coefs); lower n_nonzero_coefs",
            UserWarning,
            stacklevel=3,
        )


def _nonneg(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


def _solve(est, objective, k: int, device):
    from iobs.recovery.solvers import solve

    seed = int(check_random_state(est.random_state).randint(2**31 - 1))
    kwargs = dict(est.solver_options or {})
    if est.tol is not None:
        kwargs["tol"] = float(est.tol)
    res = solve(
        objective,
        k,
        solver=est.solver,
        max_iter=int(est.max_iter),
        damping=None if est.damping is None else float(est.damping),
        device=device,
        dtype=torch.float64,
        seed=seed,
        **kwargs,
    )
    if not res.converged:
        warnings.warn(
            f"{type(est).__name__}(solver={est.solver!r}) did not converge: stopped after {res.n_iter} "
            f"iterations (max_iter={est.max_iter}) without meeting tol; increase max_iter or loosen tol",
            ConvergenceWarning,
            stacklevel=3,
        )
    return res


def _device(device) -> torch.device:
    from iobs.utils import resolve_device

    return torch.device("cpu") if device is None else resolve_device(device)


class _SparseEstimator(BaseEstimator):
    """The parameters and fitted attributes shared by both estimators (see :class:`IOBSRegressor`)."""

    def __init__(
        self,
        n_nonzero_coefs=None,
        solver="auto",
        max_iter=100,
        tol=None,
        damping=None,
        fit_intercept=True,
        solver_options=None,
        random_state=None,
        device=None,
    ):
        self.n_nonzero_coefs = n_nonzero_coefs
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.damping = damping
        self.fit_intercept = fit_intercept
        self.solver_options = solver_options
        self.random_state = random_state
        self.device = device

    def _record(self, res) -> None:
        """The solver's result as fitted attributes (besides coef_ and intercept_)."""
        self.support_ = res.mask.detach().cpu().numpy().astype(bool)
        self.n_iter_ = int(res.n_iter)
        self.converged_ = bool(res.converged)
        self.damping_ = res.damping
        self.history_ = res.history
        self.solver_chosen_ = res.chosen
        self.solver_runs_ = res.runs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


class IOBSRegressor(RegressorMixin, _SparseEstimator):
    """Sparse least squares with the I-OBS family: at most ``n_nonzero_coefs`` non-zero coefficients.

    Parameters
    ----------
    n_nonzero_coefs : int or None
        k, the number of kept coefficients (None: 10 % of the features, at least 1, like OMP).
    solver : str
        Any name of :data:`iobs.recovery.solvers.SOLVERS`: "auto" (default: the portfolio of
        :mod:`iobs.recovery.auto`, global Newton forms for n ≥ d (least squares: d ≤ 64), restricted
        forms with several working-set schedules otherwise, lowest objective kept), "iobs", "topk-iobs",
        "kiht", "htp", "restricted-iobs", "restricted-topk-iobs", "stochastic-iobs", "cosamp",
        "subspace-pursuit".
    max_iter, tol : stopping rules of the solver (tol=None: the solver's default).
    damping : λ added to the Hessian (None: the solver's default); the value used is in ``damping_``.
    fit_intercept : centre X and y and fit an unpenalised intercept outside the k coefficients.
    solver_options : dict of extra keyword arguments for the solver (e.g. ``{"support": "topk"}``).
    random_state : seeds the stochastic solvers.
    device : torch device for the computation (None: CPU). Inputs and outputs stay numpy.

    Attributes
    ----------
    coef_ (n_features,), intercept_ (float), n_iter_ (auto: summed over its runs), converged_,
    support_ (bool mask), damping_, history_ (the (chosen) solver's per-iteration records),
    solver_chosen_ (the schedule whose fit is kept, e.g. "restricted-iobs(select=gradient, expand=5)"),
    solver_runs_ (auto: one dict per schedule run: label, objective, n_iter, converged, time),
    n_features_in_.

    Warnings (``UserWarning``, the fit goes on): a constant column of X (all-zero after centring) is
    named and can only get coefficient 0; ``n_nonzero_coefs >= n_samples`` (the k-sparse fit can
    interpolate y, so the support is not identifiable). NaN/Inf in X or y is an error.
    """

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        k = _check_params(self, X.shape[1])
        _warn_degenerate(X, k, bool(self.fit_intercept))
        if self.fit_intercept:
            x_mean, y_mean = X.mean(axis=0), float(y.mean())
        else:
            x_mean, y_mean = np.zeros(X.shape[1]), 0.0
        dev = _device(self.device)
        A = torch.as_tensor(X - x_mean, dtype=torch.float64, device=dev)
        b = torch.as_tensor(y - y_mean, dtype=torch.float64, device=dev)
        res = _solve(self, LeastSquares(A, b), k, dev)
        self.coef_ = res.theta.detach().cpu().numpy().astype(np.float64)
        self.intercept_ = float(y_mean - x_mean @ self.coef_) if self.fit_intercept else 0.0
        self._record(res)
        return self

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.coef_ + self.intercept_


class _ProfiledLogistic(DesignObjective):
    """f(w) = min_b ℓ(w, b) + ½α‖w‖², ℓ = RC's mean logistic loss on [X, 1] (so b is never thresholded).

    ∇f(w) = ∇_w ℓ(w, b*(w)) + αw (envelope theorem); ∇²f = Bᵀ(I − ĉĉᵀ)B + αI where [B, c] is the
    factor of the joint Hessian (rows √(σ(1−σ)/n)·[xᵢ, 1]) and ĉ = c/‖c‖ — the Schur complement
    H_ww − H_wb H_bwᵀ/H_bb in low-rank form. b*(w) solves the 1-D problem by safeguarded Newton.
    """

    has_lowrank_hessian = has_lipschitz = has_batch_grad = True

    def __init__(self, X: torch.Tensor, t: torch.Tensor, alpha: float):
        ones = torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device)
        self.joint = Logistic(torch.cat([X, ones], dim=1), t)
        self.A, self.t, self.alpha = X, t, float(alpha)  # A = X: the design
        self.n, self.d = X.shape
        self._cache: tuple | None = None

    def _with(self, A) -> _ProfiledLogistic:
        return _ProfiledLogistic(A, self.t.to(A), self.alpha)

    def intercept(self, w: torch.Tensor) -> torch.Tensor:
        """b*(w) = argmin_b ℓ(w, b): the root of mean(σ(Xw + b)) = mean(t)."""
        if self._cache is not None and torch.equal(self._cache[0], w):
            return self._cache[1]
        z0 = self.A @ self._check_theta(w)
        b = torch.zeros((), dtype=z0.dtype, device=z0.device)
        target = self.t.sum()
        for _ in range(200):  # g(b) is increasing and convex-concave: damped Newton converges
            p = torch.sigmoid(z0 + b)
            step = (p.sum() - target) / (p * (1 - p)).sum().clamp_min(1e-300)
            b = b - step.clamp(-4.0, 4.0)
            if abs(float(step)) <= 1e-12 * (1.0 + abs(float(b))):
                break
        self._cache = (w.clone(), b)
        return b

    def _joint_point(self, w):
        return torch.cat([w, self.intercept(w).reshape(1)])

    def value(self, w):
        return self.joint.value(self._joint_point(w)) + 0.5 * self.alpha * (w @ w)

    def grad(self, w):
        return self.joint.grad(self._joint_point(w))[:-1] + self.alpha * w

    def hessian_factor(self, w):
        Bj, _ = self.joint.hessian_factor(self._joint_point(w))
        B, c = Bj[:, :-1], Bj[:, -1]
        c_hat = c / torch.linalg.vector_norm(c).clamp_min(1e-300)
        return B - torch.outer(c_hat, c_hat @ B), self.alpha

    def batch_grad(self, w, rows):
        """Mini-batch estimate of ∇f with the full-data intercept b*(w)."""
        Xb = self.A[rows]
        p = torch.sigmoid(Xb @ w + self.intercept(w))
        return Xb.T @ (p - self.t[rows]) / len(rows) + self.alpha * w

    def lipschitz(self) -> float:
        """λ_max(∇²f) ≤ σ_max(X)²/(4n) + α (the projection I − ĉĉᵀ does not increase it)."""
        return float(torch.linalg.matrix_norm(self.A, ord=2)) ** 2 / (4 * self.n) + self.alpha


class IOBSClassifier(ClassifierMixin, _SparseEstimator):
    """Sparse binary logistic regression with the I-OBS family (at most ``n_nonzero_coefs`` weights).

    Parameters as :class:`IOBSRegressor`, plus ``alpha`` ≥ 0, an optional ridge term ½α‖w‖² that keeps
    the problem bounded on separable data (α = 0: plain maximum likelihood). Binary targets only:
    for more classes wrap it in ``sklearn.multiclass.OneVsRestClassifier``.

    Attributes: classes_ (2,), coef_ (1, n_features), intercept_ (1,), n_iter_, converged_,
    support_, damping_, history_, solver_chosen_, solver_runs_, n_features_in_ (as IOBSRegressor,
    with the same warnings for constant columns and n_nonzero_coefs >= n_samples).
    """

    def __init__(
        self,
        n_nonzero_coefs=None,
        solver="auto",
        max_iter=100,
        tol=None,
        damping=None,
        fit_intercept=True,
        alpha=0.0,
        solver_options=None,
        random_state=None,
        device=None,
    ):
        common = (n_nonzero_coefs, solver, max_iter, tol, damping, fit_intercept, solver_options)
        super().__init__(*common, random_state, device)
        self.alpha = alpha

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        target = type_of_target(y, input_name="y", raise_unknown=True)
        if target not in ("binary", "multiclass"):
            raise ValueError(f"Unknown label type: y must hold class labels, got a {target!r} target")
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ValueError(
                "Only binary classification is supported by IOBSClassifier: y must have exactly 2 classes, "
                f"got {len(self.classes_)} class(es) {self.classes_[:5].tolist()}; wrap it in "
                "sklearn.multiclass.OneVsRestClassifier for more classes"
            )
        k = _check_params(self, X.shape[1])
        if not _nonneg(self.alpha):
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        _warn_degenerate(X, k, bool(self.fit_intercept))
        dev = _device(self.device)
        A = torch.tensor(X, dtype=torch.float64, device=dev)  # a copy: X may be read-only
        t = torch.as_tensor(y == self.classes_[1], dtype=torch.float64, device=dev)
        if self.fit_intercept:
            obj = _ProfiledLogistic(A, t, float(self.alpha))
        else:
            obj = Logistic(A, t, l2=float(self.alpha))
        res = _solve(self, obj, k, dev)
        w = res.theta.detach().to(device=dev, dtype=torch.float64)
        self.coef_ = w.cpu().numpy()[None, :]
        self.intercept_ = np.array([float(obj.intercept(w)) if self.fit_intercept else 0.0])
        self._record(res)
        return self

    def decision_function(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return X @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, X):
        z = self.decision_function(X)
        p1 = 0.5 * (1.0 + np.tanh(0.5 * z))  # σ(z) without overflow
        return np.column_stack([1.0 - p1, p1])

    def predict_log_proba(self, X):
        return np.log(self.predict_proba(X))

    def predict(self, X):
        check_is_fitted(self)
        return self.classes_[(self.decision_function(X) > 0).astype(int)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags
