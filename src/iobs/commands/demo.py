"""``iobs demo``: prune the packaged SmolLM2-135M with magnitude, Wanda, SparseGPT and ALPS and compare,
then I-OBS(2) and its fine-tuning control.

One dense model, one calibration batch and one fixed set of evaluation windows per corpus; every
method prunes a fresh copy of the dense model with :func:`iobs.prune.decoder.prune_decoder` and is
scored on exactly the same windows (paired comparison). Writes ``results.json``, ``table.md`` and a
bar chart ``demo.png`` to ``--out`` (replacing earlier demo results there, each file atomically).
The defaults are cut down (16 calibration sequences, the first 16 windows of each corpus) so the demo
finishes in minutes on 2 CPU cores; ``benchmarks/llm_quality.py`` runs the full 32x512 protocol.

With ``--iobs-nsamples`` n > 0 (default 8) two rows follow, both continuing from the SparseGPT row
(= I-OBS iteration 1): I-OBS(2) takes one dense step (one Adam pass, ``--lr``, over n fresh windows of
the calibration source, the stream's batch 2) and re-projects with SparseGPT on those windows; the
control takes the same step on the same windows with the SparseGPT mask held (``--finetune-after 1``).
Iteration 2 uses fewer windows than iteration 1 (n instead of ``--nsamples``) to keep the demo short,
and neither row selects an iteration on validation data (both report iteration 2).
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
    iobs_nsamples: int = option(8, "I-OBS(2) and control rows: windows of the dense step (0 = no rows)")
    lr: float = option(5e-5, "I-OBS(2) and control rows: Adam learning rate of the dense step")
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
        check_int_range("iobs_nsamples", self.iobs_nsamples, 0, 100_000)
        if not isinstance(self.lr, (int, float)) or not 0 < self.lr < 1:
            raise ValueError(f"lr must be a number in (0, 1), got {self.lr!r}")


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


def _prune_row(dense, method: str, calib, windows, cfg: DemoConfig, dev, progress: bool):
    """Prune a copy of ``dense`` with ``method``; (its row with perplexities on the shared windows, the
    pruned model)."""
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
    row = {
        "method": method,
        "sparsity": summary["sparsity"],
        "ppl": _score(model, windows, cfg.seqlen, dev, progress),
        "prune_s": prune_s,
        "rel_error_mean": summary["rel_error_mean"],
        "layers": summary["layers"],
    }
    return row, model.to("cpu")


def _iobs_rows(sgpt, sgpt_row: dict, tok, windows, cfg: DemoConfig, dev, progress: bool) -> list[dict]:
    """I-OBS(2) and its control from the SparseGPT-pruned model ``sgpt`` (see the module docstring)."""
    from iobs.data.calibration import CalibrationStream
    from iobs.prune.decoder import prune_decoder
    from iobs.prune.dense_step import dense_step, lm_loss
    from iobs.prune.solve import LayerSolver

    ids = CalibrationStream(tok, cfg.calib, cfg.iobs_nsamples, cfg.seqlen, cfg.seed).batch(2)
    step = dict(lr=cfg.lr, epochs=1, seed=cfg.seed + 2)  # I-OBS iteration 2's dense-step seed
    rows = []
    for name in ("sparsegpt+FT(1) (control)", "I-OBS(2)"):
        model = copy.deepcopy(sgpt).to(dev)
        t0 = time.perf_counter()
        if name == "I-OBS(2)":
            dense_step("finetune", model, list(ids.split(1)), lm_loss, **step)
            solver = LayerSolver("sparsegpt", None if cfg.pattern else cfg.sparsity, cfg.pattern)
            prune_decoder(model.to("cpu"), ids, solver, progress=progress, device=dev)
        else:
            masks = {n: W.detach() != 0 for n, W in _weights(model).items()}
            dense_step("finetune", model, list(ids.split(1)), lm_loss, masks=masks, pruned_scale=0.0, **step)
        seconds = time.perf_counter() - t0
        kept = sum(int((W != 0).sum()) for W in _weights(model).values())
        total = sum(W.numel() for W in _weights(model).values())
        ppl = _score(model, windows, cfg.seqlen, dev, progress)
        rows.append({"method": name, "sparsity": 1 - kept / total, "ppl": ppl})
        rows[-1] |= {"prune_s": sgpt_row["prune_s"] + seconds, "dense_step_windows": int(ids.shape[0])}
        model.to("cpu")
    return rows


def _weights(model):
    from iobs.prune.iobs_lm import decoder_layers

    return {n: m.weight for n, m in decoder_layers(model).items()}


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
    sgpt = None
    methods = list(cfg.methods)
    if cfg.iobs_nsamples and "sparsegpt" not in methods:
        methods.append("sparsegpt")  # I-OBS iteration 1
    for method in methods:
        say(f"pruning with {method} ...")
        row, model = _prune_row(dense, method, calib, windows, cfg, dev, progress)
        rows.append(row)
        sgpt = (model, row) if method == "sparsegpt" else sgpt
    if cfg.iobs_nsamples:
        say(
            f"I-OBS(2) and its control: one dense step on {cfg.iobs_nsamples} x {cfg.seqlen} fresh tokens ..."
        )
        rows += _iobs_rows(*sgpt, tok, windows, cfg, dev, progress)
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
        "iobs": {"nsamples": cfg.iobs_nsamples, "lr": cfg.lr, "seqlen": cfg.seqlen}
        if cfg.iobs_nsamples
        else None,
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
        "data (walked with one sequence)\n\n" + _iobs_note(results.get("iobs"), cal["nsamples"])
    )
    rows = []
    for r in results["rows"]:
        row = {"method": r["method"], "sparsity": f"{r['sparsity']:.2%}"}
        for c in corpora:
            row[f"ppl {c}"] = f"{r['ppl'][c]['ppl']:.2f}"
        row["prune s"] = f"{r['prune_s']:.1f}" if r["method"] != "dense" else "-"
        rows.append(row)
    return head + markdown_table(rows)


def _iobs_note(iobs: dict | None, nsamples: int) -> str:
    if not iobs:
        return ""
    return (
        f"I-OBS(2) = the SparseGPT row + one dense step (one Adam pass, lr {iobs['lr']:g}, over "
        f"{iobs['nsamples']} fresh {iobs['seqlen']}-token windows; reduced from {nsamples} to keep the "
        "demo short) + SparseGPT re-projection on those windows; sparsegpt+FT(1) (control) = the same "
        "step on the same windows with the SparseGPT mask held. Neither selects on validation data; "
        "'prune s' includes the SparseGPT row's time.\n\n"
    )


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
