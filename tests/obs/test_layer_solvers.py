"""Re-fit, I-OBS mask search and ALPS against brute force on tiny layers (float64)."""

import itertools

import pytest
import torch

from iobs.obs.alps import alps
from iobs.obs.layer import layer_error, prune_layer
from iobs.obs.mask_search import mask_search
from iobs.obs.masks import check_nm
from iobs.obs.projection import greedy_remove
from iobs.obs.refit import damped_hessian, pcg_refit, refit

F64 = torch.float64


def layer(rows, d, seed, n=None):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(d, n or 3 * d, generator=g, dtype=F64) * torch.rand(d, 1, generator=g, dtype=F64)
    X[: d // 3] += torch.randn(1, X.shape[1], generator=g, dtype=F64)  # correlated inputs
    return torch.randn(rows, d, generator=g, dtype=F64), X @ X.T


def lstsq_rows(W, H, mask):
    """min ‖Lᵀ(ŵ − w)‖ over ŵ_Q, H = L Lᵀ, by ordinary least squares row by row."""
    Lt = torch.linalg.cholesky(H).T
    out = torch.zeros_like(W)
    for r in range(W.shape[0]):
        Q = mask[r].nonzero().flatten()
        out[r, Q] = torch.linalg.lstsq(Lt[:, Q], Lt @ W[r]).solution
    return out


def best_row(w, H, k):
    """The brute-force optimum of one row with k kept: min over all C(d, k) supports."""
    best = float("inf")
    for Q in itertools.combinations(range(w.shape[0]), k):
        m = torch.zeros(1, w.shape[0], dtype=torch.bool)
        m[0, list(Q)] = True
        best = min(best, layer_error(w[None], lstsq_rows(w[None], H, m), H))
    return best


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_refit_equals_brute_force_least_squares(solver):
    W, H = layer(7, 10, 0)
    mask = torch.rand(7, 10, generator=torch.Generator().manual_seed(1)) < 0.5
    Hl, _ = damped_hessian(H, 0.01)
    got = refit(W, H, mask, solver=solver, cg_iters=200)
    assert torch.allclose(got, lstsq_rows(W, Hl.H, mask), atol=1e-7)
    assert not bool(got[~mask].any())


def test_refit_never_worse_than_any_solver_on_its_mask():
    W, H = layer(16, 12, 2)
    for method in ("sparsegpt", "wanda", "magnitude"):
        r = prune_layer(W, H, method, 0.6, percdamp=0.0)
        fitted = prune_layer(W, H, method, 0.6, percdamp=0.0, refit=True)
        assert torch.equal(fitted.mask, r.mask)
        assert fitted.error <= r.error * (1 + 1e-9)


def test_pcg_is_warm_started_and_converges():
    W, H = layer(5, 12, 3)
    mask = torch.rand(5, 12, generator=torch.Generator().manual_seed(4)) < 0.5
    exact = refit(W, H, mask, percdamp=0.0, solver="cholesky")
    assert torch.allclose(pcg_refit(W, H, mask, iters=100), exact, atol=1e-8)
    assert torch.equal(pcg_refit(W, H, mask, W0=exact, iters=0), exact)


def test_greedy_remove_respects_group_caps():
    W, H = layer(4, 12, 5)
    Hinv = torch.linalg.inv(H)
    group = (torch.arange(12) // 4).expand(4, 12)
    cap = torch.full((4, 3), 2)
    _, keep = greedy_remove(W, Hinv, group, cap)
    assert bool((keep.view(4, 3, 4).sum(-1) == 2).all())


def test_mask_search_reaches_the_brute_force_optimum_on_tiny_layers():
    """40 random rows (d = 10, 4 kept, damping 0): the search from SparseGPT's mask reached the brute-force
    optimum in 35 of 40 rows when written (SparseGPT itself: 0 of 40, its kept weights are not re-fitted);
    asserted: at least 30 of 40, and never worse than SparseGPT in any row."""
    hits = sg_hits = 0
    for seed in range(10):
        W, H = layer(4, 10, 10 + seed)
        sg = prune_layer(W, H, "sparsegpt", 0.6, per_row=True, percdamp=0.0)
        W_hat, mask, _ = mask_search(W, H, sg.mask, W0=sg.W, add=3, iters=10, percdamp=0.0)
        assert bool((mask.sum(1) == 4).all())
        for r in range(4):
            opt = best_row(W[r], H, 4)
            e, e_sg = (
                layer_error(W[r : r + 1], W_hat[r : r + 1], H),
                layer_error(W[r : r + 1], sg.W[r : r + 1], H),
            )
            assert e <= e_sg * (1 + 1e-9)
            hits += e <= opt * (1 + 1e-7)
            sg_hits += e_sg <= opt * (1 + 1e-7)
    assert hits >= 30, (hits, sg_hits)


@pytest.mark.parametrize("spec", [{"sparsity": 0.7}, {"sparsity": 0.5, "per_row": True}, {"pattern": "2:4"}])
def test_mask_search_never_raises_the_warm_start_error_and_keeps_the_budget(spec):
    W, H = layer(24, 32, 6, n=20)  # n < d: singular H, damping on
    sg = prune_layer(W, H, "sparsegpt", **spec)
    ms = prune_layer(W, H, "mask-search", **spec, search={"add": 8, "iters": 4})
    assert ms.error <= sg.error * (1 + 1e-9)
    assert torch.equal(ms.mask.sum(1), sg.mask.sum(1))
    assert not bool(ms.W[~ms.mask].any())
    if "pattern" in spec:
        assert check_nm(ms.mask, 2, 4) and bool((ms.mask.view(24, 8, 4).sum(-1) == 2).all())


@pytest.mark.parametrize("spec", [{"sparsity": 0.7}, {"pattern": "2:4"}])
def test_alps_budget_and_quality(spec):
    """ALPS keeps the layer budget exactly (N:M groups valid) and, as the paper describes, beats
    magnitude pruning and is not worse than SparseGPT on a correlated tiny layer."""
    W, H = layer(24, 32, 7)
    al = prune_layer(W, H, "alps", **spec)
    sg = prune_layer(W, H, "sparsegpt", **spec)
    mag = prune_layer(W, H, "magnitude", **spec)
    assert int(al.mask.sum()) == int(sg.mask.sum())
    assert al.error < mag.error and al.error <= sg.error * 1.05
    if "pattern" in spec:
        assert check_nm(al.mask, 2, 4)
    _, _, info = alps(W, H, 0.7)
    assert 1 <= info["iterations"] <= 300


def test_mask_search_from_alps_is_not_worse_than_alps():
    W, H = layer(24, 32, 8)
    al = prune_layer(W, H, "alps", 0.7)
    ms = prune_layer(W, H, "mask-search", 0.7, search={"warm": "alps", "add": 8, "iters": 4})
    assert ms.error <= al.error * (1 + 1e-9)


def test_bad_input_is_named():
    W, H = layer(4, 10, 9)
    with pytest.raises(ValueError, match="divisible by M=4"):
        prune_layer(W, H, "mask-search", pattern="2:4")
    bad = H.clone()
    bad[0, 1] = float("nan")
    for method in ("mask-search", "alps"):
        with pytest.raises(ValueError, match="H"):
            prune_layer(W, bad, method, 0.5)
    with pytest.raises(ValueError, match="warm start"):
        prune_layer(W, H, "mask-search", 0.5, search={"warm": "obc"})
    with pytest.raises(ValueError, match="solver must be one of"):
        refit(W, H, W != 0, solver="qr")
    with pytest.raises(ValueError, match="mask must be a boolean"):
        refit(W, H, torch.ones(3, 10, dtype=torch.bool))


def test_config_wires_the_new_solvers_and_refit():
    from iobs.prune.config import PruneConfig

    cfg = PruneConfig("tiny-llama", method="mask-search", sparsity=0.7, refit=True, warm="alps")
    s = cfg.solver()
    assert (s.method, s.refit, s.warm) == ("mask-search", True, "alps")
    W, H = layer(8, 12, 11)
    res = s(W, H, "layer")
    assert res.method == "mask-search+refit" and int((~res.mask).sum()) == int(0.7 * 96)
    with pytest.raises(ValueError, match="warm"):
        PruneConfig("tiny-llama", warm="obc")
