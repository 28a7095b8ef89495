"""Recovery solvers: known optima reached, monotonicity, history contract, bad input."""

import itertools

import pytest
import torch

from iobs.recovery.objectives import LeastSquares, Logistic, TorchObjective
from iobs.recovery.solvers import SOLVERS, iobs, kiht, restricted_iobs, solve, stochastic_iobs, topk_iobs

F64 = torch.float64


def gaussian_problem(n, d, k_star, seed):
    """A entries N(0, 1/n), k*-sparse θ* with N(0, 1) values on a random support, y = Aθ*."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g, dtype=F64) / n**0.5
    theta_star = torch.zeros(d, dtype=F64)
    theta_star[torch.randperm(d, generator=g)[:k_star]] = torch.randn(k_star, generator=g, dtype=F64)
    return LeastSquares(A, A @ theta_star), theta_star


ALL = sorted(SOLVERS)
FAST_EXACT = [
    "topk-iobs",
    "iobs",
    "restricted-iobs",
    "restricted-topk-iobs",
    "htp",
    "cosamp",
    "subspace-pursuit",
]


@pytest.mark.parametrize("name", FAST_EXACT)
def test_noiseless_well_posed_recovery(name):
    obj, theta_star = gaussian_problem(60, 30, 5, seed=1)
    res = solve(obj, 8, name, theta_star=theta_star, max_iter=50)
    assert res.converged
    assert int(res.mask.sum()) <= 8
    assert res.history[-1]["rel_distance"] < 1e-10
    assert torch.equal(res.mask, res.theta != 0)


@pytest.mark.parametrize("support", ["greedy", "topk"])
def test_figure1a_setup_second_order_in_few_iterations(support):
    """Fig. 1a (d=128, k*=16, n=256, k=64): I-OBS and Topk-I-OBS reach 1e-6 within 3 iterations."""
    for seed in range(3):
        obj, theta_star = gaussian_problem(256, 128, 16, seed)
        for res in (
            iobs(obj, 64, theta_star=theta_star, support=support),
            topk_iobs(obj, 64, theta_star=theta_star),
        ):
            it = res.iterations_to(1e-6)
            assert it is not None and it <= 3


def test_compressed_sensing_restricted_iobs_recovers():
    obj, theta_star = gaussian_problem(80, 200, 10, seed=3)
    for fn in (restricted_iobs,):
        res = fn(obj, 10, theta_star=theta_star)
        assert res.history[-1]["rel_distance"] < 1e-10
    res = solve(obj, 10, "restricted-topk-iobs", theta_star=theta_star)
    assert res.history[-1]["rel_distance"] < 1e-10


@pytest.mark.parametrize("support", ["greedy", "topk"])
def test_global_iobs_in_compressed_sensing_regime_keeps_k(support):
    """n < d: H = AᵀA is singular; auto damping is reported and the low-rank forms give exactly k entries."""
    obj, theta_star = gaussian_problem(30, 80, 4, seed=4)
    res = iobs(obj, 12, theta_star=theta_star, support=support, max_iter=5)
    assert res.damping > 0
    assert int((res.theta != 0).sum()) == 12
    assert res.history[-1]["objective"] <= res.history[0]["objective"]


def test_exact_support_one_step_is_the_global_sparse_optimum():
    """For a quadratic f with n ≥ d, one I-OBS step with exact support from any θ0 minimises f over all
    k-sparse θ: compare against enumerating every support."""
    g = torch.Generator().manual_seed(5)
    A = torch.randn(12, 7, generator=g, dtype=F64)
    y = torch.randn(12, generator=g, dtype=F64)
    obj = LeastSquares(A, y)
    res = iobs(obj, 3, support="exact", max_iter=1)

    def fit(Q):
        AQ = A[:, list(Q)]
        r = AQ @ torch.linalg.lstsq(AQ, y[:, None]).solution.squeeze(1) - y
        return 0.5 * float(r @ r)

    best = min(fit(Q) for Q in itertools.combinations(range(7), 3))
    assert res.history[-1]["objective"] == pytest.approx(best, rel=1e-10)
    assert int(res.mask.sum()) == 3


@pytest.mark.parametrize("step", ["1/L", "normalized"])
def test_kiht_objective_never_increases(step):
    obj, theta_star = gaussian_problem(50, 120, 6, seed=6)
    res = kiht(obj, 10, theta_star=theta_star, max_iter=150, step=step)
    f = [h["objective"] for h in res.history]
    assert all(b <= a * (1 + 1e-12) + 1e-15 for a, b in zip(f, f[1:]))
    assert f[-1] < f[0]
    assert int((res.theta != 0).sum()) <= 10


def test_kiht_is_first_order_slow_on_figure1a():
    obj, theta_star = gaussian_problem(256, 128, 16, seed=0)
    res = kiht(obj, 64, theta_star=theta_star, max_iter=400)
    it = res.iterations_to(1e-6)
    assert it is not None and it > 20  # linear convergence; the second-order methods need <= 3


def test_stochastic_iobs_full_and_mini_batch():
    obj, theta_star = gaussian_problem(256, 128, 16, seed=2)
    full = stochastic_iobs(obj, 64, theta_star=theta_star, max_iter=600)
    assert full.history[-1]["rel_distance"] < 1e-6
    assert full.options["lam"] == pytest.approx(obj.lipschitz())
    mini = stochastic_iobs(obj, 64, theta_star=theta_star, max_iter=300, batch_size=64, seed=1)
    again = stochastic_iobs(obj, 64, theta_star=theta_star, max_iter=300, batch_size=64, seed=1)
    torch.testing.assert_close(mini.theta, again.theta)
    assert mini.history[-1]["objective"] < 1e-3 * mini.history[0]["objective"]
    assert int((mini.theta != 0).sum()) <= 64


def test_logistic_restricted_iobs_is_stationary_on_its_support():
    g = torch.Generator().manual_seed(7)
    A = torch.randn(120, 20, generator=g, dtype=F64)
    w = torch.zeros(20, dtype=F64)
    w[:3] = torch.tensor([2.0, -2.0, 1.5], dtype=F64)
    y = (torch.rand(120, generator=g, dtype=F64) < torch.sigmoid(A @ w)).to(F64)
    obj = Logistic(A, y, l2=1e-2)
    for name in ("restricted-iobs", "iobs", "topk-iobs", "htp"):
        res = solve(obj, 3, name, max_iter=30)
        assert int((res.theta != 0).sum()) <= 3
        assert res.history[-1]["objective"] < res.history[0]["objective"]
    res = restricted_iobs(obj, 3, max_iter=30)
    grad = obj.grad(res.theta)
    assert float(grad[res.mask].abs().max()) < 1e-6


def test_torch_objective_and_float32():
    obj, theta_star = gaussian_problem(40, 20, 3, seed=8)
    A, y = obj.A, obj.y
    user = TorchObjective(lambda t: 0.5 * ((A.to(t) @ t - y.to(t)) ** 2).sum(), d=20, quadratic=True)
    res = topk_iobs(user, 5, theta_star=theta_star)
    assert res.history[-1]["rel_distance"] < 1e-8
    res32 = solve(obj, 5, "restricted-iobs", theta_star=theta_star, dtype=torch.float32, device="cpu")
    assert res32.theta.dtype == torch.float32
    assert res32.history[-1]["rel_distance"] < 1e-4


def test_history_contract():
    obj, theta_star = gaussian_problem(60, 30, 5, seed=9)
    res = solve(obj, 8, "kiht", theta_star=theta_star, max_iter=5)
    assert res.n_iter == len(res.history) - 1 == 5 and not res.converged
    h0 = res.history[0]
    assert h0["iteration"] == 0 and h0["support_changes"] == 0
    assert h0["distance"] == pytest.approx(float(theta_star.norm()))
    assert h0["rel_distance"] == pytest.approx(1.0)
    assert res.history[-1]["objective"] == pytest.approx(float(obj.value(res.theta)))
    assert [h["iteration"] for h in res.history] == list(range(6))
    times = [h["time"] for h in res.history]
    assert all(b >= a for a, b in zip(times, times[1:]))
    first = solve(obj, 8, "kiht", max_iter=1)
    assert first.history[1]["support_changes"] == int(first.mask.sum())  # from θ0 = 0
    assert res.solver == "kiht" and res.options == {"step": "1/L"}
    plain = solve(obj, 8, "htp")
    assert plain.history[-1]["distance"] is None and plain.history[-1]["rel_distance"] is None


def test_bad_input():
    obj, _ = gaussian_problem(10, 20, 2, seed=10)
    with pytest.raises(ValueError, match="k must be an integer in \\[1, 20\\], got 0"):
        solve(obj, 0)
    with pytest.raises(ValueError, match="k must be an integer in \\[1, 20\\], got 21"):
        solve(obj, 21, "kiht")
    with pytest.raises(ValueError, match="solver must be one of"):
        solve(obj, 3, "omp")
    with pytest.raises(ValueError, match="theta0 must have shape \\(20,\\)"):
        solve(obj, 3, theta0=torch.zeros(19))
    with pytest.raises(ValueError, match="theta0 contains"):
        solve(obj, 3, theta0=torch.full((20,), float("nan")))
    with pytest.raises(ValueError, match="damping must be"):
        solve(obj, 3, "iobs", damping=-1.0)
    with pytest.raises(ValueError, match="not positive definite with damping=0"):
        solve(obj, 3, "topk-iobs", damping=0.0)
    with pytest.raises(ValueError, match="support must be one of"):
        solve(obj, 3, "iobs", support="random")
    with pytest.raises(ValueError, match="step must be"):
        solve(obj, 3, "kiht", step=-1.0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            solve(obj, 3, device="cuda")
    with pytest.raises(TypeError, match="objective must be"):
        solve("not an objective", 3)
    singular = TorchObjective(lambda t: (t[0] - 1.0) ** 2, d=3)
    with pytest.raises(ValueError, match="not positive definite"):
        solve(singular, 1, "iobs", damping=0.0)
    res = solve(singular, 1, "iobs")  # auto damping handles it and reports λ
    assert res.damping > 0 and float(res.theta[0]) == pytest.approx(1.0, rel=1e-4)
    with pytest.raises(ValueError, match="batch_size"):
        solve(obj, 3, "stochastic-iobs", batch_size=11)


@pytest.mark.parametrize(
    "opts",
    [
        {},
        {"select": "gradient"},
        {"select": "gradient", "expand": 6},  # the form: T = supp θ ∪ top-k |∇f|
        {"expand": 1},
        {"expand": 10, "refine": True},
        {"support": "topk"},
        {"support": "exact", "expand": 2},
    ],
)
def test_restricted_iobs_options_recover(opts):
    obj, theta_star = gaussian_problem(60, 120, 6, seed=12)
    k = 6 if opts.get("support") != "exact" else 3
    if k == 3:
        obj, theta_star = gaussian_problem(40, 30, 3, seed=13)
    res = restricted_iobs(obj, k, theta_star=theta_star, **opts)
    assert res.converged
    assert res.history[-1]["rel_distance"] < 1e-10
    assert int(res.mask.sum()) <= k
    assert res.options["select"] == opts.get("select", "obs")


def test_restricted_iobs_second_order_selection_is_exact_gain():
    """The gain used to rank additions is the exact decrease of a least-squares objective when j joins
    the support and the support is re-fitted."""
    from iobs.recovery.solvers import _addition_gain, _HessianBlocks

    obj, _ = gaussian_problem(30, 12, 3, seed=14)
    A, y = obj.A, obj.y
    S = torch.tensor([1, 4, 7])
    theta = torch.zeros(12, dtype=F64)
    theta[S] = torch.linalg.lstsq(A[:, S], y[:, None]).solution.squeeze(1)
    g = obj.grad(theta)
    blocks = _HessianBlocks(obj).at(theta)
    C = torch.tensor([0, 2, 9])
    HSS_inv = torch.linalg.inv(blocks.block(S, S))
    gain = _addition_gain(blocks, g, S, C, blocks.block(S, C), HSS_inv)
    for j, gj in zip(C.tolist(), gain.tolist()):
        T = torch.cat([S, torch.tensor([j])])
        r = A[:, T] @ torch.linalg.lstsq(A[:, T], y[:, None]).solution.squeeze(1) - y
        assert gj == pytest.approx(2 * (float(obj.value(theta)) - 0.5 * float(r @ r)), rel=1e-8)


def test_restricted_forms_on_non_quadratic_and_user_objectives():
    g = torch.Generator().manual_seed(15)
    A = torch.randn(80, 30, generator=g, dtype=F64)
    y = (torch.rand(80, generator=g, dtype=F64) < torch.sigmoid(A[:, :2].sum(1))).to(F64)
    logistic = Logistic(A, y, l2=0.05)
    user = TorchObjective(lambda t: Logistic(A, y, l2=0.05).value(t), d=30)
    a = restricted_iobs(logistic, 4, max_iter=40)
    b = restricted_iobs(user, 4, max_iter=40)
    torch.testing.assert_close(a.theta, b.theta, rtol=1e-8, atol=1e-10)
    c = solve(logistic, 4, "restricted-topk-iobs", max_iter=40)
    assert int((c.theta != 0).sum()) <= 4 and c.history[-1]["objective"] < c.history[0]["objective"]


def test_restricted_bad_options():
    obj, _ = gaussian_problem(20, 30, 2, seed=16)
    with pytest.raises(ValueError, match="select must be"):
        restricted_iobs(obj, 3, select="random")
    with pytest.raises(ValueError, match="expand must be an integer in \\[1, 30\\]"):
        restricted_iobs(obj, 3, expand=0)
    with pytest.raises(ValueError, match="support must be one of"):
        restricted_iobs(obj, 3, support="magnitude")
    with pytest.raises(ValueError, match="patience must be"):
        solve(obj, 3, "restricted-topk-iobs", patience=0)


def test_restricted_warm_start_with_more_entries_than_samples():
    """k > n from a dense warm start: H_SS is singular, auto damping handles it and is reported;
    damping=0 is a clear error."""
    g = torch.Generator().manual_seed(17)
    A = torch.randn(20, 60, generator=g, dtype=F64)
    obj = LeastSquares(A, torch.randn(20, generator=g, dtype=F64))
    theta0 = torch.randn(60, generator=g, dtype=F64)
    res = restricted_iobs(obj, 40, theta0=theta0, max_iter=30)
    assert res.damping > 0 and int((res.theta != 0).sum()) <= 40
    assert res.history[-1]["objective"] < 1e-8 * res.history[0]["objective"]
    with pytest.raises(ValueError, match="not positive definite"):
        restricted_iobs(obj, 40, theta0=theta0, damping=0.0)


def test_solve_uses_each_solvers_own_max_iter_default():
    """solve(max_iter=None) runs a solver with its registered default (restricted forms: 200), the same as
    calling the solver directly; unknown options are a TypeError naming them."""
    assert SOLVERS["restricted-iobs"].max_iter == 200 and SOLVERS["restricted-topk-iobs"].max_iter == 200
    others = [name for name in ALL if not name.startswith("restricted") and name != "auto"]
    assert all(SOLVERS[name].max_iter == 100 for name in others)
    assert SOLVERS["auto"].max_iter is None  # auto: every schedule runs with its own default
    obj, _ = gaussian_problem(20, 40, 4, seed=5)
    for name in ALL:
        direct, via = SOLVERS[name](obj, 4, tol=0.0), solve(obj, 4, name, tol=0.0)
        assert direct.n_iter == via.n_iter and torch.equal(direct.theta, via.theta), name
    res = solve(obj, 4, "kiht", tol=0.0)
    assert res.n_iter == 100 and not res.converged
    with pytest.raises(TypeError, match="unexpected options \\['supprt'\\]"):
        solve(obj, 4, "iobs", supprt="topk")
    with pytest.raises(TypeError, match="unexpected options"):
        solve(obj, 4, "restricted-topk-iobs", support="topk")
