"""``iobs prune MODEL``: one-shot layer-wise pruning of a causal LM, saved as a sparse checkpoint."""

from __future__ import annotations

import logging

from iobs.config import add_arguments as add_config_arguments
from iobs.config import from_args
from iobs.prune.config import PruneConfig


def add_arguments(parser) -> None:
    """The options of :class:`PruneConfig` plus the run-only ones (printing, threads)."""
    add_config_arguments(parser, PruneConfig)
    parser.add_argument("--layers", action="store_true", help="print every layer instead of one row per kind")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is often fastest on a busy machine)",
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
    lines += _eval_lines(report) + _iobs_lines(report.get("iobs") or report.get("finetune"))
    t = report["timings"]
    times = ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in t.items())
    mem = report.get("memory", {})
    lines.append(f"time: {times}; peak RSS {mem.get('max_rss_bytes', 0) / 2**30:.2f} GiB")
    if report.get("resumed_blocks"):
        lines.append(f"resumed: {report['resumed_blocks']} blocks loaded from an interrupted run")
    if report.get("out"):
        lines.append(f"saved: {report['out']}")
    return "\n".join(lines) + "\n"


def _eval_lines(report: dict) -> list[str]:
    """One line per evaluated corpus (dense -> pruned when both were scored on the same windows)."""
    lines, dense = [], report.get("eval_dense") or {}
    for data, r in report.get("eval", {}).items():
        if data in dense:
            lines.append(f"perplexity {data}: dense {dense[data]['ppl']:.3f} -> pruned {r['ppl']:.3f}")
            continue
        lines.append(
            f"perplexity {data}: {r['ppl']:.3f} "
            f"({r['tokens']} tokens, {r['windows']} windows of {r['seqlen']})"
        )
    return lines


def _iobs_lines(loop: dict | None) -> list[str]:
    """One line per I-OBS (or control) iteration, the best starred, and why the loop stopped early."""
    lines = []
    for h in (loop or {}).get("history", []):
        ppl = ", ".join(f"{k} {v:.3f}" for k, v in h["metrics"].items())
        star = " ★" if h["iteration"] == loop["best_iteration"] else ""
        changed = f", mask changed {h['mask_changed']:.3%}" if h.get("mask_changed") is not None else ""
        lines.append(f"iteration {h['iteration']} ({h.get('label', 'dense')}): {ppl}{changed}{star}")
    if loop and loop.get("stopped"):
        lines.append(f"stopped early: {loop['stopped']}")
    return lines


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        from iobs._validate import check_int_range

        torch.set_num_threads(check_int_range("threads", threads, 1, 4096))


def worker(config: dict, threads: int | None, progress: bool) -> dict | None:
    """One process of ``iobs prune --nproc N``: the run as rank RANK; returns the report on rank 0."""
    from iobs.config import from_dict
    from iobs.prune import distributed
    from iobs.prune.api import prune

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _set_threads(threads)
    report = prune(from_dict(PruneConfig, config), progress=progress)
    main = distributed.is_main()
    distributed.shutdown()
    return report if main else None


def run(args) -> int:
    from iobs.prune import distributed
    from iobs.prune.api import prune

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = from_args(PruneConfig, args)
    if config.nproc > 1 and distributed.env_world() == 1:  # launch the workers (torchrun starts its own)
        from iobs.config import to_dict

        reports = distributed.launch(worker, config.nproc, (to_dict(config), args.threads, not args.quiet))
        report = reports[0]
    else:
        _set_threads(args.threads)
        report = prune(config, progress=not args.quiet)
    if distributed.is_main():  # under torchrun: rank 0 prints
        print(format_report(report, per_layer=args.layers))
    distributed.shutdown()
    return 0
