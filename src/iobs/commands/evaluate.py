"""``iobs eval MODEL_OR_DIR``: perplexity of a dense or pruned model on one or more corpora."""

from __future__ import annotations

import json
import logging
import time

import torch

from iobs.config import csv_list
from iobs.utils import DTYPES


def add_arguments(parser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL_OR_DIR",
        help="smollm2-135m, a pruned checkpoint folder, a .gguf file or a hub id",
    )
    parser.add_argument(
        "--data",
        type=csv_list,
        default=["wiki-test", "news"],
        help="comma-separated corpora: wiki-test, wiki-val, wiki-calib, news, wikitext2, c4 or text FILEs "
        "(default wiki-test,news)",
    )
    parser.add_argument(
        "--seqlen", type=int, default=512, help="tokens per non-overlapping window (default 512)"
    )
    parser.add_argument(
        "--max-windows", type=int, default=None, help="score only the first N windows of each"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument(
        "--tasks",
        type=csv_list,
        default=[],
        help="comma-separated: local multiple-choice .jsonl files, or lm-eval task names (mmlu ...; online)",
    )
    parser.add_argument("--num-fewshot", type=int, default=None, help="lm-eval few-shot count (MMLU: 5)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def linear_sparsity(model: torch.nn.Module) -> float:
    """Fraction of exact zeros over the weights of every ``nn.Linear`` except the output head."""
    out_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    zeros = total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not out_head:
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return zeros / total if total else 0.0


def evaluate(
    model_name: str,
    data: list[str],
    seqlen=512,
    max_windows=None,
    device="auto",
    dtype="float32",
    progress=True,
    tasks=(),
    num_fewshot=None,
) -> dict:
    """Load ``model_name``; perplexity on each corpus of ``data``, accuracy on ``tasks`` (JSON-able)."""
    from iobs.eval.perplexity import perplexity
    from iobs.models import load_model
    from iobs.utils import environment, resolve_device

    if not data and not tasks:
        raise ValueError("data must name at least one corpus or text file, got an empty list")
    dev = resolve_device(device)
    t0 = time.perf_counter()
    model, tok = load_model(model_name, dev, DTYPES[dtype])
    load_s = time.perf_counter() - t0
    results = []
    for name in data:
        t0 = time.perf_counter()
        r = perplexity(
            model, tok, data=name, seqlen=seqlen, max_windows=max_windows, device=dev, progress=progress
        )
        r["seconds"] = time.perf_counter() - t0
        results.append(r)
    task_results = {}
    if tasks:
        from iobs.eval.tasks import evaluate_tasks

        task_results = evaluate_tasks(model, tok, list(tasks), num_fewshot, dev)
    return {
        "model": model_name,
        "tasks": task_results,
        "linear_sparsity": linear_sparsity(model),
        "dtype": dtype,
        "device": str(dev),
        "load_seconds": load_s,
        "results": results,
        "environment": environment(),
    }


def format_results(out: dict) -> str:
    from iobs.utils import markdown_table

    rows = [
        {
            "data": r["data"],
            "ppl": r["ppl"],
            "nll": r["nll"],
            "tokens scored": r["tokens"],
            "windows": r["windows"],
            "seqlen": r["seqlen"],
            "seconds": f"{r['seconds']:.1f}",
        }
        for r in out["results"]
    ]
    head = (
        f"## perplexity of {out['model']} ({out['dtype']}, {out['device']}; "
        f"zeros in linear weights {out['linear_sparsity']:.2%})\n\n"
    )
    foot = "\nnon-overlapping windows; every token after the first of each window is scored\n"
    text = head + markdown_table(rows, floatfmt=".4f") + foot if rows else ""
    local = [r for r in out.get("tasks", {}).values() if "acc_norm" in r and "items" in r]
    if local:
        text += "\n## multiple-choice accuracy\n\n" + markdown_table(
            local, ["task", "items", "acc", "acc_norm", "stderr"]
        )
    others = {k: v for k, v in out.get("tasks", {}).items() if v not in local}
    if others:
        text += "\n## lm-evaluation-harness\n\n" + json.dumps(others, indent=1, default=str) + "\n"
    return text


def run(args) -> int:
    from iobs.utils import atomic_write_json

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = evaluate(
        args.model,
        args.data,
        args.seqlen,
        args.max_windows,
        args.device,
        args.dtype,
        not args.quiet,
        args.tasks,
        args.num_fewshot,
    )
    print(format_results(out))
    if args.json:
        atomic_write_json(args.json, out)
        print(f"saved: {args.json}")
    return 0
