"""prune(config) end to end on tiny models: checkpoint round trip, report.json, resume, CLI, bad input."""

import json

import pytest
import torch

from iobs.cli import main
from iobs.config import from_dict, to_dict
from iobs.models.tiny import tiny_model, tiny_tokenizer
from iobs.prune.api import prune, prune_model
from iobs.prune.checkpoint import save_checkpoint, state_dir_for
from iobs.prune.config import PruneConfig
from iobs.prune.layers import find_layers

SMALL = dict(calib="random", nsamples=2, seqlen=16, device="cpu")


def test_save_from_pretrained_reproduces_logits_and_report(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "pruned"
    cfg = PruneConfig(
        model="tiny-gpt2", method="sparsegpt", pattern="2:4", sparsity=None, out=str(out), **SMALL
    )
    model, tok, report = prune_model(cfg, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]  # no tmp or state folder left
    assert {"model.safetensors", "config.json", "report.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids).logits, rtol=0, atol=0)
    for name, m in find_layers(back).items():
        W = m.weight
        assert int((W == 0).sum()) == W.numel() // 2, name
    assert AutoTokenizer.from_pretrained(out)("abc")["input_ids"] == tok("abc")["input_ids"]

    saved = json.loads((out / "report.json").read_text())
    assert from_dict(PruneConfig, saved["config"]) == cfg
    assert saved["seed"] == 0 and saved["key"] == cfg.key()
    assert {"torch", "transformers", "python", "iobs"} <= set(saved["environment"])
    assert saved["memory"]["max_rss_bytes"] > 0
    assert {"load_s", "calibration_s", "prune_s", "total_s"} <= set(saved["timings"])
    assert saved["calibration"] == {"source": "random", "nsamples": 2, "seqlen": 16, "tokens": 32}
    assert [r["name"] for r in saved["layers"]] == list(find_layers(model))
    assert saved["layers"] == json.loads(json.dumps(report["layers"]))
    for r in saved["layers"]:
        assert r["sparsity"] == 0.5 and r["error"] >= 0 and {"shape", "seconds", "damping"} <= set(r)
    assert saved["summary"]["sparsity"] == 0.5 and saved["summary"]["layers"] == 8


def test_existing_out_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    cfg = PruneConfig(model="tiny-llama", method="magnitude", out=str(out), **SMALL)
    with pytest.raises(FileExistsError, match="overwrite"):
        prune(cfg, progress=False)
    assert (out / "keep.txt").exists()
    cfg.overwrite = True
    prune(cfg, progress=False)
    assert not (out / "keep.txt").exists() and (out / "report.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    model = tiny_model("llama")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(model, tiny_tokenizer(), tmp_path / "x", {"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_generic_module_checkpoint_is_safetensors(tmp_path):
    from safetensors.torch import load_file

    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    out = save_checkpoint(net, None, tmp_path / "net", {"ok": True})
    torch.testing.assert_close(load_file(str(out / "model.safetensors"))["0.weight"], net[0].weight.detach())


def test_api_resume_equals_uninterrupted(tmp_path):
    ref_out, out = tmp_path / "ref", tmp_path / "run"
    base = dict(model="tiny-qwen2", method="sparsegpt", **SMALL)
    ref_model, _, _ = prune_model(PruneConfig(out=str(ref_out), **base), progress=False)

    def interrupt(i, recs):
        if i == 0:
            raise KeyboardInterrupt

    cfg = PruneConfig(out=str(out), **base)
    with pytest.raises(KeyboardInterrupt):
        prune(cfg, progress=False, callback=interrupt)
    assert not out.exists() and state_dir_for(out, cfg.key()).exists()
    model, _, report = prune_model(cfg, progress=False)
    assert report["resumed_blocks"] == 1
    assert not state_dir_for(out, cfg.key()).exists()
    for (n, a), b in zip(model.state_dict().items(), ref_model.state_dict().values()):
        assert torch.equal(a, b), n


def test_calibration_and_eval_from_a_text_file(tmp_path):
    """The byte tokenizer on a local text file: calibration windows, dense and pruned perplexity."""
    text = tmp_path / "t.txt"
    words = "the cat sat on a mat while an old dog slept near the warm fire and rain fell outside".split()
    g = torch.Generator().manual_seed(0)
    text.write_text(" ".join(words[i] for i in torch.randint(0, len(words), (1500,), generator=g).tolist()))
    cfg = PruneConfig(
        model="tiny-llama",
        method="wanda",
        calib=str(text),
        nsamples=2,
        seqlen=32,
        device="cpu",
        eval=[str(text)],
        eval_max_windows=2,
        eval_dense=True,
    )
    report = prune(cfg, progress=False)
    dense, pruned = report["eval_dense"][str(text)], report["eval"][str(text)]
    assert dense["tokens"] == pruned["tokens"] > 0 and dense["seqlen"] == 32
    assert pruned["ppl"] != dense["ppl"] and report["calibration"]["tokens"] == 64


def test_short_calibration_sequences_are_refused(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("too short")  # 9 byte tokens < seqlen
    with pytest.raises(ValueError, match="seqlen=16"):
        prune(PruneConfig(model="tiny-llama", **{**SMALL, "calib": str(short)}), progress=False)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(nsamples=0), "nsamples"),
        (dict(sparsity=1.0), "sparsity"),
        (dict(sparsity=None, pattern="4:2"), "pattern"),
        (dict(sparsity=0.5, pattern="2:4"), "not both"),
        (dict(method="sgd"), "method"),
        (dict(sequential="sometimes"), "sequential"),
        (dict(seqlen=-3), "seqlen"),
        (dict(dtype="int8"), "dtype"),
    ],
)
def test_config_validation(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        PruneConfig(model="tiny-llama", **kw)


def test_config_round_trip_and_key():
    cfg = PruneConfig(model="m", include="*.q_proj,*.k_proj", eval="wiki-test,news")
    assert cfg.include == ["*.q_proj", "*.k_proj"] and cfg.eval == ["wiki-test", "news"]
    assert from_dict(PruneConfig, to_dict(cfg)) == cfg
    with pytest.raises(ValueError, match="unknown PruneConfig fields"):
        from_dict(PruneConfig, {"model": "m", "colour": 1})
    other = PruneConfig(model="m", include="*.q_proj,*.k_proj", out="elsewhere", eval="news")
    assert other.key() == cfg.key() and PruneConfig(model="m", seed=1).key() != PruneConfig(model="m").key()
    # options added after runs were saved join the key only when set, so older resume states stay valid
    assert PruneConfig(model="m", refit=True).key() != PruneConfig(model="m").key()
    assert PruneConfig(model="m", warm="alps").key() != PruneConfig(model="m").key()


def test_cli_prune_prints_table_and_refuses_existing_out(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "prune",
        "tiny-opt",
        "--method",
        "wanda",
        "--sparsity",
        "0.25",
        "--calib",
        "random",
        "--nsamples",
        "2",
        "--seqlen",
        "16",
        "--out",
        str(out),
        "--quiet",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| model.decoder.layers.*.fc1 | 2 | 64x32 | 0.25 |" in text and "saved:" in text
    assert json.loads((out / "report.json").read_text())["config"]["sparsity"] == 0.25
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "--exclude", "*.nothing"]) == 2
    assert "matches no prunable" in capsys.readouterr().err
    assert main(["prune", "no-such-model", "--calib", "random", "--quiet"]) == 2
    assert "unknown model" in capsys.readouterr().err
