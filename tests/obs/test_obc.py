"""OBC (greedy OBS per row) against brute force over all masks of tiny layers."""

import itertools

import pytest
import torch

from iobs.obs.layer import prune_layer
from iobs.obs.masks import check_nm
from iobs.obs.obc import obc


def tiny_layer(rows, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    A = torch.eye(d, dtype=dtype) + 0.5 * torch.randn(d, d, generator=g, dtype=dtype)
    X = A @ torch.randn(d, 3 * d, generator=g, dtype=dtype)
    return torch.randn(rows, d, generator=g, dtype=dtype), X, X @ X.T


def damped_h(H, percdamp=0.01):
    return H + percdamp * float(H.diagonal().mean()) * torch.eye(H.shape[0], dtype=H.dtype)


def best_reconstruction(w, H, keep):
    """argmin over supp ⊆ keep of (w − v) H (w − v)ᵀ: v_Q = (w H_{:,Q}) H_QQ⁻¹ (normal equations)."""
    v = torch.zeros_like(w)
    Q = keep.nonzero().flatten()
    if len(Q):
        v[Q] = torch.linalg.solve(H[Q][:, Q], H[Q] @ w)
    return v


def quad(w, v, H):
    return float((w - v) @ H @ (w - v))


def brute_force_row(w, H, masks):
    """Smallest quadratic error over the candidate masks, with the argmin mask."""
    best = min(masks, key=lambda keep: quad(w, best_reconstruction(w, H, keep), H))
    return best, quad(w, best_reconstruction(w, H, best), H)


def all_masks(d, n_prune):
    for S in itertools.combinations(range(d), n_prune):
        keep = torch.ones(d, dtype=torch.bool)
        keep[list(S)] = False
        yield keep


def nm_masks(d, n, m):
    group = list(all_masks(m, m - n))
    for choice in itertools.product(group, repeat=d // m):
        yield torch.cat(choice)


@pytest.mark.parametrize("seed", range(4))
def test_single_removal_is_the_brute_force_optimum(seed):
    W, X, H = tiny_layer(3, 8, seed)
    Hd = damped_h(H)
    Wn, mask, lam = obc(W, H, 0.125, per_row=True)  # floor(0.125 * 8) = 1 per row
    assert lam == pytest.approx(0.01 * float(H.diagonal().mean()))
    for r in range(3):
        best, best_err = brute_force_row(W[r], Hd, list(all_masks(8, 1)))
        assert torch.equal(mask[r], best)
        torch.testing.assert_close(Wn[r], best_reconstruction(W[r], Hd, best), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("spec", [dict(sparsity=0.5), dict(nm=(2, 4)), dict(nm=(1, 4))])
def test_greedy_reconstruction_is_exact_for_its_mask_and_bounded_by_brute_force(seed, spec):
    """Greedy OBS need not find the best mask, nor beat SparseGPT on tiny layers (measured: worse in 16
    of 360 seeded 2x8, 3x8, 1x12 cases at 50 %, per row and 2:4), so neither is asserted. What holds:
    its weights are the optimal reconstruction on the mask it found, its error is >= the brute-force
    optimum, and the reported error is exact."""
    W, X, H = tiny_layer(2, 8, seed)
    Hd = damped_h(H)
    nm = spec.get("nm")
    Wn, mask, _ = obc(W, H, spec.get("sparsity"), nm, per_row=True)
    candidates = list(nm_masks(8, *nm)) if nm else list(all_masks(8, 4))
    for r in range(2):
        assert any(torch.equal(mask[r], c) for c in candidates)
        torch.testing.assert_close(Wn[r], best_reconstruction(W[r], Hd, mask[r]), rtol=1e-8, atol=1e-9)
        _, best_err = brute_force_row(W[r], Hd, candidates)
        assert quad(W[r], Wn[r], Hd) >= best_err * (1 - 1e-10)
    res = prune_layer(W, H, "obc", **({"pattern": nm} if nm else {"sparsity": 0.5, "per_row": True}))
    assert res.error == pytest.approx(float(((W - res.W) @ X).square().sum()), rel=1e-10)


def test_per_layer_budget_is_exact_and_split_over_rows():
    W, X, H = tiny_layer(5, 12, 7)
    res = prune_layer(W, H, "obc", sparsity=0.3)  # floor(0.3 * 60) = 18 = 4 + 4 + 4 + 3 + 3
    assert int((~res.mask).sum()) == 18
    assert (~res.mask).sum(1).tolist() == [4, 4, 4, 3, 3]
    assert (res.W[~res.mask] == 0).all()


def test_nm_groups_valid():
    W, X, H = tiny_layer(4, 16, 8)
    for n, m in [(2, 4), (4, 8), (1, 4)]:
        res = prune_layer(W, H, "obc", pattern=(n, m))
        assert check_nm(res.mask, n, m)
        assert (res.mask.reshape(4, 16 // m, m).sum(-1) == n).all()


def test_float32_input_returns_float32():
    W, X, H = tiny_layer(4, 16, 9)
    r64 = prune_layer(W, H, "obc", sparsity=0.5)
    r32 = prune_layer(W.float(), H.float(), "obc", sparsity=0.5)
    assert r32.W.dtype == torch.float32
    assert torch.equal(r32.mask, r64.mask)


def test_refuses_layers_too_wide_for_the_memory_budget():
    W, X, H = tiny_layer(2, 16, 0)
    with pytest.raises(ValueError, match="d_in=16.*sparsegpt"):
        obc(W, H, 0.5, memory_bytes=1000)
    # a budget of one row at a time still works
    Wn, mask, _ = obc(W, H, 0.5, memory_bytes=16 * 16 * 8)
    Wref, mref, _ = obc(W, H, 0.5)
    assert torch.equal(mask, mref)
    torch.testing.assert_close(Wn, Wref)


def test_dead_inputs():
    W, X, H = tiny_layer(3, 8, 10)
    X[2] = 0
    H = X @ X.T
    res = prune_layer(W, H, "obc", sparsity=0.25, per_row=True)
    assert (res.W[:, 2] == 0).all() and not res.mask[:, 2].any()  # free to prune: pruned first
    assert res.error == pytest.approx(float(((W - res.W) @ X).square().sum()), rel=1e-10)
