"""Exact McNemar test against scipy's exact binomial test, and the per-sample correctness helper."""

from __future__ import annotations

import pytest
import torch

from iobs.eval.paired import mcnemar


@pytest.mark.parametrize("b,c,same", [(0, 10, 5), (3, 9, 0), (7, 7, 40), (25, 60, 100), (1, 0, 3)])
def test_mcnemar_matches_exact_binomial_test(b, c, same):
    stats = pytest.importorskip("scipy.stats")
    a = torch.tensor([True] * b + [False] * c + [True] * same + [False] * 4)
    z = torch.tensor([False] * b + [True] * c + [True] * same + [False] * 4)
    perm = torch.randperm(len(a), generator=torch.Generator().manual_seed(b + c))
    out = mcnemar(a[perm], z[perm])
    assert (out["only_a"], out["only_b"]) == (b, c)
    assert out["p"] == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)
    assert mcnemar(z, a)["p"] == pytest.approx(out["p"])


def test_mcnemar_identical_classifiers_and_bad_input():
    a = torch.tensor([True, False, True])
    assert mcnemar(a, a) == {"only_a": 0, "only_b": 0, "p": 1.0}
    with pytest.raises(ValueError, match="boolean"):
        mcnemar(a.int(), a)
    with pytest.raises(ValueError, match="equal length"):
        mcnemar(a, a[:2])


def test_correct_agrees_with_accuracy():
    from iobs.vision.models import accuracy, build_model, correct

    torch.manual_seed(0)
    model = build_model("mlpnet")
    X, y = torch.randn(2500, 784), torch.randint(0, 10, (2500,))
    hit = correct(model, X, y)
    assert hit.dtype == torch.bool and hit.shape == (2500,)
    assert accuracy(model, X, y) == int(hit.sum()) / 2500
    assert hit.tolist() == (model(X).argmax(-1) == y).tolist()
