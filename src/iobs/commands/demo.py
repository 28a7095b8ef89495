"""``iobs demo``: prune the packaged SmolLM2-135M with magnitude, Wanda, SparseGPT and ALPS and compare.

One dense model, one calibration batch and one fixed set of evaluation windows per corpus; every
method prunes a fresh copy of the dense model with :func:`iobs.prune.decoder.prune_decoder` and is
scored on exactly the same windows (paired comparison). Writes ``results.json``, ``table.md`` and a
bar chart ``demo.png`` to ``--out`` (replacing earlier demo results there, each file atomically).
The defaults are cut down (16 calibration sequences, the first 16 windows of each corpus) so the demo
finishes in minutes on 2 CPU cores; ``benchmarks/llm_quality.py`` runs the full 32x512 protocol.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from iobs.config import add_arguments as add_config_arguments
from iobs.config import csv_list, from_args, option

DEFAULT_METHODS = ("magnitude", "wanda", "sparsegpt", "alps")


@dataclass
class DemoConfig:
    """What ``iobs demo`` runs: every method of ``methods`` on a fresh copy of ``model``."""

    model: str = option("smollm2-135m", "model name or folder")
    methods: list[str] = option(
        default_factory=lambda: list(DEFAULT_METHODS), help="comma-separated", parse=csv_list
    )
    sparsity: float | None = option(None, "fraction pruned (default 0.5)", exclusive="target", parse=float)
    pattern: str | None = option(None, "N:M semi-structured pattern instead, e.g. 2:4", exclusive="target")
    calib: str = option("wiki", "calibration text (default wiki = wiki-calib)")
    nsamples: int = option(16, "calibration sequences")
    seqlen: int = option(512, "tokens per calibration sequence and eval window")
    seed: int = option(0)
    eval: list[str] = option(
        default_factory=lambda: ["wiki-test", "news"], help="comma-separated corpora", parse=csv_list
    )
    max_windows: int = option(16, "first N windows of each corpus (0 = all)")
    device: str = option("auto", "auto, cpu, cuda ...")
    out: str = option("runs/demo", "folder for results.json, table.md, demo.png")

    def __post_init__(self):
        from iobs._validate import check_int_range, check_sparsity, parse_nm
        from iobs.obs.layer import METHODS

        if not self.methods:
            raise ValueError("methods must name at least one method, got none")
        for m in self.methods:
            if m not in METHODS:
                raise ValueError(f"methods must be among {', '.join(METHODS)}, got {m!r}")
        if self.pattern is not None:
            parse_nm(self.pattern, "pattern")
        else:
            self.sparsity = check_sparsity(0.5 if self.sparsity is None else self.sparsity)
        check_int_range("nsamples", self.nsamples, 1, 100_000)
        check_int_range("seqlen", self.seqlen, 2, 1_000_000)
        check_int_range("max_windows", self.max_windows, 0, 10_000_000)


def add_arguments(parser) -> None:
    add_config_arguments(parser, DemoConfig)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _eval_windows(tok, corpora: list[str], seqlen: int, max_windows: int | None) -> dict[str, torch.Tensor]:
    """The fixed evaluation windows of every corpus (computed once, shared by all methods)."""
    from iobs.data.calibration import encode
    from iobs.data.text import load_text
    from iobs.eval.perplexity import eval_windows

    return {name: eval_windows(encode(tok, load_text(name)), seqlen, max_windows) for name in corpora}


def _score(model, windows: dict[str, torch.Tensor], seqlen: int, device, progress: bool) -> dict[str, dict]:
    from iobs.eval.perplexity import perplexity

    model.to(device)
    out = {}
    for name, w in windows.items():
        out[name] = perplexity(model, data=w, seqlen=seqlen, device=device, progress=progress, label=name)
    return out


def _prune_row(dense, method: str, calib, windows, cfg: DemoConfig, dev, progress: bool) -> dict:
    """Prune a copy of ``dense`` with ``method``; its perplexities on the shared windows."""
    from iobs.prune.decoder import prune_decoder
    from iobs.prune.report import summarize
    from iobs.prune.solve import LayerSolver

    model = copy.deepcopy(dense)
    t0 = time.perf_counter()
    # magnitude masks ignore the data: walking with one calibration sequence gives the same model
    ids = calib[:1] if method == "magnitude" else calib
    solver = LayerSolver(method, None if cfg.pattern else cfg.sparsity, cfg.pattern)
    records = prune_decoder(model, ids, solver, progress=progress, device=dev)
    prune_s = time.perf_counter() - t0
    summary = summarize(records)
    return {
        "method": method,
        "sparsity": summary["sparsity"],
        "ppl": _score(model, windows, cfg.seqlen, dev, progress),
        "prune_s": prune_s,
        "rel_error_mean": summary["rel_error_mean"],
        "layers": summary["layers"],
    }


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    """The whole demo; returns the results dict (also written to ``cfg.out``)."""
    from iobs.data.calibration import calibration_batch
    from iobs.models import load_model
    from iobs.utils import environment, resolve_device

    dev = resolve_device(cfg.device)
    say = (lambda *a: print(*a, flush=True)) if progress else (lambda *a: None)
    t0 = time.perf_counter()
    say(f"loading {cfg.model} ...")
    dense, tok = load_model(cfg.model, "cpu", torch.float32)
    load_s = time.perf_counter() - t0
    say(f"calibration: {cfg.nsamples} x {cfg.seqlen} tokens from {cfg.calib} (seed {cfg.seed})")
    calib = calibration_batch(tok, cfg.calib, cfg.nsamples, cfg.seqlen, cfg.seed)
    windows = _eval_windows(tok, cfg.eval, cfg.seqlen, cfg.max_windows or None)
    say("evaluation windows: " + ", ".join(f"{k} {v.shape[0]}x{cfg.seqlen}" for k, v in windows.items()))
    say("evaluating dense ...")
    ppl = _score(dense, windows, cfg.seqlen, dev, progress)
    rows = [{"method": "dense", "sparsity": 0.0, "ppl": ppl, "prune_s": 0.0}]
    dense.to("cpu")
    for method in cfg.methods:
        say(f"pruning with {method} ...")
        rows.append(_prune_row(dense, method, calib, windows, cfg, dev, progress))
    results = {
        "model": cfg.model,
        "target": cfg.pattern or f"{cfg.sparsity:g}",
        "calibration": {
            "source": cfg.calib,
            "nsamples": cfg.nsamples,
            "seqlen": cfg.seqlen,
            "seed": cfg.seed,
        },
        "eval": {
            k: {
                "windows": int(v.shape[0]),
                "seqlen": cfg.seqlen,
                "tokens": int(v.shape[0]) * (cfg.seqlen - 1),
            }
            for k, v in windows.items()
        },
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "load_seconds": load_s,
        "rows": rows,
        "environment": environment(),
    }
    write_outputs(results, Path(cfg.out))
    return results


def format_table(results: dict) -> str:
    from iobs.utils import markdown_table

    corpora = list(results["eval"])
    cal = results["calibration"]
    target = _target_label(results["target"])
    win = "; ".join(
        f"{k}: {v['windows']} windows x {v['seqlen']} ({v['tokens']} tokens scored)"
        for k, v in results["eval"].items()
    )
    head = (
        f"## {results['model']}, {target}\n\n"
        f"calibration {cal['nsamples']} x {cal['seqlen']} tokens from {cal['source']} (seed {cal['seed']}); "
        f"perplexity on the first non-overlapping windows, the same for every method: {win}; "
        f"device {results['device']}, {results.get('threads', '?')} threads; magnitude needs no calibration "
        "data (walked with one sequence)\n\n"
    )
    rows = []
    for r in results["rows"]:
        row = {"method": r["method"], "sparsity": f"{r['sparsity']:.2%}"}
        for c in corpora:
            row[f"ppl {c}"] = f"{r['ppl'][c]['ppl']:.2f}"
        row["prune s"] = f"{r['prune_s']:.1f}" if r["method"] != "dense" else "-"
        rows.append(row)
    return head + markdown_table(rows)


def _target_label(target: str) -> str:
    return f"{float(target):.0%} unstructured" if ":" not in target else f"{target} semi-structured"


def write_outputs(results: dict, out: Path) -> None:
    from iobs.utils import atomic_write_json, atomic_write_text, save_figure

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "table.md", format_table(results))
    save_figure(_chart(results), out / "demo.png", dpi="figure")


def _chart(results: dict):
    """Grouped bars: perplexity per method and corpus (log scale), values written on the bars."""
    from iobs.utils import subplots

    corpora = list(results["eval"])
    rows = results["rows"]
    fig, ax = subplots(figsize=(7, 4), dpi=120)
    width = 0.8 / len(corpora)
    for j, c in enumerate(corpora):
        xs = [i + (j - (len(corpora) - 1) / 2) * width for i in range(len(rows))]
        vals = [r["ppl"][c]["ppl"] for r in rows]
        bars = ax.bar(xs, vals, width, label=c)
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.1f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(rows)), [r["method"] for r in rows])
    allv = [r["ppl"][c]["ppl"] for r in rows for c in corpora]
    if max(allv) > 3 * min(allv):  # magnitude pruning is often 10x worse: log scale keeps the rest visible
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("perplexity (log scale, lower is better)")
    else:
        ax.set_ylabel("perplexity (lower is better)")
    cal = results["calibration"]
    ax.set_title(
        f"{results['model']} pruned to {_target_label(results['target'])} "
        f"({cal['nsamples']}x{cal['seqlen']} calibration)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run(args) -> int:
    from iobs._validate import check_int_range

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = from_args(DemoConfig, args)
    if args.threads:
        torch.set_num_threads(check_int_range("threads", args.threads, 1, 1024))
    t0 = time.perf_counter()
    results = run_demo(cfg, progress=not args.quiet)
    print()
    print(format_table(results))
    print(
        f"total {time.perf_counter() - t0:.0f}s; wrote {Path(args.out) / 'results.json'}, table.md, demo.png"
    )
    return 0
