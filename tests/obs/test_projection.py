"""The OBS projection kernels against brute force and from-scratch references (float64, tiny sizes)."""

import itertools

import mpmath
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iobs.obs.masks import check_nm
from iobs.obs.projection import (
    exact_support,
    greedy_obs,
    greedy_obs_lowrank,
    obs_project,
    obs_project_lowrank,
    quadratic_model,
)

F64 = torch.float64


def random_spd(d, seed, cond_shift=0.1):
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(d, d + 2, generator=g, dtype=F64)
    return B @ B.T + cond_shift * torch.eye(d, dtype=F64), g


def brute_project(theta_plus, H, mask):
    """min ‖Lᵀ(θ − θ⁺)‖² over θ_Q (H = L Lᵀ) as an ordinary least-squares problem."""
    Lt = torch.linalg.cholesky(H).T
    theta = torch.zeros_like(theta_plus)
    Q = mask.nonzero().flatten()
    if len(Q):
        theta[Q] = torch.linalg.lstsq(Lt[:, Q], (Lt @ theta_plus)[:, None]).solution.squeeze(1)
    return theta


def brute_best_support(theta_plus, H, k):
    d = len(theta_plus)
    best = None
    for Q in itertools.combinations(range(d), k):
        mask = torch.zeros(d, dtype=torch.bool)
        mask[list(Q)] = True
        val = float(quadratic_model(brute_project(theta_plus, H, mask), theta_plus, H))
        if best is None or val < best[0] - 1e-12:
            best = (val, mask)
    return best


# ---------------------------------------------------------------------------------------------- obs_project
@settings(max_examples=40, deadline=None)
@given(d=st.integers(1, 10), seed=st.integers(0, 10_000), data=st.data())
def test_obs_project_equals_constrained_least_squares(d, seed, data):
    H, g = random_spd(d, seed)
    theta_plus = torch.randn(d, generator=g, dtype=F64)
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=d, max_size=d)))
    theta = obs_project(theta_plus, H, mask)
    torch.testing.assert_close(theta, brute_project(theta_plus, H, mask), rtol=1e-9, atol=1e-9)
    assert bool((theta[~mask] == 0).all())


@settings(max_examples=20, deadline=None)
@given(d=st.integers(2, 10), seed=st.integers(0, 10_000))
def test_obs_project_equals_paper_formula_and_saliency(d, seed):
    """θ = (I − H⁻¹Hˢ)θ⁺ with Hˢ = I_Sᵀ(I_S H⁻¹ I_Sᵀ)⁻¹I_S; its model value is θ⁺_Sᵀ([H⁻¹]_SS)⁻¹θ⁺_S."""
    H, g = random_spd(d, seed)
    theta_plus = torch.randn(d, generator=g, dtype=F64)
    mask = torch.rand(d, generator=g) < 0.5
    mask[0] = True
    S = (~mask).nonzero().flatten()
    Hinv = torch.linalg.inv(H)
    IS = torch.eye(d, dtype=F64)[S]
    HS = IS.T @ torch.linalg.inv(IS @ Hinv @ IS.T) @ IS if len(S) else torch.zeros(d, d, dtype=F64)
    paper = (torch.eye(d, dtype=F64) - Hinv @ HS) @ theta_plus
    theta = obs_project(theta_plus, H, mask)
    torch.testing.assert_close(theta, paper, rtol=1e-8, atol=1e-8)
    saliency = float(theta_plus @ HS @ theta_plus)
    assert float(quadratic_model(theta, theta_plus, H)) == pytest.approx(saliency, rel=1e-8, abs=1e-10)


