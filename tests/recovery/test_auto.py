"""solver="auto": the form it picks, the portfolio's lowest objective, recovery on every amplitude
class, what it reports, and the estimators' checks of degenerate input."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch

from iobs.recovery.auto import GLOBAL, RESTRICTED, schedules_for, uses_global
from iobs.recovery.estimators import IOBSClassifier, IOBSRegressor
from iobs.recovery.objectives import LeastSquares, Logistic
from iobs.recovery.solvers import SOLVERS, solve
from iobs.recovery.synthetic import AMPLITUDES, DESIGNS, logistic_problem, make_problem


def _ls(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g, dtype=torch.float64)
    return LeastSquares(A, torch.randn(n, generator=g, dtype=torch.float64))


def test_auto_is_registered_and_the_default():
    assert "auto" in SOLVERS
    assert IOBSRegressor().solver == "auto" and IOBSClassifier().solver == "auto"
    p = make_problem(40, 80, 3, seed=1)
    assert solve(p.objective(), 3).solver == "auto"


@pytest.mark.parametrize("n, d, form", [(30, 200, "restricted-iobs"), (300, 40, "iobs"), (40, 40, "iobs")])
def test_form_follows_n_and_d(n, d, form):
    """Restricted forms for n < d (H has rank ≤ n), the global Newton form for n ≥ d."""
    obj = _ls(n, d)
    assert uses_global(obj, 5) == (n >= d)
    plan = schedules_for(obj, 5)
    assert plan[0][0] == form and len(plan) == len(GLOBAL if n >= d else RESTRICTED)
    res = solve(obj, 5, "auto")
    assert res.runs[0]["label"].startswith(form + "(")
    assert res.chosen in {r["label"] for r in res.runs}


def test_expansion_sizes_resolve_against_k():
    plan = schedules_for(_ls(30, 200), 20)
    assert plan[0][1]["expand"] == 5 and plan[1][1] == {"select": "gradient", "expand": 20}
    assert plan[0][2] == "restricted-iobs(expand=k/4)" and plan[4][1]["expand"] == 3


def test_portfolio_keeps_the_lowest_objective_and_counts_every_iteration():
    p = make_problem(40, 160, 12, "rademacher", seed=3, snr_db=20)
    res = solve(p.objective(), 12, "auto", stop="none")
    assert len(res.runs) == len(RESTRICTED)
    assert res.objective == pytest.approx(min(r["objective"] for r in res.runs), rel=1e-12)
    assert res.n_iter == sum(r["n_iter"] for r in res.runs)
    assert int(res.mask.sum()) <= 12
    # each run equals the registered solver it names, run alone
    name, opts, _ = schedules_for(p.objective(), 12)[1]
    alone = solve(p.objective(), 12, name, **opts)
    assert res.runs[1]["objective"] == pytest.approx(alone.objective, rel=1e-12)


def test_exact_fit_ends_the_portfolio():
    """Noiseless with 2k < n: the first schedule that fits y exactly is optimal, nothing else runs."""
    p = make_problem(60, 150, 4, seed=4)
    res = solve(p.objective(), 4, "auto")
    assert len(res.runs) == 1 and res.objective < 1e-20


@pytest.mark.parametrize(
    "amplitude, design", list(itertools.product(AMPLITUDES, ("gaussian", "ar0.5", "dct")))
)
def test_recovers_every_amplitude_class_well_below_the_transition(amplitude, design):
    """n = 64, d = 256, k = 6 (the transition of the best solvers is at k ≈ 15–25 there)."""
    for seed in range(3):
        p = make_problem(64, 256, 6, amplitude, design, seed=100 + seed)
        res = solve(p.objective(), 6, "auto")
        assert p.rel_error(res.theta) < 1e-8, (amplitude, design, seed, res.chosen)
        assert torch.equal(res.mask, p.theta_star != 0)


def test_beats_its_first_schedule_on_equal_amplitudes():
    """±1 amplitudes near the transition: the full portfolio's objective is never above the ⌈k/8⌉
    schedule's and it recovers more often (the issue's failure of the single schedule); the default
    (stall stop) recovers at least as often as that schedule."""
    wins = {"auto": 0, "none": 0, "one": 0}
    for seed in range(6):
        p = make_problem(64, 256, 13, "rademacher", seed=200 + seed)
        res = solve(p.objective(), 13, "auto")
        full = solve(p.objective(), 13, "auto", stop="none")
        one = solve(p.objective(), 13, "restricted-iobs")
        floor = 1e-24 * float(p.y @ p.y)  # exact fits differ by rounding only (fast path: numpy)
        assert full.objective <= one.objective * (1 + 1e-9) + floor
        for key, r in (("auto", res), ("none", full), ("one", one)):
            wins[key] += p.rel_error(r.theta) < 1e-4
    assert wins["none"] > wins["one"] and wins["auto"] >= wins["one"] >= 5


@pytest.mark.parametrize("snr", [None, 20])
def test_stall_stop_runs_until_a_schedule_does_not_improve(snr):
    """stop="stall": every run but the last lowered the best f; the last one did not, or fit exactly;
    the answer is the best of the runs made, and those runs are the full portfolio's first ones."""
    for seed in range(4):
        p = make_problem(64, 256, 16, "uniform", "ar0.8", snr, seed=300 + seed)
        res = solve(p.objective(), 16, "auto")
        full = solve(p.objective(), 16, "auto", stop="none")
        fs = [r["objective"] for r in res.runs]
        assert all(b < a for a, b in zip(fs, fs[1:-1]))
        exact = fs[-1] <= 1e-20 * float(p.y @ p.y) / 2
        assert exact or len(fs) == len(full.runs) or fs[-1] >= min(fs[:-1]) * (1 - 1e-12)
        assert res.objective == min(fs)
        assert [r["label"] for r in res.runs] == [r["label"] for r in full.runs[: len(fs)]]
        assert res.objective >= full.objective * (1 - 1e-12)


