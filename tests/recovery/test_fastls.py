"""The numpy fast path of auto (iobs.recovery.fastls): the same iterations as the registered torch
solvers, and auto's answer unchanged by it."""

import numpy as np
import pytest
import torch

from iobs.recovery import fastls
from iobs.recovery.objectives import LeastSquares, Logistic
from iobs.recovery.solvers import SOLVERS, solve
from iobs.recovery.synthetic import make_problem

SERVED = [
    ("restricted-iobs", {"expand": 2}),
    ("restricted-iobs", {"expand": 1}),
    ("restricted-iobs", {"expand": 7}),
    ("restricted-iobs", {"select": "gradient", "expand": 13}),
    ("subspace-pursuit", {}),
]


def _same_run(obj, k, name, opts, theta0=None, theta_star=None):
    ref = SOLVERS[name](obj, k, theta0=theta0, theta_star=theta_star, **opts)
    start = np.zeros(obj.d) if theta0 is None else theta0.numpy()
    star = None if theta_star is None else theta_star.numpy()
    out = fastls.run_schedule(fastls.LSData(obj), name, opts, k, start, SOLVERS[name].max_iter, 1e-10, star)
    assert out["n_iter"] == ref.n_iter and out["converged"] == ref.converged, (name, opts)
    assert np.array_equal(out["theta"] != 0, ref.theta.numpy() != 0), (name, opts)
    np.testing.assert_allclose(out["theta"], ref.theta.numpy(), atol=1e-9)
    assert [h["support_changes"] for h in out["history"]] == [h["support_changes"] for h in ref.history]
    np.testing.assert_allclose(
        [h["objective"] for h in out["history"]], [h["objective"] for h in ref.history], rtol=1e-7, atol=1e-18
    )
    return out, ref


@pytest.mark.parametrize("design, snr", [("gaussian", None), ("ar0.8", 20), ("dct", None), ("dct", 10)])
def test_served_schedules_take_the_torch_solvers_iterations(design, snr):
    """Same supports at every iteration, same stopping iteration and θ to rounding (m = 64, N = 256,
    k = 13, near the transition where the schedules swap coordinates for many iterations)."""
    for seed in range(3):
        p = make_problem(64, 256, 13, "rademacher", design, snr, seed=10 + seed)
        for name, opts in SERVED:
            _same_run(p.objective(), 13, name, opts, theta_star=p.theta_star)


def test_warm_start_and_the_damped_working_set():
    """From a given θ0, and with |T| = 2k > n (H_TT singular: auto damping escalates λ as torch does)."""
    p = make_problem(40, 120, 6, seed=3)
    theta0 = torch.zeros(120, dtype=torch.float64)
    theta0[:6] = 1.0
    _same_run(p.objective(), 6, "restricted-iobs", {"expand": 1}, theta0=theta0)
    # H_TT singular: the damped fits are ill-conditioned, so the last-digit test ‖Δθ‖ ≤ tol‖θ‖ may end
    # either path an iteration apart; the supports, the objective and λ agree
    opts = {"select": "gradient", "expand": 8}
    for seed in range(4, 8):
        obj = make_problem(12, 60, 8, seed=seed).objective()
        ref = SOLVERS["restricted-iobs"](obj, 8, **opts)
        out = fastls.run_schedule(fastls.LSData(obj), "restricted-iobs", opts, 8, np.zeros(60), 200, 1e-10)
        assert out["lam"] == pytest.approx(ref.damping, rel=1e-9) and ref.damping > 0
        assert np.array_equal(out["theta"] != 0, ref.theta.numpy() != 0)
        assert out["history"][-1]["objective"] == pytest.approx(ref.objective, rel=1e-9)


def test_auto_answer_is_the_same_on_both_paths():
    for seed in range(4):
        p = make_problem(64, 256, 16, "gaussian", "ar0.5", 20 if seed % 2 else None, seed=50 + seed)
        fast = solve(p.objective(), 16, "auto")
        slow = solve(p.objective(), 16, "auto", fast=False)
        assert fast.chosen == slow.chosen and [r["label"] for r in fast.runs] == [
            r["label"] for r in slow.runs
        ]
        assert torch.equal(fast.mask, slow.mask)
        assert fast.objective == pytest.approx(slow.objective, rel=1e-7, abs=1e-20 * float(p.y @ p.y))


def test_fast_path_applies_only_to_float64_cpu_least_squares_with_auto_damping():
    A, y = torch.randn(10, 20, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
    assert fastls.applies(LeastSquares(A, y), None)
    assert not fastls.applies(LeastSquares(A, y), 0.0)
    assert not fastls.applies(LeastSquares(A.float(), y.float()), None)
    assert not fastls.applies(Logistic(A, (y > 0).double()), None)
    assert not fastls.serves("restricted-iobs", {"refine": True})
    assert not fastls.serves("restricted-iobs", {"support": "topk"})
    with pytest.raises(ValueError, match="fast must be True or False"):
        solve(LeastSquares(A, y), 3, "auto", fast="yes")
