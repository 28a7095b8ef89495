"""Figure 2 analog: perplexity against I-OBS iteration on SmolLM2-135M, best iteration starred.

Runs (or extends) the Table 2 runs of the chosen dense-step setting to ``--iterations`` (default 8) in the
same output folder, so the first iterations are shared with Table 2, and draws one row per pattern.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import ClassVar

from iobs.config import option
from iobs.reproduce import table2
from iobs.reproduce.output import run_target
from iobs.utils import markdown_table, subplots


@dataclass
class Figure2Config(table2.Table2Config):
    """Table 2's config with Figure 2's defaults: 8 iterations of the first default setting."""

    QUICK_ITERATIONS: ClassVar[int] = 3

    settings: list[str] = option(default_factory=lambda: [table2.DEFAULT_SETTINGS[0]], cli=False)
    iterations: int = option(8, "I-OBS iterations per run")


def add_arguments(p: argparse.ArgumentParser) -> None:
    table2.add_arguments(p, Figure2Config)


def plot(runs: list[dict], model: str):
    """One row per pattern, one panel per corpus: perplexity per iteration, dense dashed, best starred."""
    fig, axes = subplots(len(runs), len(table2.CORPORA), figsize=(12, 3.3 * len(runs)), squeeze=False)
    for row, r in zip(axes, runs):
        its = [h for h in r["history"] if h["iteration"] >= 1]
        dense = next((h for h in r["history"] if h["iteration"] == 0), None)
        best = next(h for h in its if h["iteration"] == r["best_iteration"])
        for ax, c in zip(row, table2.CORPORA):
            key = f"ppl:{c}"
            ax.plot([h["iteration"] for h in its], [h["metrics"][key] for h in its], "o-", label="I-OBS")
            if "control" in r:  # round k of the control at the iteration whose dense step it mirrors
                cits = [h for h in r["control"]["history"] if h["iteration"] >= 1]
                xs, ys = [h["iteration"] for h in cits], [h["metrics"][key] for h in cits]
                ax.plot(xs, ys, "s--", label="SparseGPT + masked fine-tuning (control)")
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
    return fig


def experiment(cfg: Figure2Config) -> list[dict]:
    """The Table 2 run of the first setting per pattern, run or extended to ``cfg.iterations``."""
    setting, dense = table2.parse_setting(cfg.settings[0]), {}
    return [table2.run_one(cfg, p, setting, dense) for p in cfg.pattern_list()]


def render(runs: list[dict], cfg: Figure2Config, seconds: float, env: dict) -> dict:
    """The history plots, figure2.png and the per-iteration rows as figure2.json and figure2.md."""
    setting = table2.parse_setting(cfg.settings[0])
    rows = [_row(r, h) for r in runs for h in r["history"]]
    cols = list(dict.fromkeys(k for row in rows for k in row))
    rows = [{c: row.get(c, "") for c in cols} for row in rows]
    text = f"# Figure 2 analog ({table2._label(setting)})\n\n" + markdown_table(rows)
    text += (
        "\ncontrol = SparseGPT one-shot, then the same dense steps on the same windows with the one-shot "
        "mask held (round t − 1 at iteration t); ÷ control = I-OBS over the control at the same iteration\n"
    )
    return table2.history_plots(runs, cfg.model) | {
        "figure2.png": plot(runs, cfg.model),
        "figure2.json": {"setting": setting, "rows": rows},
        "figure2.md": text,
    }


def _row(r: dict, h: dict) -> dict:
    """One iteration of run ``r``: perplexities, the control's at the same iteration and the ratios."""
    row = {"pattern": r["pattern"], "iteration": h["iteration"], **table2.ppl(h["metrics"])}
    c = next((x for x in r.get("control", {}).get("history", []) if x["iteration"] == h["iteration"]), None)
    if c is not None and h["iteration"] >= 2:
        for k in ("wiki-test", "news"):
            row[f"control {k}"] = c["metrics"][f"ppl:{k}"]
            row[f"÷ control {k}"] = row[k] / c["metrics"][f"ppl:{k}"]
    if h.get("mask_changed") is not None:
        row["mask changed"] = h["mask_changed"]
    return row | {"best": "★" if h["iteration"] == r["best_iteration"] else ""}


def run(args) -> int:
    files = run_target(table2.config_from_args(args, Figure2Config), experiment, render)
    print(markdown_table(files["figure2.json"]["rows"]))
    return 0
