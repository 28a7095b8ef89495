"""Figure 2 analog: perplexity against I-OBS iteration on SmolLM2-135M, best iteration starred.

Runs (or extends) the Table 2 runs of the chosen dense-step setting to ``--iterations`` (default 8) in the
same output folder, so the first iterations are shared with Table 2, and draws one row per pattern.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from iobs.reproduce import table2
from iobs.utils import atomic_write_bytes, atomic_write_json, atomic_write_text, markdown_table


def add_arguments(p: argparse.ArgumentParser) -> None:
    table2.add_arguments(p)
    p.set_defaults(iterations=8, settings=[table2.DEFAULT_SETTINGS[0]], out="runs/table2")


def plot(runs: list[dict], path: Path, model: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), len(table2.CORPORA), figsize=(12, 3.3 * len(runs)), squeeze=False)
    for row, r in zip(axes, runs):
        its = [h for h in r["history"] if h["iteration"] >= 1]
        dense = next((h for h in r["history"] if h["iteration"] == 0), None)
        best = next(h for h in its if h["iteration"] == r["best_iteration"])
        for ax, c in zip(row, table2.CORPORA):
            key = f"ppl:{c}"
            ax.plot([h["iteration"] for h in its], [h["metrics"][key] for h in its], "o-", label="I-OBS")
            if dense is not None:
                ax.axhline(dense["metrics"][key], ls="--", c="gray", label="dense")
            ax.plot(
                [best["iteration"]], [best["metrics"][key]], "*", ms=16, c="tab:red", label="best (wiki-val)"
            )
            ax.set_title(f"{r['pattern']} — {c}" + (" (selection)" if c == "wiki-val" else ""))
            ax.set_xlabel("iteration (1 = SparseGPT)")
            ax.set_ylabel("perplexity")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.suptitle(f"I-OBS iterations on {model}: {table2._label(runs[0]['setting'])}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def run(args) -> int:
    if args.quick:
        args.nsamples, args.seqlen, args.windows = 2, 128, 2
        args.iterations = min(args.iterations, 3)
    patterns = [p.strip() for p in args.patterns.split(",") if p.strip()]
    setting = table2.parse_setting(args.settings[0])
    out = Path(args.out)
    runs = [table2.run_one(args, p, setting, out) for p in patterns]
    plot(runs, out / "figure2.png", args.model)
    rows = [
        {
            "pattern": r["pattern"],
            "iteration": h["iteration"],
            **{c: h["metrics"][f"ppl:{c}"] for c in table2.CORPORA},
            "best": "★" if h["iteration"] == r["best_iteration"] else "",
        }
        for r in runs
        for h in r["history"]
    ]
    atomic_write_json(out / "figure2.json", {"setting": setting, "rows": rows})
    text = markdown_table(rows)
    atomic_write_text(out / "figure2.md", f"# Figure 2 analog ({table2._label(setting)})\n\n" + text)
    print(text)
    return 0
