"""SparseGPT against a plain column-by-column OBS reference built from explicit inverses (no Cholesky)."""

import pytest
import torch

from iobs.obs.layer import prune_layer
from iobs.obs.masks import check_nm
from iobs.obs.sparsegpt import sparsegpt


def correlated_layer(rows, d, n_tokens=None, seed=0, dtype=torch.float64):
    """W (rows, d), X (d, N) with correlated features of unequal scale, H = X Xᵀ."""
    g = torch.Generator().manual_seed(seed)
    n_tokens = n_tokens or 4 * d
    A = torch.eye(d, dtype=dtype) + 0.4 * torch.randn(d, d, generator=g, dtype=dtype)
    scale = torch.exp(torch.randn(d, 1, generator=g, dtype=dtype) * 0.5)
    X = scale * (A @ torch.randn(d, n_tokens, generator=g, dtype=dtype))
    W = torch.randn(rows, d, generator=g, dtype=dtype)
    return W, X, X @ X.T


def keep_top_ref(score, k):
    """Keep the k largest of a 1-D score; ties keep the lower index (written independently of the package)."""
    idx = sorted(range(score.numel()), key=lambda j: (-float(score[j]), j))[:k]
    keep = torch.zeros(score.numel(), dtype=torch.bool)
    keep[idx] = True
    return keep


def obs_reference(W, H, sparsity=None, nm=None, per_row=False, blocksize=None, percdamp=0.01):
    """Unblocked OBS: column i is pruned with the explicit inverse of H_λ restricted to columns i..;
    masks chosen at block starts (unstructured) or group starts (N:M) from the current weights."""
    W = W.clone()
    rows, d = W.shape
    Hd = H.clone()
    Hd.diagonal()[Hd.diagonal() == 0] = 1
    lam = percdamp * float(Hd.diagonal().mean())
    Hd += lam * torch.eye(d, dtype=H.dtype)
    W[:, torch.diagonal(H) == 0] = 0
    inv = [torch.linalg.inv(Hd[i:, i:]) for i in range(d)]
    dd = torch.tensor([float(inv[i][0, 0]) for i in range(d)], dtype=W.dtype)
    keep = torch.ones_like(W, dtype=torch.bool)
    B = blocksize or d
    for i in range(d):
        if nm is not None and i % nm[1] == 0:
            for r in range(rows):
                keep[r, i : i + nm[1]] = keep_top_ref(W[r, i : i + nm[1]] ** 2 / dd[i : i + nm[1]], nm[0])
        if nm is None and i % B == 0:
            i2 = min(i + B, d)
            score = W[:, i:i2] ** 2 / dd[i:i2]
            if per_row:
                p = int(sparsity * i2 + 1e-9) - int(sparsity * i + 1e-9)
                for r in range(rows):
                    keep[r, i:i2] = keep_top_ref(score[r], i2 - i - p)
            else:
                p = int(sparsity * rows * i2 + 1e-9) - int(sparsity * rows * i + 1e-9)
                keep[:, i:i2] = keep_top_ref(score.reshape(-1), score.numel() - p).reshape(score.shape)
        for r in range(rows):
            if not keep[r, i]:
                W[r, i:] -= W[r, i] / inv[i][0, 0] * inv[i][0, :]
    return W * keep, keep


@pytest.mark.parametrize(
    "spec",
    [
        dict(sparsity=0.5),
        dict(sparsity=0.37),
        dict(sparsity=0.6, per_row=True),
        dict(nm=(2, 4)),
        dict(nm=(1, 4)),
    ],
)
@pytest.mark.parametrize("blocksize", [8, 32, 128])
def test_sparsegpt_equals_unblocked_reference(spec, blocksize):
    W, X, H = correlated_layer(6, 24, seed=1)
    ref_W, ref_keep = obs_reference(W, H, blocksize=blocksize, **spec)
    nm = spec.get("nm")
    got_W, got_keep, lam = sparsegpt(
        W, H, spec.get("sparsity"), nm, per_row=spec.get("per_row", False), blocksize=blocksize
    )
    assert torch.equal(got_keep, ref_keep)
    torch.testing.assert_close(got_W, ref_W, rtol=1e-9, atol=1e-9)
    assert lam == pytest.approx(0.01 * float(H.diagonal().mean()))


