"""--stream: one decoder block at a time from disk gives the in-memory path's checkpoint bit for bit."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from iobs.cli import main
from iobs.models.tiny import tiny_model, tiny_tokenizer
from iobs.prune import stream
from iobs.prune.api import prune, prune_model
from iobs.prune.checkpoint import state_dir_for
from iobs.prune.config import PruneConfig

SMALL = dict(calib="random", nsamples=2, seqlen=16, device="cpu")


def save_source(folder, arch="llama", shard=None, layers=3, **kw):
    """A tiny random checkpoint (safetensors, ``shard``: max_shard_size) with its tokenizer."""
    model = tiny_model(arch, layers=layers, **kw)
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    tiny_tokenizer().save_pretrained(folder)
    return folder


def tensors(folder) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def assert_same_checkpoint(a, b):
    ta, tb = tensors(a), tensors(b)
    assert sorted(ta) == sorted(tb)  # a tied head is stored once, as save_pretrained stores it
    for n in ta:
        assert ta[n].dtype == tb[n].dtype and torch.equal(ta[n], tb[n]), n
    assert json.loads((a / "config.json").read_text()) == json.loads((b / "config.json").read_text())


def untimed(records):
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in records]


def shard_of(src, tensor):
    return src / json.loads((src / "model.safetensors.index.json").read_text())["weight_map"][tensor]


def run(src, out, stream_, **kw):
    cfg = PruneConfig(model=str(src), method="sparsegpt", out=str(out), stream=stream_, **SMALL, **kw)
    return prune_model(cfg, progress=False)[2]


@pytest.mark.parametrize(
    "arch,shard",
    [("llama", None), ("llama", "20KB"), ("opt", "20KB"), ("gpt2", None), ("qwen2", "20KB"), ("phi", None)],
)
def test_stream_equals_in_memory(tmp_path, arch, shard):
    from transformers import AutoModelForCausalLM

    src = save_source(tmp_path / "src", arch, shard)
    mem, streamed = run(src, tmp_path / "mem", False), run(src, tmp_path / "st", True)
    out = tmp_path / "st"
    assert_same_checkpoint(tmp_path / "mem", out)
    assert untimed(streamed["layers"]) == untimed(mem["layers"]) and streamed["stream"]["blocks"] == 3
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 4  # outside the blocks + one shard per block
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors(out).values())
    back = AutoModelForCausalLM.from_pretrained(out)  # an ordinary save_pretrained checkpoint
    assert sum(p.numel() for p in back.parameters()) == sum(
        p.numel() for p in tiny_model(arch, layers=3).parameters()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mem", "src", "st"]  # no tmp or state left


@pytest.mark.parametrize("arch", ["gpt2", "llama"])  # gpt2 has dropout: evaluation must stay in eval mode
def test_streamed_eval_equals_in_memory(tmp_path, arch):
    src = save_source(tmp_path / "src", arch)
    text = tmp_path / "eval.txt"
    text.write_text("The aardvark is a nocturnal burrowing mammal native to Africa. " * 8)
    ev = dict(eval=[str(text)], eval_seqlen=32, eval_max_windows=3, eval_dense=True)
    mem, streamed = run(src, tmp_path / "mem", False, **ev), run(src, tmp_path / "st", True, **ev)
    assert streamed["eval"] == mem["eval"] and streamed["eval_dense"] == mem["eval_dense"]
    assert streamed["eval"][str(text)]["windows"] == 3
    assert streamed["eval"][str(text)]["ppl"] != streamed["eval_dense"][str(text)]["ppl"]


@pytest.mark.parametrize("first_stream", [True, False])
def test_killed_stream_run_resumes_to_the_same_checkpoint(tmp_path, first_stream):
    src = save_source(tmp_path / "src", "llama", "20KB", layers=4)
    run(src, tmp_path / "ref", False)
    out = tmp_path / "run"
    cfg = PruneConfig(model=str(src), method="sparsegpt", out=str(out), stream=first_stream, **SMALL)

    def interrupt(i, recs):
        if i == 1:
            raise RuntimeError("killed after block 1")

    with pytest.raises(RuntimeError, match="killed"):
        prune(cfg, progress=False, callback=interrupt)
    assert not out.exists() and state_dir_for(out, cfg.key()).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", f"run.state-{cfg.key()}", "src"]
    cfg.stream = True  # the streamed rerun resumes a streamed or an in-memory run of the same configuration
    report = prune(cfg, progress=False)
    assert report["resumed_blocks"] == 2 and not state_dir_for(out, cfg.key()).exists()
    assert_same_checkpoint(tmp_path / "ref", out)


def _nothing_written(tmp_path, out):
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(out.name)]


def test_missing_shard_is_an_error_and_nothing_is_written(tmp_path):
    src = save_source(tmp_path / "src", "llama", "20KB")
    shard = shard_of(src, "model.layers.1.mlp.up_proj.weight")
    shard.unlink()
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match=f"shard {shard.name} is missing"):
        run(src, out, True)
    _nothing_written(tmp_path, out)


@pytest.mark.parametrize("damage", ["header", "truncate"])
def test_corrupt_shard_is_an_error_and_nothing_is_written(tmp_path, damage):
    src = save_source(tmp_path / "src", "llama", "20KB")
    shard = shard_of(src, "model.layers.2.self_attn.q_proj.weight")
    data = shard.read_bytes()
    shard.write_bytes(b"\x07" * 64 + data[64:] if damage == "header" else data[: len(data) // 2])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=f"{shard.name}' is corrupt"):
        run(src, out, True)
    _nothing_written(tmp_path, out)


def test_failure_while_streaming_leaves_nothing_at_out(tmp_path, monkeypatch):
    src = save_source(tmp_path / "src", "llama")
    real = stream.SafetensorsSource.load

    def load(self, names):
        if any(".layers.2." in n for n in names):
            raise OSError("disk read error")
        return real(self, names)

    monkeypatch.setattr(stream.SafetensorsSource, "load", load)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk read error"):
        run(src, out, True)
    assert not out.exists() and not list(tmp_path.glob("out.tmp-*"))


def test_unknown_architecture_is_an_error(tmp_path):
    from transformers import AutoModelForCausalLM, BertConfig

    src = tmp_path / "bert"
    config = BertConfig(
        vocab_size=264,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        is_decoder=True,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(src)
    tiny_tokenizer().save_pretrained(src)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="cannot find the decoder blocks of BertLMHeadModel"):
        run(src, out, True)
    _nothing_written(tmp_path, out)
    (src / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    with pytest.raises(ValueError, match="cannot build a causal LM"):
        run(src, out, True)


def test_stream_options_are_checked_and_leave_the_key_alone(tmp_path):
    with pytest.raises(ValueError, match="not method='iobs'"):
        PruneConfig(model="m", method="iobs", stream=True, out="o")
    with pytest.raises(ValueError, match="give out"):
        PruneConfig(model="m", stream=True)
    with pytest.raises(ValueError, match="tiny-\\* models are built in memory"):
        prune(PruneConfig(model="tiny-llama", stream=True, out=str(tmp_path / "o"), **SMALL), progress=False)
    base = PruneConfig(model="m")
    assert PruneConfig(model="m", stream=True, out="o").key() == base.key()
    assert PruneConfig(model="m", auto_stream=False).key() == base.key()


def test_stream_is_chosen_when_the_model_would_not_fit(tmp_path, monkeypatch, caplog):
    src = save_source(tmp_path / "src", "llama")
    need = stream.SafetensorsSource(src).nbytes(torch.float32)
    assert need == sum(t.numel() * 4 for t in tensors(src).values())
    cfg = PruneConfig(model=str(src), out=str(tmp_path / "o"), **SMALL)
    monkeypatch.setattr(stream, "available_memory", lambda: int(need / stream.FIT) + 1)
    assert stream.wants_stream(cfg) is None  # fits
    monkeypatch.setattr(stream, "available_memory", lambda: need)
    with caplog.at_level(logging.WARNING, logger="iobs.prune.stream"):
        chosen = stream.wants_stream(cfg)
    assert chosen.stream and "would not fit in memory" in caplog.text and "--stream" in caplog.text
    cfg.auto_stream = False
    assert stream.wants_stream(cfg) is None
    cfg.auto_stream, cfg.out = True, None  # nowhere to stream to: loads whole, says so
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="iobs.prune.stream"):
        assert stream.wants_stream(cfg) is None
    assert "cannot stream (no --out" in caplog.text
    assert stream.wants_stream(PruneConfig(model="tiny-llama", **SMALL)) is None
    assert 0 < stream.available_memory()


def test_cli_stream(tmp_path, capsys):
    src = save_source(tmp_path / "src", "qwen2")
    out = tmp_path / "cli"
    argv = ["prune", str(src), "--stream", "--method", "wanda", "--calib", "random", "--nsamples", "2"]
    assert main([*argv, "--seqlen", "16", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    assert "saved:" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["config"]["stream"] is True


def test_stream_equals_in_memory_bfloat16_true_sequential(tmp_path):
    src = save_source(tmp_path / "src", "llama", "20KB")
    kw = dict(dtype="bfloat16", sequential="true", exclude=["*.o_proj"])
    run(src, tmp_path / "mem", False, **kw)
    run(src, tmp_path / "st", True, **kw)
    assert_same_checkpoint(tmp_path / "mem", tmp_path / "st")
    assert tensors(tmp_path / "st")["model.layers.0.mlp.up_proj.weight"].dtype == torch.bfloat16


def test_one_block_in_memory_at_a_time(tmp_path, monkeypatch):
    src = save_source(tmp_path / "src", "opt", layers=4)
    seen, real = [], stream.StreamPlacement.visit

    def visit(self, block, arrive):
        real(self, block, arrive)
        live = [i for i, b in enumerate(self.blocks) if any(p.device.type != "meta" for p in b.parameters())]
        seen.append(live)

    monkeypatch.setattr(stream.StreamPlacement, "visit", visit)
    _, _, _ = prune_model(PruneConfig(model=str(src), out=str(tmp_path / "o"), stream=True, **SMALL), False)
    assert seen == [[i] for i in range(4) for _ in (0, 1)]  # block i arrives, is written, then the next
