"""The fine-tuning control and the loop's diagnostics on a tiny random Llama (real Wikipedia splits)."""

from __future__ import annotations

import copy

import pytest
import torch

from iobs.models.tiny import tiny_model, tiny_tokenizer
from iobs.prune.config import PruneConfig
from iobs.prune.dense_step import finetune_step, lm_loss, newton_step
from iobs.prune.iobs_lm import decoder_layers, finetune_prune_lm, iobs_prune_lm

KW = dict(model="tiny-llama", nsamples=4, seqlen=32, seed=3, val_max_windows=2, lr=3e-3, diag_windows=2)


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", seed=0), tiny_tokenizer()


def _masks(model) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() != 0 for n, m in decoder_layers(model).items()}


def _spy_windows(monkeypatch):
    """Record (seed, windows) of every fine-tuning dense step the loop takes."""
    import iobs.prune.iobs_lm as mod

    seen = []
    real = mod.dense_step

    def spy(name, model, batches, loss_fn, **kw):
        seen.append((kw.get("seed"), torch.cat(batches).clone(), kw.get("pruned_scale", 1.0)))
        return real(name, model, batches, loss_fn, **kw)

    monkeypatch.setattr(mod, "dense_step", spy)
    return seen


def test_control_keeps_the_mask_and_mirrors_iobs_windows(lm, monkeypatch):
    model, tok = lm
    seen = _spy_windows(monkeypatch)
    ctl = copy.deepcopy(model)
    masks = []
    res = finetune_prune_lm(
        ctl,
        tok,
        PruneConfig(method="sparsegpt", finetune_after=2, **KW),
        progress=False,
        on_iteration=lambda e: masks.append(_masks(ctl)) if e["iteration"] >= 1 else None,
    )
    assert [h["label"] for h in res.history] == ["dense", "sparsegpt", "sparsegpt+FT(1)", "sparsegpt+FT(2)"]
    for later in masks[1:]:  # exactly the one-shot mask: no pruned weight non-zero, same count of zeros
        for name, m in masks[0].items():
            assert torch.equal(later[name], m), name
    # the weights did move (the control is not a no-op)
    assert res.history[2]["metrics"] != res.history[1]["metrics"]
    control_steps = list(seen)
    seen.clear()
    iobs = copy.deepcopy(model)
    iobs_prune_lm(iobs, tok, PruneConfig(method="iobs", iterations=3, **KW), progress=False)
    assert len(seen) == len(control_steps) == 2
    for (s1, ids1, scale1), (s2, ids2, scale2) in zip(control_steps, seen):
        assert s1 == s2 and torch.equal(ids1, ids2)  # same windows, same shuffling seed
        assert (scale1, scale2) == (0.0, 1.0)
    assert all(h["dense_step"]["steps"] == 4 for h in res.history[2:])


