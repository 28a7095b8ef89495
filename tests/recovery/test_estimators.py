"""IOBSRegressor / IOBSClassifier: scikit-learn conventions, recovery of a planted sparse model, errors."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks

from iobs.recovery.estimators import IOBSClassifier, IOBSRegressor, _ProfiledLogistic


# Every check of scikit-learn's suite applies and passes; alpha > 0 keeps the classifier's problem
# bounded on the separable toy data the checks use, so each fit converges in a few iterations.
@parametrize_with_checks([IOBSRegressor(max_iter=50), IOBSClassifier(alpha=1e-2, max_iter=30)])
def test_sklearn_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def _sparse_regression(n, d, k, seed, intercept=0.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = np.zeros(d)
    support = rng.choice(d, k, replace=False)
    w[support] = rng.normal(size=k) + np.sign(rng.normal(size=k))
    return X, X @ w + intercept, w


@pytest.mark.parametrize("solver", ["iobs", "topk-iobs", "htp", "restricted-iobs", "subspace-pursuit"])
def test_regressor_recovers_planted_model(solver):
    X, y, w = _sparse_regression(60, 25, 4, seed=1, intercept=-3.0)
    r = IOBSRegressor(n_nonzero_coefs=4, solver=solver).fit(X, y)
    assert np.count_nonzero(r.coef_) == 4
    np.testing.assert_allclose(r.coef_, w, atol=1e-9)
    assert r.intercept_ == pytest.approx(-3.0, abs=1e-9)
    np.testing.assert_allclose(r.predict(X), y, atol=1e-8)
    assert r.score(X, y) == pytest.approx(1.0)
    assert r.converged_ and r.n_iter_ >= 1 and r.history_[-1]["objective"] < 1e-15


def test_regressor_compressed_sensing_restricted():
    """n < d: the restricted Newton step finds the exact support."""
    X, y, w = _sparse_regression(50, 120, 6, seed=2)
    r = IOBSRegressor(n_nonzero_coefs=6, solver="restricted-iobs", fit_intercept=False).fit(X, y)
    assert r.intercept_ == 0.0
    np.testing.assert_array_equal(r.support_, w != 0)
    np.testing.assert_allclose(r.coef_, w, atol=1e-8)


def test_regressor_equals_least_squares_on_its_support():
    """With noise the fit is the least-squares solution restricted to the returned support."""
    X, y, _ = _sparse_regression(80, 20, 3, seed=3, intercept=1.0)
    y = y + np.random.default_rng(0).normal(scale=0.3, size=len(y))
    r = IOBSRegressor(n_nonzero_coefs=5, solver="iobs").fit(X, y)
    S = np.flatnonzero(r.support_)
    assert len(S) == 5
    ref = LinearRegression().fit(X[:, S], y)
    np.testing.assert_allclose(r.coef_[S], ref.coef_, atol=1e-8)
    assert r.intercept_ == pytest.approx(ref.intercept_, abs=1e-8)


def test_regressor_default_k_and_convergence_warning():
    X, y, _ = _sparse_regression(40, 30, 3, seed=4)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        r = IOBSRegressor(solver="kiht", max_iter=2).fit(X, y)
    assert np.count_nonzero(r.coef_) <= 3 and r.n_iter_ == 2  # default k = 10 % of 30 features


def _logistic_data(n, d, support, coefs, b, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    w = np.zeros(d)
    w[support] = coefs
    p = 1 / (1 + np.exp(-(X @ w + b)))
    return X, np.where(rng.random(n) < p, "yes", "no"), w


@pytest.mark.parametrize("solver", ["iobs", "restricted-iobs", "htp"])
def test_classifier_is_the_mle_on_the_true_support(solver):
    X, y, w = _logistic_data(500, 15, [2, 9, 11], [2.5, -2.0, 1.5], 0.7, seed=5)
    c = IOBSClassifier(n_nonzero_coefs=3, solver=solver, max_iter=50).fit(X, y)
    assert list(c.classes_) == ["no", "yes"]
    np.testing.assert_array_equal(np.flatnonzero(c.coef_[0]), [2, 9, 11])
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=1000).fit(X[:, [2, 9, 11]], y)
    np.testing.assert_allclose(c.coef_[0, [2, 9, 11]], ref.coef_[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(c.intercept_, ref.intercept_, rtol=1e-6, atol=1e-6)
    proba = c.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-c.decision_function(X))))
    assert set(c.predict(X)) <= {"no", "yes"} and c.score(X, y) > 0.75


def test_classifier_without_intercept_uses_plain_logistic():
    X, y, _ = _logistic_data(300, 8, [1, 4], [3.0, -2.0], 0.0, seed=6)
    c = IOBSClassifier(n_nonzero_coefs=2, fit_intercept=False, alpha=0.01).fit(X, y)
    assert c.intercept_[0] == 0.0 and np.flatnonzero(c.coef_[0]).tolist() == [1, 4]


def test_profiled_objective_derivatives():
    """grad and Hessian of f(w) = min_b ℓ(w, b) + ½α‖w‖² against central differences."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 6, generator=g, dtype=torch.float64)
    t = (torch.rand(40, generator=g) < 0.4).double()
    f = _ProfiledLogistic(X, t, alpha=0.05)
    w = 0.5 * torch.randn(6, generator=g, dtype=torch.float64)
    eye, eps = torch.eye(6, dtype=torch.float64), 1e-5
    fd_grad = torch.stack([(f.value(w + eps * e) - f.value(w - eps * e)) / (2 * eps) for e in eye])
    fd_hess = torch.stack([(f.grad(w + eps * e) - f.grad(w - eps * e)) / (2 * eps) for e in eye])
    torch.testing.assert_close(f.grad(w), fd_grad, atol=1e-8, rtol=1e-6)
    torch.testing.assert_close(f.hessian(w), fd_hess, atol=1e-8, rtol=1e-6)
    # the intercept is optimal: the joint gradient in b vanishes
    b = f.intercept(w)
    assert abs(float((torch.sigmoid(X @ w + b) - t).mean())) < 1e-12


