"""Block empirical Fisher: per-sample gradients, Woodbury inverse, WoodFisher / CBS / global magnitude."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from iobs.vision.fisher import (
    empirical_fisher,
    fisher_from_grads,
    get_flat,
    make_blocks,
    per_sample_grads,
    prunable_weights,
)
from iobs.vision.global_prune import (
    cbs,
    global_magnitude,
    obs_update,
    prune_global,
    selection_objective,
    woodfisher,
)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _data(n=40, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _fisher(n=8, sizes=(12, 9), block=5, seed=0, damping=0.1, dense=None):
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(n, sum(sizes), generator=g, dtype=torch.float64)
    G[:, 1] = G[:, 0] * 0.9 + 0.1 * G[:, 1]  # correlated weights
    return fisher_from_grads(G, list(sizes), block, damping, dense=dense), G


@pytest.mark.parametrize("n", [3, 8, 40])  # n < B, n between block sizes, n > B
def test_dense_and_woodbury_forms_are_the_same_matrix(n):
    Fw, G = _fisher(n=n, sizes=(24, 13), block=10, dense=False)
    Fd, _ = _fisher(n=n, sizes=(24, 13), block=10, dense=True)
    Fa, _ = _fisher(n=n, sizes=(24, 13), block=10)  # automatic: dense where n >= B
    assert [not op.lowrank_form for op in Fa.ops] == [n >= e - s for s, e in Fa.blocks]
    assert all(op.lowrank_form for op in Fw.ops) and not any(op.lowrank_form for op in Fd.ops)
    g = torch.Generator().manual_seed(n)
    v = torch.randn(Fw.d, generator=g, dtype=torch.float64)
    theta = torch.randn(Fw.d, generator=g, dtype=torch.float64)
    mask = torch.rand(Fw.d, generator=g) < 0.6
    for F in (Fd, Fa):
        assert torch.allclose(F.inv_diag(), Fw.inv_diag(), rtol=1e-8)
        assert torch.allclose(F.inv_mv(v), Fw.inv_mv(v), rtol=1e-8, atol=1e-10)
        assert torch.allclose(F.mv(v), Fw.mv(v), rtol=1e-10, atol=1e-12)
        for b in range(len(F.blocks)):
            assert torch.allclose(F.ops[b].to_dense(), Fw.ops[b].to_dense(), atol=1e-12)
            assert torch.allclose(F.ops[b].inverse(), Fw.ops[b].inverse(), rtol=1e-7, atol=1e-9)
        for i in (0, 11, 30):
            b = int(F.block_of()[i])
            assert torch.allclose(F.column(i, b), Fw.column(i, b), atol=1e-12)
        assert torch.allclose(obs_update(theta, F, mask), obs_update(theta, Fw, mask), rtol=1e-7, atol=1e-9)
        for s in (0.3, 0.7):
            assert torch.equal(woodfisher(theta, F, s).mask, woodfisher(theta, Fw, s).mask)
            a, b = cbs(theta, F, s, candidates=6, max_swaps=50), cbs(theta, Fw, s, candidates=6, max_swaps=50)
            assert torch.equal(a.mask, b.mask) and a.objective == pytest.approx(b.objective, rel=1e-8)


def test_per_sample_grads_match_autograd_loop():
    model = _mlp()
    X, y = _data(7)
    params = prunable_weights(model)
    G = per_sample_grads(model, params, X, y, chunk=3)
    for i in range(7):
        model.zero_grad()
        nn.functional.cross_entropy(model(X[i : i + 1]), y[i : i + 1]).backward()
        ref = torch.cat([p.grad.reshape(-1) for p in params.values()])
        assert torch.allclose(G[i], ref, atol=1e-12)


def test_woodbury_inverse_equals_explicit_inverse():
    F, G = _fisher()
    assert F.blocks == [(0, 5), (5, 10), (10, 12), (12, 17), (17, 21)]
    for b, (s, e) in enumerate(F.blocks):
        explicit = F.lam[b] * torch.eye(e - s, dtype=torch.float64) + G[:, s:e].T @ G[:, s:e] / G.shape[0]
        assert torch.allclose(F.ops[b].to_dense(), explicit, atol=1e-12)
        inv = torch.linalg.inv(explicit)
        assert torch.allclose(F.ops[b].inverse(), inv, atol=1e-9)
        assert torch.allclose(F.inv_diag()[s:e], inv.diagonal(), atol=1e-9)
    v = torch.randn(F.d, dtype=torch.float64)
    assert torch.allclose(F.mv(F.inv_mv(v)), v, atol=1e-9)
    # relative damping: λ_b = damping · mean(diag AᵀA) of the block
    s, e = F.blocks[0]
    assert float(F.lam[0]) == pytest.approx(0.1 * float((G[:, s:e] ** 2).sum()) / G.shape[0] / (e - s))
    # n > B: still the same inverse (held in the dense form, Woodbury form forced)
    from iobs.obs.curvature import Curvature

    A = torch.randn(30, 4, dtype=torch.float64)
    assert torch.allclose(
        Curvature.from_factor(A, 0.3, dense=False).inverse(),
        torch.linalg.inv(A.T @ A + 0.3 * torch.eye(4, dtype=torch.float64)),
        atol=1e-10,
    )


def test_woodfisher_single_removal_is_the_obs_formula():
    F, _ = _fisher(sizes=(7,), block=7)
    theta = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    res = woodfisher(theta, F, sparsity=1 / 7 + 1e-9)  # floor(s·7) = 1 weight removed
    Finv = torch.linalg.inv(F.ops[0].to_dense())
    q = int(torch.argmin(theta**2 / Finv.diagonal()))
    expected = theta - theta[q] / Finv[q, q] * Finv[:, q]
    assert (~res.mask).nonzero().flatten().tolist() == [q]
    assert torch.allclose(res.theta, expected, atol=1e-10)
    assert res.objective == pytest.approx(0.5 * float(theta[q] ** 2 / Finv[q, q]), rel=1e-8)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 0.95])
def test_global_pruning_gives_exact_global_sparsity(sparsity):
    F, _ = _fisher(sizes=(30, 17, 9), block=8)
    theta = torch.randn(F.d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    pruned = int(sparsity * F.d + 1e-9)
    for method in ("magnitude", "woodfisher", "cbs"):
        res = prune_global(method, theta, F, sparsity)
        assert int((~res.mask).sum()) == pruned, method
        assert bool((res.theta[~res.mask] == 0).all()), method
    mag = global_magnitude(theta, sparsity)
    if pruned:
        assert float(theta[~mag.mask].abs().max()) <= float(theta[mag.mask].abs().min())


def test_obs_update_minimises_the_quadratic_on_its_support():
    F, _ = _fisher(sizes=(10,), block=10)
    theta = torch.randn(10, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([1, 0, 1, 1, 0, 0, 1, 1, 0, 1], dtype=torch.bool)
    out = obs_update(theta, F, mask)
    H = F.ops[0].to_dense()
    Q = mask.nonzero().flatten()
    ref = torch.zeros(10, dtype=torch.float64)  # min over θ_Q of (θ−θ⁺)ᵀH(θ−θ⁺): H_QQ θ_Q = (Hθ⁺)_Q
    ref[Q] = torch.linalg.solve(H[Q][:, Q], (H @ theta)[Q])
    assert torch.allclose(out, ref, atol=1e-10)


@pytest.mark.parametrize("seed", range(4))
def test_cbs_never_worse_than_its_start(seed):
    F, _ = _fisher(n=6, sizes=(24, 16), block=8, seed=seed, damping=0.05)
    theta = torch.randn(F.d, dtype=torch.float64, generator=torch.Generator().manual_seed(10 + seed))
    for s in (0.4, 0.7):
        wf = woodfisher(theta, F, s)
        res = cbs(theta, F, s, candidates=8, max_swaps=200)
        J = res.info["selection_objective"]
        assert J[-1] <= selection_objective(theta, F, wf.mask, False) + 1e-12
        assert all(b <= a + 1e-12 for a, b in zip(J, J[1:]))  # every accepted swap lowers J
        if res.info["kept_start_selection"]:  # the swaps lowered J but not q after the update
            assert torch.equal(res.mask, wf.mask)
        else:
            assert J[-1] == pytest.approx(selection_objective(theta, F, res.mask, False), rel=1e-9, abs=1e-12)
        assert res.objective <= wf.objective + 1e-12  # quadratic model after the update


def test_cbs_prunes_a_cancelling_pair():
    # two strongly correlated weights of opposite effect: pruning both together is almost free,
    # pruning either alone is expensive; magnitude prunes one of them and an independent one, and one swap
    # of CBS's local search finds the pair (WoodFisher's saliency θ²/[F⁻¹]_ii also sees it)
    g = torch.Generator().manual_seed(0)
    n = 50
    z = torch.randn(n, generator=g, dtype=torch.float64)
    G = torch.stack([z, z + 1e-3 * torch.randn(n, generator=g, dtype=torch.float64)], 1)
    G = torch.cat([G, 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64)], 1)
    F = fisher_from_grads(G, [4], 4, damping=1e-6, absolute_damping=True)
    theta = torch.tensor([0.45, -0.6, 0.5, 0.7], dtype=torch.float64)
    mag = global_magnitude(theta, 0.5)
    assert mag.mask.tolist() == [False, True, False, True]
    res = cbs(theta, F, 0.5, start="magnitude", candidates=4, max_swaps=10)
    assert res.mask.tolist() == [False, False, True, True]
    assert res.info["swaps"] >= 1
    assert selection_objective(theta, F, res.mask, False) < 0.2 * selection_objective(
        theta, F, mag.mask, False
    )
    assert woodfisher(theta, F, 0.5).mask.tolist() == [False, False, True, True]
    assert res.objective < mag_q(theta, F, mag.mask)


def mag_q(theta, F, mask):
    return F.quadratic(obs_update(theta, F, mask), theta, use_grad=False)


def test_empirical_fisher_of_a_model_matches_its_gradients():
    model = _mlp()
    X, y = _data(9)
    params = prunable_weights(model)
    F = empirical_fisher(model, params, X, y, block_size=10)
    G = per_sample_grads(model, params, X, y)
    assert torch.allclose(F.grad, G.mean(0))
    assert F.d == get_flat(params).numel() == 6 * 5 + 5 * 3


def test_bad_input_errors():
    model = _mlp()
    X, y = _data(5)
    params = prunable_weights(model)
    with pytest.raises(ValueError, match="sparsity"):
        prune_global("magnitude", get_flat(params), None, 1.0)
    with pytest.raises(ValueError, match="sparsity"):
        prune_global("magnitude", get_flat(params), None, -0.1)
    with pytest.raises(ValueError, match="no prunable layer"):
        prunable_weights(model, exclude=["0", "2"])
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\)"):
        per_sample_grads(model, params, X, torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(ValueError, match="block_size"):
        make_blocks([10, 5], 0)
    with pytest.raises(ValueError, match="block_size"):
        make_blocks([10, 5], 16)
    with pytest.raises(ValueError, match="block_size"):
        make_blocks([10, 5], 2.5)
    with pytest.raises(ValueError, match="needs the Fisher"):
        prune_global("cbs", get_flat(params), None, 0.5)
    with pytest.raises(ValueError, match="method"):
        prune_global("random", get_flat(params), None, 0.5)
