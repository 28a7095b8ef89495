"""``iobs prune MODEL``: one-shot layer-wise pruning of a causal LM, saved as a sparse checkpoint."""

from __future__ import annotations

import logging

from iobs.prune.config import DENSE_STEPS, DTYPES, LAYER_SOLVERS, METHODS, SEQUENTIAL, PruneConfig


def _patterns(text: str) -> list[str]:
    return [p for p in text.split(",") if p]


def add_arguments(parser) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="smollm2-135m, tiny-llama|tiny-opt|tiny-gpt2|tiny-qwen2|tiny-phi, a folder or a hub id",
    )
    parser.add_argument("--method", choices=METHODS, default="sparsegpt")
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--sparsity", type=float, default=None, help="fraction of weights pruned (default 0.5)"
    )
    target.add_argument("--pattern", default=None, help="N:M semi-structured pattern, e.g. 2:4")
    parser.add_argument("--per-row", action="store_true", help="apply --sparsity in every row")
    parser.add_argument(
        "--calib", default="wiki", help="calibration source: wiki, news, a text file, or random"
    )
    parser.add_argument("--nsamples", type=int, default=32, help="calibration sequences")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per calibration sequence")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blocksize", type=int, default=128, help="SparseGPT column block size")
    parser.add_argument("--percdamp", type=float, default=0.01, help="damping as a fraction of mean(diag H)")
    parser.add_argument(
        "--sequential",
        choices=SEQUENTIAL,
        default="block",
        help="block: all layers of a block from one pass; true: re-run after each group",
    )
    parser.add_argument("--include", type=_patterns, default=None, help="comma-separated globs or re:REGEX")
    parser.add_argument("--exclude", type=_patterns, default=None, help="comma-separated globs or re:REGEX")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--out", default=None, help="output folder for the pruned checkpoint and report.json")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    parser.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="ignore finished blocks of an interrupted run of the same configuration",
    )
    parser.add_argument("--eval", type=_patterns, default=[], help="comma-separated: wiki-test, news, FILE")
    parser.add_argument("--eval-seqlen", type=int, default=None, help="perplexity window (default --seqlen)")
    parser.add_argument("--eval-max-windows", type=int, default=None)
    parser.add_argument(
        "--eval-dense", action="store_true", help="also evaluate the dense model (same windows)"
    )
    parser.add_argument("--layers", action="store_true", help="print every layer instead of one row per kind")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    loop = parser.add_argument_group(
        "I-OBS (--method iobs); defaults = the best setting of the Table 2 search"
    )
    loop.add_argument("--iterations", type=int, default=3, help="outer iterations (1 = one-shot)")
    loop.add_argument("--dense-step", choices=DENSE_STEPS, default="finetune")
    loop.add_argument(
        "--lr", type=float, default=5e-5, help="dense-step learning rate (Adam / Newton step size)"
    )
    loop.add_argument("--damping", type=float, default=0.01, help="newton: λ as a fraction of mean(diag H)")
    loop.add_argument("--epochs", type=int, default=1, help="finetune: passes over the calibration batch")
    loop.add_argument("--layer-solver", choices=LAYER_SOLVERS, default="sparsegpt")
    loop.add_argument(
        "--validation", type=_patterns, default=["wiki-val"], help="corpora to select the best on"
    )
    loop.add_argument("--val-max-windows", type=int, default=16, help="windows per validation corpus")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is often fastest on a busy machine)",
    )


def config_from_args(args) -> PruneConfig:
    sparsity = args.sparsity if args.sparsity is not None or args.pattern is not None else 0.5
    return PruneConfig(
        model=args.model,
        method=args.method,
        sparsity=sparsity,
        pattern=args.pattern,
        calib=args.calib,
        nsamples=args.nsamples,
        seqlen=args.seqlen,
        seed=args.seed,
        blocksize=args.blocksize,
        percdamp=args.percdamp,
        per_row=args.per_row,
        sequential=args.sequential,
        include=args.include,
        exclude=args.exclude,
        device=args.device,
        dtype=args.dtype,
        out=args.out,
        overwrite=args.overwrite,
        resume=args.resume,
        eval=args.eval,
        eval_seqlen=args.eval_seqlen,
        eval_max_windows=args.eval_max_windows,
        eval_dense=args.eval_dense,
        iterations=args.iterations,
        dense_step=args.dense_step,
        lr=args.lr,
        damping=args.damping,
        epochs=args.epochs,
        layer_solver=args.layer_solver,
        validation=args.validation,
        val_max_windows=args.val_max_windows,
    )


def format_report(report: dict, per_layer: bool = False) -> str:
    """The summary printed at the end of ``iobs prune``: per-layer (kind) table, totals, perplexity, times."""
    from iobs.prune.report import by_kind
    from iobs.utils import markdown_table

    cfg = report["config"]
    target = cfg["pattern"] or f"{100 * cfg['sparsity']:g}%"
    lines = [
        f"## {cfg['model']}: {cfg['method']} {target} "
        f"({report['calibration']['nsamples']}x{report['calibration']['seqlen']} {cfg['calib']} tokens)",
        "",
    ]
    if per_layer:
        rows = [
            {
                "layer": r["name"],
                "shape": "x".join(map(str, r["shape"])),
                "sparsity": r["sparsity"],
                "rel_error": r["rel_error"],
                "error": r["error"],
                "solve_s": r["seconds"],
            }
            for r in report["layers"]
        ]
    else:
        rows = by_kind(report["layers"])
    lines.append(markdown_table(rows))
    s = report["summary"]
    lines.append(
        f"layers {s['layers']}, weights {s['params']:,}, pruned {s['sparsity']:.2%} "
        f"(exact zeros {s['zeros']:.2%}), mean relative error {s['rel_error_mean']:.4g}"
    )
    dense = report.get("eval_dense") or {}
    for data, r in report.get("eval", {}).items():
        if data in dense:
            lines.append(f"perplexity {data}: dense {dense[data]['ppl']:.3f} -> pruned {r['ppl']:.3f}")
            continue
        lines.append(
            f"perplexity {data}: {r['ppl']:.3f} "
            f"({r['tokens']} tokens, {r['windows']} windows of {r['seqlen']})"
        )
    if report.get("iobs"):
        it = report["iobs"]
        for h in it["history"]:
            ppl = ", ".join(f"{k} {v:.3f}" for k, v in h["metrics"].items())
            star = " ★" if h["iteration"] == it["best_iteration"] else ""
            lines.append(
                f"I-OBS iteration {h['iteration']}{' (dense)' if h['iteration'] == 0 else ''}: {ppl}{star}"
            )
        if it.get("stopped"):
            lines.append(f"stopped early: {it['stopped']}")
    t = report["timings"]
    times = ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in t.items())
    mem = report.get("memory", {})
    lines.append(f"time: {times}; peak RSS {mem.get('max_rss_bytes', 0) / 2**30:.2f} GiB")
    if report.get("resumed_blocks"):
        lines.append(f"resumed: {report['resumed_blocks']} blocks loaded from an interrupted run")
    if report.get("out"):
        lines.append(f"saved: {report['out']}")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    from iobs.prune.api import prune

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    if args.threads is not None:
        import torch

        from iobs._validate import check_int_range

        torch.set_num_threads(check_int_range("threads", args.threads, 1, 4096))
    report = prune(config, progress=not args.quiet)
    print(format_report(report, per_layer=args.layers))
    return 0