def test_masked_steps_never_revive_pruned_weights(lm):
    model, tok = lm
    from iobs.data.calibration import calibration_batch
    from iobs.prune.decoder import prune_decoder
    from iobs.prune.solve import LayerSolver

    ids = calibration_batch(tok, "wiki", 4, 32, seed=1)
    pruned = copy.deepcopy(model)
    prune_decoder(pruned, ids, LayerSolver("sparsegpt", 0.6), progress=False)
    masks = _masks(pruned)
    batches = list(ids.split(1))
    for step in ("finetune", "newton"):
        m = copy.deepcopy(pruned)
        before = lm_loss(m, ids).item()
        if step == "finetune":
            finetune_step(m, batches, lm_loss, lr=3e-3, seed=0, masks=masks, pruned_scale=0.0)
        else:
            newton_step(m, batches, lm_loss, lr=0.5, masks=masks, pruned_scale=0.0)
        assert lm_loss(m, ids).item() < before, step
        for name, mask in _masks(m).items():
            assert torch.equal(mask, masks[name]), (step, name)
    # pruned_scale 2: the pruned coordinates move twice as far as with the plain step (Newton is linear)
    plain, scaled = copy.deepcopy(pruned), copy.deepcopy(pruned)
    newton_step(plain, batches, lm_loss, lr=0.1)
    newton_step(scaled, batches, lm_loss, lr=0.1, masks=masks, pruned_scale=2.0)
    for name, layer in decoder_layers(plain).items():
        W1, W2, keep = layer.weight.detach(), decoder_layers(scaled)[name].weight.detach(), masks[name]
        torch.testing.assert_close(W2[~keep], 2 * W1[~keep], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(W2[keep], W1[keep])
    with pytest.raises(ValueError, match="pruned_scale"):
        newton_step(copy.deepcopy(pruned), batches, lm_loss, pruned_scale=0.0)


def test_restricted_newton_is_the_minimiser_on_the_mask(lm):
    """On one layer the masked Newton step solves (H̄+λI)_QQ Δ_Q = −lr·G_Q for every row (the restricted
    Newton system), checked against a per-row dense solve."""
    from iobs.prune.dense_step import _newton_update

    g = torch.Generator().manual_seed(0)
    X = torch.randn(12, 40, generator=g, dtype=torch.float64)
    H = X @ X.T / 40
    mask = torch.rand(5, 12, generator=g) > 0.5
    W = torch.randn(5, 12, generator=g, dtype=torch.float64) * mask
    G = torch.randn(5, 12, generator=g, dtype=torch.float64)
    lam = 0.01 * float(H.diagonal().mean())
    Hl = H + lam * torch.eye(12, dtype=torch.float64)
    step = torch.linalg.solve(Hl, G.T).T
    out = _newton_update(W, step, 0.3, H, 0.01, mask, 0.0, "test")
    for r in range(5):
        q = mask[r]
        ref = W[r, q] - 0.3 * torch.linalg.solve(Hl[q][:, q], G[r, q])
        torch.testing.assert_close(out[r, q], ref)
        assert bool((out[r, ~q] == 0).all())


def test_mask_change_diagnostics_equal_a_recount_from_saved_weights(lm, tmp_path):
    from safetensors.torch import load_file, save_file

    model, tok = lm
    m = copy.deepcopy(model)

    def save(entry):
        if entry["iteration"] >= 1:
            weights = {n: W.detach().contiguous() for n, W in _masks(m).items()}
            save_file(
                {n: W.to(torch.uint8) for n, W in weights.items()}, tmp_path / f"it{entry['iteration']}.st"
            )

    config = PruneConfig(method="iobs", iterations=3, pruned_scale=50.0, **KW)
    res = iobs_prune_lm(m, tok, config, progress=False, on_iteration=save)
    its = [h for h in res.history if h["iteration"] >= 1]
    assert its[0].get("mask_changed") is None
    for prev, h in zip(its, its[1:]):
        a = load_file(tmp_path / f"it{prev['iteration']}.st")
        b = load_file(tmp_path / f"it{h['iteration']}.st")
        changed = sum(int((a[n] != b[n]).sum()) for n in a)
        total = sum(a[n].numel() for n in a)
        assert h["mask_changed"] == changed / total
        assert h["mask_changed_max_layer"] == max(float((a[n] != b[n]).float().mean()) for n in a)
        assert 0 < h["pruned_mass"] < 1
        assert {"loss_before", "loss_dense", "loss_projected"} <= set(h)
    assert any(h["mask_changed"] > 0 for h in its[1:])  # large moves of pruned weights do re-select


def test_schedule_ends_at_exactly_the_target(lm):
    model, tok = lm
    m = copy.deepcopy(model)
    config = PruneConfig(method="iobs", iterations=3, schedule="0.3,0.4,0.5", **KW)
    sparsity = []
    res = iobs_prune_lm(
        m, tok, config, progress=False, on_iteration=lambda e: sparsity.append(e.get("sparsity"))
    )
    assert sparsity[1:] == [pytest.approx(s, abs=2e-3) for s in (0.3, 0.4, 0.5)]  # floor(s·n) per layer
    assert res.best == 3  # only iterations at the final target can be the best
    for name, layer in decoder_layers(m).items():
        W = layer.weight
        assert int((W == 0).sum()) == int(0.5 * W.numel()), name


def test_control_options_are_checked():
    with pytest.raises(ValueError, match="finetune_after"):
        PruneConfig(model="x", method="iobs", finetune_after=2)
    with pytest.raises(ValueError, match="schedule must end"):
        PruneConfig(model="x", method="iobs", schedule="0.3,0.4,0.6")
    with pytest.raises(ValueError, match="one target per iteration"):
        PruneConfig(model="x", method="iobs", schedule="0.3,0.5")
    with pytest.raises(ValueError, match="schedule entries"):
        PruneConfig(model="x", method="iobs", schedule="0.3,half,0.5")
    with pytest.raises(ValueError, match="pruned_scale"):
        PruneConfig(model="x", method="sparsegpt", finetune_after=1, pruned_scale=3.0)
    with pytest.raises(ValueError, match="lr"):
        PruneConfig(model="x", method="sparsegpt", finetune_after=1, lr=-1.0)
    with pytest.raises(ValueError, match="validation corpus"):
        PruneConfig(model="x", method="wanda", finetune_after=1, calib="wiki-val", validation=["wiki-val"])


def test_cli_finetune_after_records_the_control(tmp_path):
    import json

    from safetensors.torch import load_file

    from iobs.cli import main

    out = tmp_path / "ctl"
    argv = ["prune", "tiny-llama", "--method", "wanda", "--finetune-after", "1", "--nsamples", "2"]
    argv += ["--seqlen", "32", "--val-max-windows", "2", "--lr", "1e-3", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    ctl = report["finetune"]
    assert ctl["control"]["mirrors"] == "I-OBS(2)" and ctl["control"]["steps_per_round"] == 2
    assert [h["iteration"] for h in ctl["history"]] == [0, 1, 2]
    assert (out / "history.json").exists() and (out / "history.png").stat().st_size > 5000
    weights = load_file(str(out / "model.safetensors"))
    for rec in report["layers"]:
        W = weights[rec["name"] + ".weight"]
        assert int((W == 0).sum()) == W.numel() // 2, rec["name"]
