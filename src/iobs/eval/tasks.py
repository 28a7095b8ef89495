"""Task accuracy beside perplexity: local multiple-choice files offline, lm-evaluation-harness online.

A local task is a JSON-lines file, one item a line: ``{"question": str, "choices": [str], "answer": int}``.
Each choice is scored by the log-likelihood the model gives its tokens after the question (the harness'
``acc`` rule; ``acc_norm`` divides by the choice's length in characters); the prediction is the argmax.
Any other task name (``mmlu``, ``hellaswag``, ...) goes to lm-evaluation-harness (``pip install lm-eval``,
needs network for its data sets) with the model object passed in, so a pruned model in memory is scored.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F


def load_items(path: str | Path) -> list[dict]:
    """Validated items of a local multiple-choice file."""
    path = Path(path)
    items = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not JSON ({e.msg})") from None
        choices, answer = item.get("choices"), item.get("answer")
        if not isinstance(item.get("question"), str) or not isinstance(choices, list) or len(choices) < 2:
            raise ValueError(f"{path}:{i}: need 'question' (text) and 'choices' (a list of at least 2 texts)")
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise ValueError(
                f"{path}:{i}: 'answer' must be an index in [0, {len(choices) - 1}], got {answer!r}"
            )
        items.append(item)
    if not items:
        raise ValueError(f"task file {path} has no items")
    return items


@torch.inference_mode()
def choice_loglik(model, tokenizer, context: str, continuation: str, device) -> float:
    """log p(continuation | context), summed over the continuation's tokens."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    full = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    n_ctx = len(ctx) if full[: len(ctx)] == ctx else len(ctx) - 1  # merge at the boundary: score the rest
    n_ctx = max(n_ctx, 1)
    ids = torch.tensor([full], device=device)
    logp = F.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    return float(logp[n_ctx - 1 :].gather(1, targets[n_ctx - 1 :, None]).sum())


def multiple_choice(model, tokenizer, path: str | Path, device=None) -> dict:
    """Accuracy (acc, acc_norm) of ``model`` on a local multiple-choice file."""
    items = load_items(path)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits = hits_norm = 0
    try:
        for item in items:
            context = item["question"].rstrip() + "\nAnswer:"
            scores = [choice_loglik(model, tokenizer, context, " " + c, device) for c in item["choices"]]
            norm = [s / max(len(c), 1) for s, c in zip(scores, item["choices"])]
            hits += int(max(range(len(scores)), key=scores.__getitem__) == item["answer"])
            hits_norm += int(max(range(len(norm)), key=norm.__getitem__) == item["answer"])
    finally:
        model.train(was_training)
    n = len(items)
    return {
        "task": str(path),
        "items": n,
        "acc": hits / n,
        "acc_norm": hits_norm / n,
        "stderr": math.sqrt(hits / n * (1 - hits / n) / n),
    }


def harness(model, tokenizer, tasks: list[str], num_fewshot: int | None = None, batch_size: int = 1) -> dict:
    """lm-evaluation-harness on ``tasks`` (mmlu with num_fewshot=5 as the paper); needs lm-eval, network."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise ValueError(
            f"tasks {tasks} need lm-evaluation-harness: pip install lm-eval (and network for its data sets); "
            "offline, pass a local multiple-choice .jsonl file instead"
        ) from None
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    out = simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot)
    return out["results"]


def evaluate_tasks(model, tokenizer, tasks: list[str], num_fewshot: int | None = None, device=None) -> dict:
    """Local ``.jsonl`` files are scored here; every other name goes to the harness in one call."""
    local = [t for t in tasks if t.endswith(".jsonl")]
    for t in local:
        if not Path(t).is_file():
            raise FileNotFoundError(f"task file {t} does not exist")
    results = {t: multiple_choice(model, tokenizer, t, device) for t in local}
    named = [t for t in tasks if t not in local]
    if named:
        results.update(harness(model, tokenizer, named, num_fewshot))
    return results
