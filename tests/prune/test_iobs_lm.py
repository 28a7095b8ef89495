"""I-OBS on a tiny random Llama with the real Wikipedia splits (byte tokenizer): wiring, one-shot equality."""

from __future__ import annotations

import copy

import pytest
import torch

from iobs.models.tiny import tiny_model, tiny_tokenizer
from iobs.prune.config import PruneConfig
from iobs.prune.decoder import find_blocks, prune_decoder
from iobs.prune.iobs_lm import iobs_prune_lm
from iobs.prune.layers import find_layers, get_weight
from iobs.prune.solve import LayerSolver

KW = dict(model="tiny-llama", method="iobs", nsamples=4, seqlen=32, seed=3, val_max_windows=4)


def _config(**kw) -> PruneConfig:
    return PruneConfig(**{**KW, **kw})


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", seed=0), tiny_tokenizer()


def _decoder_weights(model):
    _, blocks = find_blocks(model)
    return {n: get_weight(m).clone() for n, m in find_layers(blocks).items()}


def test_iteration_one_equals_one_shot_sparsegpt(lm):
    from iobs.data.calibration import calibration_batch

    model, tok = lm
    one_shot = copy.deepcopy(model)
    ids = calibration_batch(tok, "wiki", 4, 32, seed=3)
    prune_decoder(one_shot, ids, LayerSolver("sparsegpt", 0.5), progress=False)
    looped = copy.deepcopy(model)
    res = iobs_prune_lm(looped, tok, _config(iterations=1), progress=False)
    assert res.best == 1
    ref = _decoder_weights(one_shot)
    for name, W in _decoder_weights(looped).items():
        assert torch.equal(W, ref[name]), name


@pytest.mark.parametrize("step,lr", [("newton", 0.01), ("finetune", 1e-3), ("none", 1e-5)])
def test_every_iteration_is_exactly_sparse(lm, step, lr):
    model, tok = lm
    model = copy.deepcopy(model)
    sparsities = []

    def check(entry):
        if entry["iteration"] >= 1:
            for W in _decoder_weights(model).values():
                # 2:4 on every row: exactly half of each group of 4 is zero (or more, if weights were 0)
                assert bool(((W.reshape(W.shape[0], -1, 4) == 0).sum(-1) >= 2).all())
            sparsities.append(entry["sparsity"])

    config = _config(pattern="2:4", sparsity=None, iterations=2, dense_step=step, lr=lr)
    res = iobs_prune_lm(model, tok, config, on_iteration=check, progress=False)
    assert len(sparsities) == 2 and all(s >= 0.5 for s in sparsities)
    assert set(res.history[0]["metrics"]) == {"ppl:wiki-val"}


def test_validation_must_not_be_the_calibration_source(lm):
    model, tok = lm
    with pytest.raises(ValueError, match="validation corpus"):
        _config(calib="wiki-val", validation=["wiki-val"])
    with pytest.raises(ValueError, match="dense_step"):
        _config(dense_step="adamw")
    with pytest.raises(ValueError, match="method='iobs'"):
        iobs_prune_lm(model, tok, _config(method="sparsegpt"), progress=False)


def test_cli_method_iobs_saves_best_iteration(tmp_path):
    import json

    from safetensors.torch import load_file

    from iobs.cli import main

    out = tmp_path / "pruned"
    argv = [
        "prune",
        "tiny-llama",
        "--method",
        "iobs",
        "--iterations",
        "2",
        "--nsamples",
        "2",
        "--seqlen",
        "32",
        "--val-max-windows",
        "2",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    loop = report["iobs"]
    assert [h["iteration"] for h in loop["history"]] == [0, 1, 2]
    assert loop["best_iteration"] in (1, 2)
    assert json.loads((out / "history.json").read_text())["best_iteration"] == loop["best_iteration"]
    assert (out / "history.png").stat().st_size > 5000
    weights = load_file(str(out / "model.safetensors"))
    for name in report["layers"]:
        W = weights[name["name"] + ".weight"]
        assert int((W == 0).sum()) >= W.numel() // 2, name["name"]
    # validation drawn from the calibration text is refused with a clear message
    assert (
        main(argv[:-3] + ["--calib", "wiki-val", "--validation", "wiki-val", "--out", str(tmp_path / "x")])
        == 2
    )