def test_default_stop_reaches_the_known_optimum_of_the_full_portfolio():
    """Noiseless with 2k < n: θ* is the unique optimum (f = 0). On every amplitude class and design,
    at k below the transition, the default stops with f = 0 wherever the full portfolio reaches it."""
    for amp, design in itertools.product(AMPLITUDES, ("gaussian", "ar0.8", "dct")):
        for seed in range(2):
            p = make_problem(48, 128, 8, amp, design, seed=400 + seed)
            floor = 1e-20 * float(p.y @ p.y)
            full = solve(p.objective(), 8, "auto", stop="none")
            res = solve(p.objective(), 8, "auto")
            if full.objective <= floor:
                assert res.objective <= floor, (amp, design, seed, [r["label"] for r in res.runs])


def test_user_schedules_and_bad_options():
    p = make_problem(40, 80, 3, seed=5)
    res = solve(p.objective(), 3, "auto", schedules=[("htp", {}), ("subspace-pursuit", {})], stop="none")
    assert [r["label"] for r in res.runs] == ["htp", "subspace-pursuit"]
    with pytest.raises(ValueError, match="stop must be one of"):
        solve(p.objective(), 3, "auto", stop="sometimes")
    with pytest.raises(ValueError, match="schedules"):
        solve(p.objective(), 3, "auto", schedules=[("auto", {})])
    with pytest.raises(TypeError, match="auto got unexpected options"):
        solve(p.objective(), 3, "auto", expand=2)


def test_logistic_support_recovery_both_forms():
    for n, d in ((400, 60), (300, 500)):
        X, y, w = logistic_problem(n, d, 4, scale=2.0, seed=7)
        res = solve(Logistic(X, y), 4, "auto")
        assert torch.equal(res.mask, w != 0)
        assert res.runs[0]["label"].startswith("iobs(" if n >= d else "restricted-iobs(")


def test_estimators_report_the_choice():
    p = make_problem(50, 120, 5, "uniform", seed=8)
    r = IOBSRegressor(n_nonzero_coefs=5, fit_intercept=False).fit(p.A.numpy(), p.y.numpy())
    np.testing.assert_allclose(r.coef_, p.theta_star.numpy(), atol=1e-9)
    assert r.solver_chosen_.startswith("restricted-iobs(") and r.solver_runs_
    assert r.n_iter_ == sum(x["n_iter"] for x in r.solver_runs_)
    X, y, w = logistic_problem(300, 30, 3, scale=2.0, seed=9)
    c = IOBSClassifier(n_nonzero_coefs=3).fit(X.numpy(), y.numpy())
    assert c.solver_chosen_ and np.flatnonzero(c.coef_[0]).tolist() == np.flatnonzero(w.numpy()).tolist()


# ----------------------------------------------------------------------------------------------
# degenerate input
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [IOBSRegressor, IOBSClassifier])
def test_constant_and_zero_columns_warn_and_get_zero(cls):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 12))
    X[:, 3] = 5.0  # constant
    X[:, 7] = 0.0  # all zero
    y = X[:, 0] - 2 * X[:, 1] if cls is IOBSRegressor else (X[:, 0] - 2 * X[:, 1] > 0).astype(int)
    with pytest.warns(UserWarning, match=r"X has 2 constant .*column\(s\) \[3, 7\]"):
        est = cls(n_nonzero_coefs=2).fit(X, y)
    coef = np.ravel(est.coef_)
    assert coef[3] == 0 and coef[7] == 0 and np.all(np.isfinite(coef))


