"""Multiple-choice task evaluation on a local file (the offline side of ``iobs eval --tasks``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from iobs.eval.tasks import choice_loglik, evaluate_tasks, load_items, multiple_choice
from iobs.models.tiny import tiny_model, tiny_tokenizer

TASK = Path(__file__).parent / "data" / "capitals.jsonl"


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", seed=0), tiny_tokenizer()


def test_choice_loglik_equals_the_sum_of_token_log_probs(lm):
    model, tok = lm
    ctx, cont = "Question: x?\nAnswer:", " Paris"
    ids = tok(ctx + cont, add_special_tokens=False)["input_ids"]
    n_ctx = len(tok(ctx, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    expected = sum(float(logp[i - 1, ids[i]]) for i in range(n_ctx, len(ids)))
    assert choice_loglik(model, tok, ctx, cont, "cpu") == pytest.approx(expected, rel=1e-5)


def test_accuracy_is_the_argmax_rule(lm):
    model, tok = lm
    res = multiple_choice(model, tok, TASK)
    items = load_items(TASK)
    hits = 0
    for it in items:
        scores = [
            choice_loglik(model, tok, it["question"] + "\nAnswer:", " " + c, "cpu") for c in it["choices"]
        ]
        hits += int(max(range(len(scores)), key=scores.__getitem__) == it["answer"])
    assert res["items"] == 6 and res["acc"] == hits / 6
    assert 0 <= res["acc_norm"] <= 1


def test_cli_tasks_and_bad_files(lm, tmp_path, capsys):
    from iobs.cli import main

    out = tmp_path / "r.json"
    assert (
        main(["eval", "tiny-llama", "--data", "", "--tasks", str(TASK), "--json", str(out), "--quiet"]) == 0
    )
    assert "multiple-choice accuracy" in capsys.readouterr().out
    assert json.loads(out.read_text())["tasks"][str(TASK)]["items"] == 6
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": 5}\n')
    with pytest.raises(ValueError, match="answer"):
        load_items(bad)
    with pytest.raises(FileNotFoundError):
        evaluate_tasks(lm[0], lm[1], [str(tmp_path / "missing.jsonl")])


def test_named_tasks_without_the_harness_say_what_to_install(lm):
    import importlib.util

    if importlib.util.find_spec("lm_eval") is not None:
        pytest.skip("lm-eval is installed; the online path is used instead")
    with pytest.raises(ValueError, match="pip install lm-eval"):
        evaluate_tasks(lm[0], lm[1], ["mmlu"], num_fewshot=5)