def test_multiclass_is_refused_but_one_vs_rest_works():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(150, 6))
    y = np.argmax(X[:, :3], axis=1)
    with pytest.raises(ValueError, match="Only binary classification.*OneVsRestClassifier"):
        IOBSClassifier(n_nonzero_coefs=2).fit(X, y)
    ovr = OneVsRestClassifier(IOBSClassifier(n_nonzero_coefs=3, alpha=0.01)).fit(X, y)
    assert ovr.score(X, y) > 0.8


@pytest.mark.parametrize(
    "params, exc, match",
    [
        ({"n_nonzero_coefs": 0}, ValueError, "n_nonzero_coefs"),
        ({"n_nonzero_coefs": 11}, ValueError, "n_nonzero_coefs"),
        ({"n_nonzero_coefs": 2.5}, TypeError, "n_nonzero_coefs"),
        ({"solver": "lasso"}, ValueError, "solver must be one of"),
        ({"max_iter": 0}, ValueError, "max_iter"),
        ({"tol": -1.0}, ValueError, "tol"),
        ({"damping": float("nan")}, ValueError, "damping"),
        ({"fit_intercept": "yes"}, TypeError, "fit_intercept"),
        ({"solver_options": ["greedy"]}, TypeError, "solver_options"),
        ({"solver": "iobs", "solver_options": {"support": "bogus"}}, ValueError, "support"),
        ({"solver_options": {"support": "greedy"}}, TypeError, "auto got unexpected options"),
        ({"solver_options": {"stop": "never"}}, ValueError, "stop must be one of"),
        ({"solver_options": {"schedules": [("lasso", {})]}}, ValueError, "schedules"),
    ],
)
@pytest.mark.parametrize("cls", [IOBSRegressor, IOBSClassifier])
def test_bad_parameters(cls, params, exc, match):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 10)), np.tile([0, 1], 10)
    with pytest.raises(exc, match=match):
        cls(**params).fit(X, y)


def test_bad_inputs():
    X = np.ones((5, 3))
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        IOBSRegressor(n_nonzero_coefs=1).fit(X, np.ones(5))
    with pytest.raises(ValueError, match="alpha"):
        IOBSClassifier(alpha=-1).fit(np.random.default_rng(0).normal(size=(6, 2)), [0, 1] * 3)
    r = IOBSRegressor(n_nonzero_coefs=1).fit(np.eye(4), np.arange(4.0))
    with pytest.raises(ValueError, match="features"):
        r.predict(np.ones((2, 3)))
