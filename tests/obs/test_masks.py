"""iobs.obs.masks against brute force and exact counts."""

import itertools

import pytest
import torch

from iobs.obs.layer import prune_layer
from iobs.obs.masks import (
    check_nm,
    hard_threshold,
    keep_top,
    nm_mask,
    topk_mask,
)
from iobs.obs.scores import score_mask


def test_topk_mask_is_the_best_support():
    g = torch.Generator().manual_seed(0)
    score = torch.randn(7, generator=g)
    for k in range(1, 8):
        mask = topk_mask(score, k)
        best = max(itertools.combinations(range(7), k), key=lambda c: sum(float(score[j]) for j in c))
        assert sorted(mask.nonzero().flatten().tolist()) == sorted(best)


def test_topk_ties_keep_lower_index_and_shape_is_preserved():
    score = torch.tensor([[1.0, 2.0, 2.0], [2.0, 0.0, 2.0]])
    mask = topk_mask(score, 3)
    assert mask.tolist() == [[False, True, True], [True, False, False]]


def test_hard_threshold_keeps_largest_magnitudes():
    theta = torch.tensor([0.5, -3.0, 1.0, 2.5, -0.1])
    assert hard_threshold(theta, 2).tolist() == [0.0, -3.0, 0.0, 2.5, 0.0]


@pytest.mark.parametrize("k", [0, 8, 2.5, True])
def test_topk_bad_k(k):
    with pytest.raises((ValueError, TypeError), match="k must be an integer in"):
        topk_mask(torch.ones(7), k)


def test_keep_top_row_counts():
    g = torch.Generator().manual_seed(1)
    score = torch.randn(5, 9, generator=g)
    mask = keep_top(score, 4)
    assert (mask.sum(1) == 4).all()
    for r in range(5):
        assert score[r][mask[r]].min() >= score[r][~mask[r]].max()


@pytest.mark.parametrize("s", [0.0, 0.1, 0.29, 0.5, 0.99])
def test_sparsity_budget_exact_counts(s):
    g = torch.Generator().manual_seed(2)
    score = torch.randn(10, 10, generator=g)
    assert int((~score_mask(score, s)).sum()) == int(s * 100 + 1e-9)
    assert ((~score_mask(score, s, per_row=True)).sum(1) == int(s * 10 + 1e-9)).all()


def test_sparsity_budget_floor_is_robust_to_float_error():
    # 0.29 * 100 = 28.999999999999996 in floating point: still 29 pruned
    assert int((~score_mask(torch.arange(100.0).reshape(1, 100), 0.29)).sum()) == 29


@pytest.mark.parametrize("s", [1.0, -0.01, float("inf")])
def test_bad_sparsity_is_rejected(s):
    with pytest.raises(ValueError, match="sparsity"):
        prune_layer(torch.ones(2, 4), torch.eye(4), "magnitude", sparsity=s)


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4), (1, 2)])
def test_nm_mask_brute_force(n, m):
    g = torch.Generator().manual_seed(3)
    score = torch.rand(4, 3 * m, generator=g)
    mask = nm_mask(score, n, m)
    assert check_nm(mask, n, m)
    assert (mask.reshape(4, 3, m).sum(-1) == n).all()
    for r, grp in itertools.product(range(4), range(3)):
        block = score[r, grp * m : (grp + 1) * m]
        best = max(itertools.combinations(range(m), n), key=lambda c: sum(float(block[j]) for j in c))
        assert sorted(mask[r, grp * m : (grp + 1) * m].nonzero().flatten().tolist()) == sorted(best)


def test_check_nm_detects_violations():
    mask = torch.tensor([[True, True, False, False, True, True, True, False]])
    assert not check_nm(mask, 2, 4)
    assert check_nm(mask, 3, 4)


@pytest.mark.parametrize(
    "n, m, match", [(4, 4, "0 < N < M"), (0, 4, "0 < N < M"), (2, 3, "divisible by M=3")]
)
def test_nm_mask_errors(n, m, match):
    with pytest.raises(ValueError, match=match):
        nm_mask(torch.ones(2, 8), n, m)


@pytest.mark.parametrize("n", [6, 40])
def test_keep_top_sort_and_selection_paths_agree_under_heavy_ties(n, monkeypatch):
    import iobs.obs.masks as masks

    g = torch.Generator().manual_seed(n)
    score = torch.randint(0, 3, (5, n), generator=g).double()
    for k in range(n + 1):
        by_sort = keep_top(score, k)
        monkeypatch.setattr(masks, "SORT_MAX", 0)
        by_selection = keep_top(score, k)
        monkeypatch.setattr(masks, "SORT_MAX", 10**9)
        by_rank = keep_top(score, torch.full((5,), k))
        assert torch.equal(by_sort, by_selection) and torch.equal(by_sort, by_rank)