def test_inner_subblocks_do_not_change_the_result():
    """d_in = 72 is not a multiple of the inner sub-block (32): ragged edges."""
    W, X, H = correlated_layer(5, 72, seed=2)
    ref_W, ref_keep = obs_reference(W, H, sparsity=0.5, blocksize=72)
    got_W, got_keep, _ = sparsegpt(W, H, 0.5, blocksize=1000)
    assert torch.equal(got_keep, ref_keep)
    torch.testing.assert_close(got_W, ref_W, rtol=1e-9, atol=1e-9)
    got_W2, got_keep2, _ = sparsegpt(W, H, 0.5, blocksize=72)
    torch.testing.assert_close(got_W2, got_W, rtol=1e-9, atol=1e-9)


def test_nm_groups_and_blocksize_not_multiple_of_m():
    """blocksize 6 with 4:8 is rounded up to 8 so that groups never straddle blocks."""
    W, X, H = correlated_layer(7, 32, seed=3)
    res = prune_layer(W, H, "sparsegpt", pattern="4:8", blocksize=6)
    groups = res.mask.reshape(7, 4, 8).sum(-1)
    assert (groups == 4).all() and check_nm(res.mask, 4, 8)
    ref_W, ref_keep = obs_reference(W, H, nm=(4, 8))
    assert torch.equal(res.mask, ref_keep)
    torch.testing.assert_close(res.W, ref_W, rtol=1e-9, atol=1e-9)


def test_dead_inputs_are_zeroed_and_cost_nothing():
    W, X, H = correlated_layer(4, 16, seed=4)
    X[[3, 9]] = 0
    H = X @ X.T
    res = prune_layer(W, H, "sparsegpt", sparsity=0.25)
    assert (res.W[:, [3, 9]] == 0).all()
    err = float(((W - res.W) @ X).square().sum())
    assert res.error == pytest.approx(err, rel=1e-10)
    ref_W, _ = obs_reference(W, H, sparsity=0.25)
    torch.testing.assert_close(res.W, ref_W, rtol=1e-9, atol=1e-9)


def test_float32_matches_float64():
    W, X, H = correlated_layer(16, 64, seed=5)
    r64 = prune_layer(W, H, "sparsegpt", sparsity=0.5)
    r32 = prune_layer(W.float(), H.float(), "sparsegpt", sparsity=0.5)
    assert r32.W.dtype == torch.float32
    agree = (r32.mask == r64.mask).float().mean()
    assert agree > 0.98
    assert r32.error == pytest.approx(r64.error, rel=0.02)


def test_half_precision_weights_come_back_in_their_dtype():
    W, X, H = correlated_layer(8, 32, seed=6, dtype=torch.float32)
    res = prune_layer(W.to(torch.bfloat16), H, "sparsegpt", sparsity=0.5)
    assert res.W.dtype == torch.bfloat16 and res.W.shape == W.shape
    assert (res.W[~res.mask] == 0).all()


def test_input_is_never_modified_even_as_a_transposed_view():
    """GPT-2's Conv1D stores Wᵀ; get_weight hands out W as a transposed view (already contiguous as Wᵀ)."""
    from iobs.obs.layer import prune_layer

    g = torch.Generator().manual_seed(0)
    stored = torch.randn(16, 8, generator=g)  # (d_in, d_out) as Conv1D keeps it
    W = stored.t()  # (d_out, d_in) view
    X = torch.randn(16, 64, generator=g)
    before = stored.clone()
    prune_layer(W, X @ X.T, "sparsegpt", sparsity=0.5)
    assert torch.equal(stored, before)