def test_obs_project_rows_with_own_and_shared_masks():
    H, g = random_spd(8, 3)
    W = torch.randn(5, 8, generator=g, dtype=F64)
    masks = torch.rand(5, 8, generator=g) < 0.6
    out = obs_project(W, H, masks, chunk=2)
    for r in range(5):
        torch.testing.assert_close(out[r], brute_project(W[r], H, masks[r]), rtol=1e-9, atol=1e-9)
    shared = obs_project(W, H, masks[0])
    for r in range(5):
        torch.testing.assert_close(shared[r], brute_project(W[r], H, masks[0]), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("n,q", [(4, 7), (4, 3), (6, 6)])
def test_obs_project_lowrank_equals_dense(n, q):
    """Both branches (|Q| > n: n×n system; |Q| ≤ n: |Q|×|Q| system) equal the dense projection."""
    g = torch.Generator().manual_seed(n * 10 + q)
    d = 10
    A = torch.randn(n, d, generator=g, dtype=F64)
    lam = 0.3
    theta_plus = torch.randn(d, generator=g, dtype=F64)
    mask = torch.zeros(d, dtype=torch.bool)
    mask[torch.randperm(d, generator=g)[:q]] = True
    H = A.T @ A + lam * torch.eye(d, dtype=F64)
    torch.testing.assert_close(
        obs_project_lowrank(theta_plus, A, lam, mask),
        obs_project(theta_plus, H, mask),
        rtol=1e-10,
        atol=1e-10,
    )


def test_obs_project_bad_input():
    H, _ = random_spd(4, 0)
    with pytest.raises(ValueError, match="H must have shape"):
        obs_project(torch.zeros(4, dtype=F64), torch.zeros(4, 3, dtype=F64), torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match="theta_plus"):
        obs_project(torch.zeros(5, dtype=F64), H, torch.ones(5, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        obs_project(torch.zeros(4, dtype=F64), H, torch.ones(4))
    with pytest.raises(ValueError, match="mask must have shape"):
        obs_project(torch.zeros(4, dtype=F64), H, torch.ones(3, dtype=torch.bool))
    singular = torch.zeros(4, 4, dtype=F64)
    with pytest.raises(ValueError, match="not positive definite"):
        obs_project(torch.ones(4, dtype=F64), singular, torch.ones(4, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------- exact_support
@settings(max_examples=25, deadline=None)
@given(d=st.integers(2, 8), seed=st.integers(0, 10_000), data=st.data())
def test_exact_support_equals_brute_force(d, seed, data):
    k = data.draw(st.integers(1, d))
    H, g = random_spd(d, seed)
    theta_plus = torch.randn(d, generator=g, dtype=F64)
    mask = exact_support(theta_plus, H, k)
    assert int(mask.sum()) == k
    best_val, _ = brute_best_support(theta_plus, H, k)
    val = float(quadratic_model(obs_project(theta_plus, H, mask), theta_plus, H))
    assert val == pytest.approx(best_val, rel=1e-9, abs=1e-12)


def test_exact_support_refuses_large_problems():
    H = torch.eye(40, dtype=F64)
    with pytest.raises(ValueError, match="C\\(40, 20\\)"):
        exact_support(torch.ones(40, dtype=F64), H, 20)
    with pytest.raises(ValueError, match="k must be an integer in \\[1, 40\\]"):
        exact_support(torch.ones(40, dtype=F64), H, 0)


# ---------------------------------------------------------------------------------------------- greedy_obs
def greedy_reference(w, H, n_prune):
    """Re-invert H_RR from scratch at every step; remove argmin w_i²/[H_RR⁻¹]_ii; OBS-update the rest."""
    d = len(w)
    keep = torch.ones(d, dtype=torch.bool)
    w = w.clone()
    for _ in range(n_prune):
        R = keep.nonzero().flatten()
        Hinv = torch.linalg.inv(H[R][:, R])
        j = int(torch.argmin(w[R] ** 2 / Hinv.diagonal()))
        i = int(R[j])
        w[R] -= w[i] / Hinv[j, j] * Hinv[:, j]
        w[i] = 0.0
        keep[i] = False
    return w, keep


@pytest.mark.parametrize("d,n_prune,seed", [(6, 3, 0), (9, 7, 1), (10, 5, 2), (10, 10, 3)])
def test_greedy_obs_matches_from_scratch_reference(d, n_prune, seed):
    H, g = random_spd(d, seed, cond_shift=1.0)
    W = torch.randn(4, d, generator=g, dtype=F64)
    W_new, mask = greedy_obs(W, torch.linalg.inv(H), n_prune=n_prune, chunk_rows=3)
    for r in range(4):
        w_ref, keep_ref = greedy_reference(W[r], H, n_prune)
        assert torch.equal(mask[r], keep_ref)
        torch.testing.assert_close(W_new[r], w_ref, rtol=1e-9, atol=1e-9)
        # sequential OBS removals = the joint OBS update on the final support
        torch.testing.assert_close(W_new[r], obs_project(W[r], H, mask[r]), rtol=1e-9, atol=1e-9)
    assert bool((mask.sum(1) == d - n_prune).all())
    assert bool((W_new[~mask] == 0).all())


def test_greedy_obs_single_row_path_equals_batched_path():
    """One row (the cheap-indexing kernel) and several rows (the batched kernel) give the same answer."""
    H, g = random_spd(11, 7, cond_shift=0.5)
    Hinv = torch.linalg.inv(H)
    W = torch.randn(3, 11, generator=g, dtype=F64)
    W_all, mask_all = greedy_obs(W, Hinv, n_prune=6)
    for r in range(3):
        w_r, mask_r = greedy_obs(W[r], Hinv, n_prune=6)
        assert torch.equal(mask_r, mask_all[r])
        torch.testing.assert_close(w_r, W_all[r], rtol=1e-10, atol=1e-12)
        w_ref, keep_ref = greedy_reference(W[r], H, 6)
        assert torch.equal(mask_r, keep_ref)
        torch.testing.assert_close(w_r, w_ref, rtol=1e-9, atol=1e-9)
        assert bool((w_r[~mask_r] == 0).all())


def test_greedy_obs_vector_and_nm():
    H, g = random_spd(12, 5, cond_shift=1.0)
    Hinv = torch.linalg.inv(H)
    w = torch.randn(12, generator=g, dtype=F64)
    w_new, mask = greedy_obs(w, Hinv, n_prune=4)
    assert w_new.shape == (12,) and int(mask.sum()) == 8
    W = torch.randn(6, 12, generator=g, dtype=F64)
    W_new, mask = greedy_obs(W, Hinv, nm=(2, 4))
    assert check_nm(mask, 2, 4) and bool((mask.sum(1) == 6).all())
    torch.testing.assert_close(W_new, obs_project(W, H, mask), rtol=1e-9, atol=1e-9)
    _, mask = greedy_obs(W, Hinv, nm="1:3", n_prune=5)
    assert bool((mask.sum(1) == 7).all())
    groups = (~mask).reshape(6, 4, 3).sum(-1)
    assert bool((groups <= 2).all())


def test_greedy_obs_bad_input():
    Hinv = torch.eye(4, dtype=F64)
    with pytest.raises(ValueError, match="n_prune"):
        greedy_obs(torch.ones(4, dtype=F64), Hinv)
    with pytest.raises(ValueError, match="n_prune must be an integer in \\[0, 4\\]"):
        greedy_obs(torch.ones(4, dtype=F64), Hinv, n_prune=5)
    with pytest.raises(ValueError, match="divisible"):
        greedy_obs(torch.ones(2, 6, dtype=F64), torch.eye(6, dtype=F64), nm=(2, 4))
    with pytest.raises(ValueError, match="Hinv must have shape"):
        greedy_obs(torch.ones(4, dtype=F64), torch.eye(3, dtype=F64), n_prune=1)
    with pytest.raises(ValueError, match="chunk_rows must be"):
        greedy_obs(torch.ones(2, 4, dtype=F64), Hinv, n_prune=1, chunk_rows=0)
    with pytest.raises(ValueError, match="W contains"):
        greedy_obs(torch.tensor([1.0, float("nan"), 0, 0], dtype=F64), Hinv, n_prune=1)


# ------------------------------------------------------------------------------------------- low-rank greedy
def greedy_reference_mp(theta, A, lam, k, dps=60):
    """The greedy OBS rule for H = AᵀA + λI with every H_RR inverted from scratch in 60-digit arithmetic."""
    mpmath.mp.dps = dps
    n, d = A.shape
    Am = mpmath.matrix(A.tolist())
    H = Am.T * Am + mpmath.mpf(lam) * mpmath.eye(d)
    w = [mpmath.mpf(float(t)) for t in theta]
    R = list(range(d))
    while len(R) > k:
        Hinv = mpmath.inverse(mpmath.matrix([[H[i, j] for j in R] for i in R]))
        scores = [w[i] ** 2 / Hinv[a, a] for a, i in enumerate(R)]
        a = min(range(len(R)), key=lambda t: scores[t])
        i = R[a]
        coef = w[i] / Hinv[a, a]
        for b, j in enumerate(R):
            w[j] -= coef * Hinv[b, a]
        R.remove(i)
    mask = torch.zeros(d, dtype=torch.bool)
    mask[R] = True
    return mask


@pytest.mark.parametrize("lam", [1e-2, 1e-8, 1e-12])
def test_greedy_obs_lowrank_right_at_small_damping(lam):
    """n < d and λ → 0: the n×n low-rank form picks the same support as a 60-digit from-scratch reference,
    and returns the exact OBS update on it."""
    g = torch.Generator().manual_seed(11)
    n, d, k = 5, 12, 3
    A = torch.randn(n, d, generator=g, dtype=F64)
    theta = torch.randn(d, generator=g, dtype=F64)
    theta_new, mask = greedy_obs_lowrank(theta, A, lam, k, refresh=4)
    assert int(mask.sum()) == k and bool((theta_new[~mask] == 0).all())
    assert torch.equal(mask, greedy_reference_mp(theta, A, lam, k))
    torch.testing.assert_close(theta_new, obs_project_lowrank(theta, A, lam, mask))


def test_greedy_obs_lowrank_equals_explicit_form_when_well_conditioned():
    g = torch.Generator().manual_seed(4)
    n, d = 6, 15
    A = torch.randn(n, d, generator=g, dtype=F64)
    lam = 0.5
    theta = torch.randn(d, generator=g, dtype=F64)
    H = A.T @ A + lam * torch.eye(d, dtype=F64)
    w_ref, keep_ref = greedy_obs(theta, torch.linalg.inv(H), n_prune=d - 4)
    theta_new, mask = greedy_obs_lowrank(theta, A, lam, 4)
    assert torch.equal(mask, keep_ref)
    torch.testing.assert_close(theta_new, w_ref, rtol=1e-9, atol=1e-9)
