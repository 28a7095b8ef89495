"""I-OBS with Fisher blocks on a small classifier: iterations lower the loss below one-shot WoodFisher."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from iobs.vision.fisher import empirical_fisher, get_flat, prunable_weights, set_flat
from iobs.vision.global_prune import woodfisher
from iobs.vision.iobs_global import iobs_global

SPARSITY = 0.7


def _problem():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(600, 12, generator=g, dtype=torch.float64)
    W = torch.randn(12, 4, generator=g, dtype=torch.float64)
    y = (X @ W + 0.5 * torch.randn(600, 4, generator=g, dtype=torch.float64)).argmax(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model, X, y


def _loss(model, X, y):
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(X), y))


def test_iobs_beats_woodfisher_with_the_same_gradient_budget():
    model, X, y = _problem()
    T, m = 4, 60
    kw = dict(block_size=64, damping=1e-2)
    # WoodFisher: one Fisher from all T·m samples
    params = prunable_weights(model)
    F = empirical_fisher(model, params, X[: T * m], y[: T * m], **kw)
    wf = woodfisher(get_flat(params), F, SPARSITY)
    wf_model = copy.deepcopy(model)
    set_flat(prunable_weights(wf_model), wf.theta)
    wf_loss = _loss(wf_model, X, y)
    # I-OBS: T iterations on m fresh samples each (the same samples in total)
    io_model = copy.deepcopy(model)
    res = iobs_global(
        io_model,
        sparsity=SPARSITY,
        iterations=T,
        calibration=lambda t: (X[(t - 1) * m : t * m], y[(t - 1) * m : t * m]),
        evaluate=lambda mod: {"loss": _loss(mod, X, y)},
        select="loss",
        mode="min",
        lr=0.5,
        **kw,
    )
    losses = {h["iteration"]: h["metrics"]["loss"] for h in res.history}
    assert res.best >= 2  # a later iteration, not the one-shot start, is the best
    assert losses[res.best] < 0.9 * wf_loss
    assert _loss(io_model, X, y) == losses[res.best]  # the best iteration's weights are restored
    theta = get_flat(prunable_weights(io_model))
    assert int((theta == 0).sum()) >= int(SPARSITY * theta.numel())
    for h in res.history[1:]:
        assert h["sparsity"] == 1 - (theta.numel() - int(SPARSITY * theta.numel())) / theta.numel()


def test_line_search_on_held_out_samples_never_raises_their_loss():
    """η = 0 is a candidate and P(θ_t) = θ_t, so the held-out loss of the chosen point cannot rise."""
    model, X, y = _problem()
    held = (X[400:], y[400:])
    res = iobs_global(
        model,
        sparsity=0.8,
        iterations=4,
        calibration=lambda t: (X[(t - 1) * 80 : t * 80], y[(t - 1) * 80 : t * 80]),
        evaluate=lambda mod: {"held_loss": _loss(mod, *held)},
        select="held_loss",
        mode="min",
        block_size=64,
        damping=1e-3,
        absolute_damping=True,
        line_search=held,
    )
    losses = [h["metrics"]["held_loss"] for h in res.history if h["iteration"] >= 1]
    for t, (a, b) in enumerate(zip(losses, losses[1:]), start=2):
        assert b <= a + 1e-9, f"held-out loss rose at iteration {t}: {a} -> {b}"
        chosen = res.history[t]["dense_step"]
        assert abs(min(chosen["line_search"].values()) - b) < 1e-9
    assert losses[-1] < losses[0]  # and the iterations did lower it


def test_line_search_data_must_hold_samples():
    model, X, y = _problem()
    with pytest.raises(ValueError, match="line_search"):
        iobs_global(
            model,
            sparsity=0.5,
            iterations=2,
            calibration=lambda t: (X[:50], y[:50]),
            evaluate=lambda mod: {"loss": _loss(mod, X, y)},
            select="loss",
            mode="min",
            block_size=64,
            line_search=(X[:0], y[:0]),
        )


def test_initial_fisher_replaces_the_first_build_and_changes_nothing(monkeypatch):
    import iobs.vision.iobs_global as mod

    model, X, y = _problem()
    m, kw = 60, dict(block_size=64, damping=1e-2)
    run = dict(
        sparsity=SPARSITY,
        iterations=3,
        calibration=lambda t: (X[(t - 1) * m : t * m], y[(t - 1) * m : t * m]),
        evaluate=lambda mod_: {"loss": _loss(mod_, X, y)},
        select="loss",
        mode="min",
        lr=0.5,
        **kw,
    )
    plain = copy.deepcopy(model)
    ref = iobs_global(plain, **run)
    F1 = empirical_fisher(model, prunable_weights(model), X[:m], y[:m], **kw)
    builds = []

    def counted(*a, **k):
        builds.append(1)
        return empirical_fisher(*a, **k)

    monkeypatch.setattr(mod, "empirical_fisher", counted)
    given = copy.deepcopy(model)
    res = iobs_global(given, initial_fisher=F1, **run)
    assert len(builds) == 2  # iterations 2 and 3 only
    assert [h["metrics"]["loss"] for h in res.history] == [h["metrics"]["loss"] for h in ref.history]
    assert torch.equal(get_flat(prunable_weights(given)), get_flat(prunable_weights(plain)))
    small = empirical_fisher(model, {"0.weight": model[0].weight}, X[:m], y[:m], **kw)
    with pytest.raises(ValueError, match="initial_fisher covers"):
        iobs_global(copy.deepcopy(model), initial_fisher=small, **run)
