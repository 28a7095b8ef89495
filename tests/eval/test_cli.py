"""``iobs eval`` and ``iobs demo`` end to end on a tiny random Llama (offline, seconds)."""

import json

import pytest
import torch

from iobs.cli import main
from iobs.commands.evaluate import linear_sparsity
from iobs.models.tiny import tiny_model, tiny_tokenizer


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("Optimal brain surgeon prunes one weight at a time and updates the rest. " * 12)
    return p


@pytest.fixture
def news_file(tmp_path):
    p = tmp_path / "news.txt"
    p.write_text("Fire crews were called to a new blaze south of Goulburn on Tuesday. " * 8)
    return p


def test_eval_prints_a_table_and_writes_json(tmp_path, text_file, news_file, capsys):
    out = tmp_path / "r.json"
    args = f"eval tiny-llama --data {text_file},{news_file} --seqlen 64 --max-windows 3 --json {out} --quiet"
    rc = main(args.split())
    assert rc == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert [r["data"] for r in res["results"]] == [str(text_file), str(news_file)]
    n_tokens = len(text_file.read_bytes())  # byte-level tokenizer
    assert res["results"][0]["windows"] == min(3, n_tokens // 64) and res["results"][1]["windows"] == 3
    assert all(r["tokens"] == r["windows"] * 63 for r in res["results"])
    for r in res["results"]:
        assert f"{r['ppl']:.4f}" in printed and str(r["tokens"]) in printed


def test_eval_on_a_saved_sparse_checkpoint_reports_its_sparsity(tmp_path, text_file, capsys):
    model = tiny_model("llama", seed=1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear) and m is not model.lm_head:
                m.weight[:, ::4] = 0  # exactly 25 %
    assert linear_sparsity(model) == 0.25
    model.save_pretrained(tmp_path / "ckpt")
    tiny_tokenizer().save_pretrained(tmp_path / "ckpt")
    rc = main(["eval", str(tmp_path / "ckpt"), "--data", str(text_file), "--seqlen", "32", "--quiet"])
    assert rc == 0
    assert "zeros in linear weights 25.00%" in capsys.readouterr().out


def test_eval_errors_are_clean(capsys, tmp_path):
    assert main(["eval", "no-such-model", "--data", "news"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    short = tmp_path / "s.txt"
    short.write_text("short")
    assert main(["eval", "tiny-llama", "--data", str(short), "--seqlen", "64", "--quiet"]) == 2
    assert "fewer than one window of seqlen=64" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_compares_methods_on_the_same_windows(tmp_path, text_file, news_file, capsys):
    out = tmp_path / "demo"
    args = (
        "demo --model tiny-llama --nsamples 4 --seqlen 32 --max-windows 2 --methods magnitude,sparsegpt "
        "--iobs-nsamples 2 --lr 1e-3 "
        f"--calib {text_file} --eval {text_file},{news_file} --out {out} --quiet"
    )
    rc = main(args.split())
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    names = ["dense", "magnitude", "sparsegpt", "sparsegpt+FT(1) (control)", "I-OBS(2)"]
    assert [r["method"] for r in res["rows"]] == names
    for r in res["rows"][1:]:
        assert r["sparsity"] == pytest.approx(0.5, abs=1e-9)
    # the I-OBS(2) and control rows moved away from the SparseGPT row they start from
    sgpt = res["rows"][2]["ppl"][str(news_file)]["ppl"]
    assert all(r["ppl"][str(news_file)]["ppl"] != sgpt for r in res["rows"][3:])
    assert res["iobs"]["nsamples"] == 2
    for corpus in (str(text_file), str(news_file)):
        assert {r["ppl"][corpus]["tokens"] for r in res["rows"]} == {2 * 31}
    table = (out / "table.md").read_text()
    assert table in capsys.readouterr().out
    assert "| sparsegpt | 50.00% |" in table
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # dense perplexity in the demo equals a separate evaluation of the same windows
    from iobs.data.calibration import encode
    from iobs.data.text import load_text
    from iobs.eval.perplexity import perplexity

    ids = encode(tiny_tokenizer(), load_text(str(news_file)))[: 2 * 32]
    ref = perplexity(tiny_model("llama"), data=ids, seqlen=32, progress=False)["ppl"]
    assert res["rows"][0]["ppl"][str(news_file)]["ppl"] == pytest.approx(ref, rel=1e-6)


def test_demo_rejects_bad_arguments(tmp_path, capsys):
    assert main(["demo", "--model", "tiny-llama", "--methods", "lasso", "--out", str(tmp_path)]) == 2
    assert "methods must be among" in capsys.readouterr().err
    assert main(["demo", "--model", "tiny-llama", "--sparsity", "1.5", "--out", str(tmp_path)]) == 2
    assert "sparsity must be in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()
