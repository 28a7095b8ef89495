"""Table 2 / Figure 2 analog: SparseGPT vs I-OBS on the packaged SmolLM2-135M, 50 % and 2:4.

For every sparsity pattern and every dense-step setting tried, one I-OBS run of T iterations (iteration
1 = one-shot SparseGPT) records perplexity on wiki-val (selection), wiki-test and news (report) after
each iteration; all corpora are scored on the same capped windows in every row. Rows of the table:
Dense, SparseGPT (= iteration 1), I-OBS(T≤3) = the best of iterations 1..3 by wiki-val, for the
setting chosen on wiki-val; every setting tried is listed too. Finished runs are saved one file each
and skipped on a rerun, and each run resumes from its last finished iteration.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from iobs.utils import atomic_write_json, atomic_write_text, environment, markdown_table

log = logging.getLogger(__name__)

CORPORA = ("wiki-val", "wiki-test", "news")
SELECT = "ppl:wiki-val"
# dense-step settings tried by default ("name:key=value,...")
DEFAULT_SETTINGS = ("finetune:lr=5e-5", "newton:lr=0.01,damping=0.01")


def parse_setting(text: str) -> dict:
    """``"finetune:lr=5e-5,epochs=1"`` -> {"dense_step": "finetune", "lr": 5e-5, "epochs": 1}."""
    from iobs.prune.dense_step import DENSE_STEPS

    name, _, rest = text.partition(":")
    if name not in DENSE_STEPS:
        raise ValueError(f"setting {text!r}: the dense step must be one of {', '.join(DENSE_STEPS)}")
    out: dict = {"dense_step": name}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in ("lr", "damping", "epochs"):
            raise ValueError(f"setting {text!r}: unknown option {key!r}; allowed: lr, damping, epochs")
        out[key] = int(value) if key == "epochs" else float(value)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m", help="model name or path (default: smollm2-135m)")
    p.add_argument("--patterns", default="0.5,2:4", help="comma list of sparsities and N:M patterns")
    p.add_argument(
        "--settings",
        nargs="+",
        default=list(DEFAULT_SETTINGS),
        help="dense-step settings to try, e.g. finetune:lr=5e-5 newton:lr=0.01,damping=0.01",
    )
    p.add_argument("--iterations", type=int, default=3, help="I-OBS iterations per run (Figure 2: 8)")
    p.add_argument("--nsamples", type=int, default=16, help="calibration windows per iteration")
    p.add_argument("--seqlen", type=int, default=512, help="calibration and evaluation window length")
    p.add_argument(
        "--windows", type=int, default=24, help="evaluation windows per corpus (same in every row)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="tiny settings for a smoke run (minutes)")
    p.add_argument("--out", default="runs/table2", help="output folder (reruns resume)")


def _pattern_kwargs(p: str) -> dict:
    return {"sparsity": None, "pattern": p} if ":" in p else {"sparsity": float(p), "pattern": None}


_DENSE: dict[str, dict] = {}  # dense-model history entry per evaluation setup (same in every run)


def _report(name: str):
    def show(entry: dict) -> None:
        ppl = "  ".join(f"{k.removeprefix('ppl:')} {v:.2f}" for k, v in entry["metrics"].items())
        print(
            f"[{name}] {entry.get('label', entry['iteration'])}: {ppl}  ({entry['seconds']:.0f} s)",
            flush=True,
        )

    return show


def run_one(args, pattern: str, setting: dict, out: Path) -> dict:
    """One I-OBS run; its history (all corpora per iteration) is saved to ``out/runs/<name>.json``."""
    from iobs.prune.api import load
    from iobs.prune.iobs_lm import iobs_prune_lm
    from iobs.prune.outer_loop import plot_history

    name = f"{pattern.replace(':', 'of')}_" + "_".join(f"{k}-{v}" for k, v in setting.items())
    path = out / "runs" / f"{name}.json"
    if path.exists():
        done = json.loads(path.read_text())
        if done["iterations"] >= args.iterations:
            return done
    model, tok = load(args.model, torch.float32)
    t0 = time.perf_counter()
    # what determines the weights (the iteration count is left out so a rerun can extend a run)
    key = json.dumps(
        [{k: getattr(args, k) for k in ("model", "nsamples", "seqlen", "windows", "seed")}, name]
    )
    dense_key = json.dumps([args.model, args.seqlen, args.windows])
    step = {k: v for k, v in setting.items()}
    res = iobs_prune_lm(
        model,
        tok,
        **_pattern_kwargs(pattern),
        iterations=args.iterations,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        seed=args.seed,
        validation=list(CORPORA),
        select=SELECT,
        val_max_windows=args.windows,
        device=args.device,
        progress=True,
        state_dir=out / "state" / name,
        state_key=key,
        on_iteration=_report(name),
        evaluate_dense=dense_key not in _DENSE,
        **step,
    )
    if dense_key in _DENSE and res.history[0]["iteration"] != 0:
        res.history.insert(0, _DENSE[dense_key])
    _DENSE.setdefault(dense_key, res.history[0])
    plot_history(
        res,
        out / f"history_{name}.png",
        metrics=[f"ppl:{c}" for c in CORPORA],
        title=f"I-OBS on {args.model}, {pattern}, {setting['dense_step']} (best by wiki-val)",
    )
    run = {
        "pattern": pattern,
        "setting": setting,
        "name": name,
        "iterations": args.iterations,
        "seconds": time.perf_counter() - t0,
        **res.to_dict(),
    }
    atomic_write_json(path, run)
    return run


def summarize(runs: list[dict], max_t: int = 3) -> tuple[list[dict], list[dict]]:
    """(main rows, all-settings rows). I-OBS(T) = best iteration ≤ max_t by wiki-val, reported on test."""
    main, tried = [], []
    by_pattern: dict[str, list[dict]] = {}
    for r in runs:
        by_pattern.setdefault(r["pattern"], []).append(r)
    for pattern, rs in by_pattern.items():
        dense = next(h for h in rs[0]["history"] if h["iteration"] == 0)["metrics"]
        one_shot = next(h for h in rs[0]["history"] if h["iteration"] == 1)["metrics"]
        best_rows = []
        for r in rs:
            its = [h for h in r["history"] if 1 <= h["iteration"] <= max_t and h.get("finite", True)]
            b = min(its, key=lambda h: h["metrics"][SELECT])
            row = {
                "pattern": pattern,
                "setting": _label(r["setting"]),
                "best_iter": b["iteration"],
                **{c: b["metrics"][f"ppl:{c}"] for c in CORPORA},
            }
            tried.append(row)
            best_rows.append(row)
        chosen = min(best_rows, key=lambda row: row["wiki-val"])
        main.append({"pattern": pattern, "method": "Dense", **{c: dense[f"ppl:{c}"] for c in CORPORA}})
        main.append(
            {
                "pattern": pattern,
                "method": "SparseGPT (iteration 1)",
                **{c: one_shot[f"ppl:{c}"] for c in CORPORA},
            }
        )
        gain = {c: 100 * (1 - chosen[c] / one_shot[f"ppl:{c}"]) for c in ("wiki-test", "news")}
        main.append(
            {
                "pattern": pattern,
                "method": f"I-OBS({max_t}) [{chosen['setting']}, best it. {chosen['best_iter']}]",
                **{c: chosen[c] for c in CORPORA},
                "gain wiki-test %": gain["wiki-test"],
                "gain news %": gain["news"],
                "target ≥3 %": "PASS" if min(gain.values()) >= 3 else "MISS",
            }
        )
    return main, tried


def _config(args) -> dict:
    return {k: v for k, v in vars(args).items() if not k.startswith("_")}


def _label(setting: dict) -> str:
    return setting["dense_step"] + "".join(f" {k}={v}" for k, v in setting.items() if k != "dense_step")


def run(args) -> int:
    if args.quick:
        args.nsamples, args.seqlen, args.windows = 2, 128, 2
        args.iterations = min(args.iterations, 2)
    patterns = [p.strip() for p in args.patterns.split(",") if p.strip()]
    for p in patterns:
        _pattern_kwargs(p)  # validated by the walk; fail early on garbage like "half"
    settings = [parse_setting(s) for s in args.settings]
    out = Path(args.out)
    t0 = time.perf_counter()
    runs = [run_one(args, p, s, out) for p in patterns for s in settings]
    main, tried = summarize(runs, max_t=min(3, args.iterations))
    header = (
        f"# Table 2 analog: {args.model}, calibration {args.nsamples}×{args.seqlen} wiki tokens per "
        f"iteration, perplexity on {args.windows} windows of {args.seqlen} tokens per corpus "
        f"(same windows in every row); selection on wiki-val, report on wiki-test and news\n\n"
    )
    cols = ["pattern", "method", *CORPORA, "gain wiki-test %", "gain news %", "target ≥3 %"]
    text = (
        header
        + markdown_table(main, cols)
        + "\n## Every dense-step setting tried\n\n"
        + markdown_table(tried)
    )
    atomic_write_text(out / "table2.md", text)
    atomic_write_json(
        out / "results.json",
        {
            "config": _config(args) | {"settings": settings},
            "environment": environment(),
            "seconds": time.perf_counter() - t0,
            "main": main,
            "tried": tried,
            "runs": runs,
        },
    )
    print(text)
    return 0
