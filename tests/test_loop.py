"""The I-OBS outer loop on a small classifier trained on real data (scikit-learn's digits)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from iobs.loop import history_figure, run_iobs
from iobs.prune.dense_step import classification_loss, dense_step
from iobs.prune.layers import find_layers, get_weight
from iobs.prune.solve import LayerSolver
from iobs.prune.walk import prune_module
from iobs.utils import save_figure

SPARSITY = 0.7


@torch.no_grad()
def mean_loss(model, batches, loss_fn) -> float:
    """Mean task loss over the batches."""
    return sum(float(loss_fn(model, b)) for b in batches) / len(batches)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    X, y = X[perm], y[perm]
    return {"train": (X[:1000], y[:1000]), "calib": (X[1000:1400], y[1000:1400]), "val": (X[1400:], y[1400:])}


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    X, y = digits["train"]
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), y).backward()
        opt.step()
    return model


def _batches(digits, t, size=100):
    """Iteration t's calibration: a seeded subset of the calibration split, in batches of ``size``."""
    X, y = digits["calib"]
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(t))[:200]
    return [(X[idx[i : i + size]], y[idx[i : i + size]]) for i in range(0, len(idx), size)]


def _loop(model, digits, step="finetune", iterations=4, **kw):
    def project(m, batches, t):
        return prune_module(m, [b[0] for b in batches], LayerSolver("sparsegpt", SPARSITY), progress=False)

    def evaluate(m):
        return {"val_loss": mean_loss(m, [digits["val"]], classification_loss)}

    step_kw = kw.pop("step_kw", {"lr": 3e-3, "epochs": 3} if step == "finetune" else {"lr": 0.5})
    return run_iobs(
        model,
        iterations=iterations,
        calibration=lambda t: _batches(digits, t),
        project=project,
        dense_step=lambda m, b, t: dense_step(
            step, m, b, classification_loss, **step_kw, **({"seed": t} if step == "finetune" else {})
        ),
        evaluate=evaluate,
        select="val_loss",
        **kw,
    )


def _weights(model):
    return {n: get_weight(m).clone() for n, m in find_layers(model).items()}


def test_iteration_one_is_one_shot(trained, digits):
    one_shot = copy.deepcopy(trained)
    prune_module(
        one_shot, [b[0] for b in _batches(digits, 1)], LayerSolver("sparsegpt", SPARSITY), progress=False
    )
    looped = copy.deepcopy(trained)
    _loop(looped, digits, iterations=1)
    for name, W in _weights(one_shot).items():
        assert torch.equal(W, _weights(looped)[name]), name


def test_loop_improves_and_keeps_exact_sparsity(trained, digits, tmp_path):
    model = copy.deepcopy(trained)
    seen = []

    def check(entry):
        if entry["iteration"] >= 1:
            for name, W in _weights(model).items():
                assert int((W == 0).sum()) >= int(SPARSITY * W.numel()), name
            seen.append(entry["iteration"])

    res = _loop(model, digits, on_iteration=check)
    assert seen == [1, 2, 3, 4]
    losses = {h["iteration"]: h["metrics"]["val_loss"] for h in res.history}
    assert res.best == min((t for t in losses if t >= 1), key=losses.get)
    assert losses[res.best] < losses[1]  # dense fine-tuning + re-projection beats one-shot SparseGPT
    # the restored model is the best iteration's
    restored = mean_loss(model, [digits["val"]], classification_loss)
    assert restored == pytest.approx(losses[res.best], rel=1e-6)
    for W in _weights(model).values():
        assert int((W == 0).sum()) >= int(SPARSITY * W.numel())
    png = save_figure(history_figure(res), tmp_path / "history.png")
    assert png.stat().st_size > 5000


def test_newton_step_lowers_the_task_loss(trained, digits):
    model = copy.deepcopy(trained)
    batches = _batches(digits, 1)
    before = mean_loss(model, batches, classification_loss)
    info = dense_step("newton", model, batches, classification_loss, lr=0.5, damping=0.01)
    assert info["layers"] == 3
    assert mean_loss(model, batches, classification_loss) < before


def test_resume_equals_uninterrupted(trained, digits, tmp_path):
    full = copy.deepcopy(trained)
    _loop(full, digits, iterations=3)

    class Stop(Exception):
        pass

    def interrupt(entry):
        if entry["iteration"] == 2:
            raise Stop

    part = copy.deepcopy(trained)
    with pytest.raises(Stop):
        _loop(part, digits, iterations=3, state_dir=tmp_path, state_key="k", on_iteration=interrupt)
    resumed = copy.deepcopy(trained)  # a fresh process would start from the dense model again
    res = _loop(resumed, digits, iterations=3, state_dir=tmp_path, state_key="k")
    assert [h["iteration"] for h in res.history] == [0, 1, 2, 3]
    for name, W in _weights(full).items():
        assert torch.equal(W, _weights(resumed)[name]), name


def test_diverging_dense_step_stops_and_keeps_best(trained, digits):
    model = copy.deepcopy(trained)
    res = _loop(
        model, digits, step="finetune", iterations=3, step_kw={"lr": 1e30, "epochs": 1, "max_grad_norm": None}
    )
    assert res.stopped is not None
    assert res.best == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_bad_iterations(trained, digits, bad):
    with pytest.raises((ValueError, TypeError), match="iterations"):
        _loop(copy.deepcopy(trained), digits, iterations=bad)


def test_bad_lr(trained, digits):
    with pytest.raises(ValueError, match="lr"):
        dense_step("newton", copy.deepcopy(trained), _batches(digits, 1), classification_loss, lr=-1)
    with pytest.raises(ValueError, match="dense_step"):
        dense_step("sgd-ish", trained, _batches(digits, 1), classification_loss)