def test_zero_column_without_intercept_warns():
    X = np.random.default_rng(1).normal(size=(30, 5))
    X[:, 2] = 0.0
    with pytest.warns(UserWarning, match=r"all-zero column\(s\) \[2\]"):
        IOBSRegressor(n_nonzero_coefs=2, fit_intercept=False).fit(X, X[:, 0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf_are_errors_naming_the_input(bad):
    X = np.random.default_rng(2).normal(size=(10, 4))
    y = X[:, 0].copy()
    X2 = X.copy()
    X2[1, 2] = bad
    with pytest.raises(ValueError, match="Input X contains (NaN|infinity)"):
        IOBSRegressor(n_nonzero_coefs=1).fit(X2, y)
    y2 = y.copy()
    y2[0] = bad
    with pytest.raises(ValueError, match="Input y contains (NaN|infinity)"):
        IOBSRegressor(n_nonzero_coefs=1).fit(X, y2)


def test_k_at_least_n_warns_that_the_support_is_not_identifiable():
    X = np.random.default_rng(3).normal(size=(8, 20))
    with pytest.warns(UserWarning, match=r"n_nonzero_coefs=8 >= n_samples=8.*not identifiable"):
        IOBSRegressor(n_nonzero_coefs=8).fit(X, X[:, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        IOBSRegressor(n_nonzero_coefs=3).fit(X, X[:, 0])  # k < n: no warning


def test_synthetic_classes():
    """Columns of unit expected norm in every design; AR(1) correlation ρ between neighbours; the
    noise level matches the SNR; the amplitude laws."""
    for design in DESIGNS:
        p = make_problem(400, 800, 4, design=design, seed=1)
        norms = p.A.norm(dim=0)
        assert abs(float(norms.mean()) - 1.0) < 0.05, design
    with pytest.raises(ValueError, match="design='dct' takes n <= d"):
        make_problem(65, 64, 4, design="dct")
    A = make_problem(4000, 6, 1, design="ar0.8", seed=2).A
    corr = float((A[:, 2] @ A[:, 3]) / (A[:, 2].norm() * A[:, 3].norm()))
    assert abs(corr - 0.8) < 0.03
    p = make_problem(2000, 50, 5, snr_db=20, seed=3)
    clean = p.A @ p.theta_star
    snr = 20 * math.log10(float(clean.norm() / (p.y - clean).norm()))
    assert abs(snr - 20) < 0.5
    mags = {a: make_problem(10, 100, 20, a, seed=4).theta_star for a in AMPLITUDES}
    nz = {a: t[t != 0].abs() for a, t in mags.items()}
    assert torch.all(nz["rademacher"] == 1) and torch.all((nz["uniform"] >= 1) & (nz["uniform"] <= 2))
    assert sorted(nz["powerlaw"].tolist(), reverse=True)[4] == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="design must be one of"):
        make_problem(10, 20, 2, design="toeplitz")


def test_least_squares_with_n_above_a_large_d_uses_one_restricted_schedule():
    """n ≥ d > GLOBAL_MAX_D (least squares): ⌈k/4⌉ gains alone; the other objectives keep the global
    form there."""
    obj = _ls(320, 256)
    assert not uses_global(obj, 20)
    assert [x[2] for x in schedules_for(obj, 20)] == ["restricted-iobs(expand=k/4)"]
    g = torch.Generator().manual_seed(0)
    X = torch.randn(320, 100, generator=g, dtype=torch.float64)
    assert uses_global(Logistic(X, (X[:, 0] > 0).double()), 5)
    p = make_problem(320, 256, 30, "rademacher", "ar0.8", seed=9)
    res = solve(p.objective(), 30, "auto")
    assert p.rel_error(res.theta) < 1e-8 and len(res.runs) == 1


def test_refit_on_the_support_equals_the_solvers_newton_fit():
    """auto's refit (H_SS from the low-rank factor) takes the Newton steps of solvers._fit_on_support
    (which slices the d×d Hessian): the same θ to rounding, on the plain and the profiled logistic loss."""
    from iobs.recovery.auto import _newton_on_support
    from iobs.recovery.estimators import _ProfiledLogistic
    from iobs.recovery.solvers import _fit_on_support

    X, y, w = logistic_problem(120, 60, 5, scale=2.0, seed=11)
    mask = w != 0
    mask[:3] = True  # a support with three wrong coordinates too
    start = torch.where(mask, torch.full_like(w, 0.1), torch.zeros_like(w))
    for obj in (Logistic(X, y), _ProfiledLogistic(X, y, 0.0)):
        ref = _fit_on_support(obj, start, mask, None, newton_iters=50, tol=1e-12)[0]
        out = _newton_on_support(obj, start, mask, None)
        assert torch.equal(out != 0, ref != 0)
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-12)
        assert float(obj.grad(out)[mask].norm()) < 1e-8
