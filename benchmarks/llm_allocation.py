"""End-to-end perplexity of SmolLM2-135M with layer-wise sparsity allocation (uniform vs OWL vs error-driven).

Protocol (paired, one process): --nsamples × 512 calibration ids from the wiki calibration split (seed 0),
the same for every variant; the decoder walk of ``iobs prune`` (block-sequential, pruned-upstream
inputs); perplexity on the first --max-windows non-overlapping 512-token windows of wiki-val (where the
allocation's settings are chosen), wiki-test and news (where they are reported). The dense pre-pass
statistics are measured once per process and shared by the variants: OWL's outlier densities for every
M tried, SparseGPT's layer errors on a sparsity grid (the error-driven allocation's curves). Each
variant's prune seconds = its walk + the pre-pass it needs (OWL: the density pass; error: the curve pass).
Every global budget is exact: floor(s · Σ n) pruned weights over all decoder layers.

A variant is SOLVER/ALLOCATION[:params], e.g. ``sparsegpt/uniform``, ``alps/owl:0.08:5`` (λ, M),
``sparsegpt/error:relative`` (alloc_error; alloc_step 0.1, alloc_points 2). Records go to --records (JSON
lines); a rerun skips what is there (resumable).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/llm_allocation.py --targets 0.7 \
        --variants sparsegpt/uniform,sparsegpt/owl:0.08:5,sparsegpt/error:relative \
        --records benchmarks/results/llm_allocation.jsonl --out benchmarks/results/llm_allocation.md
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_common import ROOT, header, set_threads  # noqa: E402

CORPORA = ("wiki-val", "wiki-test", "news")


def parse_variant(v: str) -> tuple[str, str, dict]:
    """'alps/owl:0.08:5' -> ('alps', 'owl', {'owl_lambda': 0.08, 'owl_m': 5.0})."""
    solver, _, rest = v.partition("/")
    alloc, *args = rest.split(":")
    if alloc == "owl":
        lam, M = (float(a) for a in args) if args else (0.08, 5.0)
        return solver, alloc, {"owl_lambda": lam, "owl_m": M}
    if alloc == "error":
        norm, step = (args + ["relative", "0.1"][len(args) :])[:2]
        return solver, alloc, {"alloc_error": norm, "alloc_step": float(step), "alloc_curves": "sparsegpt"}
    if alloc == "uniform" and not args:
        return solver, alloc, {}
    raise ValueError(f"variant must be SOLVER/uniform, SOLVER/owl:λ:M or SOLVER/error:NORM, got {v!r}")


def curve_grid(todo: list[tuple[float, str]]) -> list[float]:
    """Every sparsity the error variants of ``todo`` read a layer error at (one shared curve pass)."""
    from iobs.prune.allocation import error_grid

    g = set()
    for t, v in todo:
        _, alloc, p = parse_variant(v)
        if alloc == "error":
            g |= set(error_grid(t, p["alloc_step"], 2))
    return sorted(g)


class Bench:
    """The dense model, its calibration ids and the shared pre-pass statistics of one process."""

    def __init__(self, nsamples: int, max_windows: int, Ms: list[float], grid: list[float]):
        import torch

        from iobs.data.calibration import calibration_batch
        from iobs.models import load_model

        torch.manual_seed(0)
        self.dense, self.tok = load_model("smollm2-135m")
        self.ids = calibration_batch(self.tok, "wiki", nsamples, 512, 0)
        self.max_windows, self.Ms, self.grid = max_windows, Ms, grid
        self.owl = self.err = None

    def stats(self, alloc: str):
        from iobs.prune.allocation import dense_stats
        from iobs.prune.solve import LayerSolver

        if alloc == "owl" and self.owl is None:
            self.owl = dense_stats(copy.deepcopy(self.dense), self.ids, Ms=tuple(self.Ms), device="cpu")
        if alloc == "error" and self.err is None:
            solver = LayerSolver("sparsegpt", 0.5)
            self.err = dense_stats(
                copy.deepcopy(self.dense), self.ids, solver=solver, grid=self.grid, device="cpu"
            )
        return self.owl if alloc == "owl" else self.err

    def run(self, variant: str, target: float) -> dict:
        from dataclasses import replace

        from iobs.eval.perplexity import perplexity
        from iobs.prune.allocation import allocate
        from iobs.prune.decoder import prune_decoder
        from iobs.prune.solve import LayerSolver

        solver_name, alloc, params = parse_variant(variant)
        solver = LayerSolver(solver_name, target)
        alloc_s, info = 0.0, {}
        if alloc != "uniform":
            st = self.stats(alloc)
            fractions, info = allocate(st, alloc, target, **params)
            solver, alloc_s = replace(solver, layer_sparsity=fractions), st.seconds
        model = copy.deepcopy(self.dense)
        t0 = time.perf_counter()
        recs = prune_decoder(model, self.ids, solver, progress=False, device="cpu")
        walk_s = time.perf_counter() - t0
        n = sum(r["numel"] for r in recs)
        out = {"variant": variant, "solver": solver_name, "allocation": alloc, "params": params}
        out |= {"target": target, "walk_s": walk_s, "alloc_s": alloc_s, "prune_s": walk_s + alloc_s}
        out["sparsity"] = 1 - sum(r["kept"] for r in recs) / n
        out["mean_rel_error"] = sum(r["rel_error"] for r in recs) / len(recs)
        out["layer_sparsity"] = {r["name"]: r["sparsity"] for r in recs}
        out["density"], out["grid"] = info.get("density"), info.get("grid")
        for data in CORPORA:
            out[data] = perplexity(model, self.tok, data, 512, self.max_windows, progress=False)["ppl"]
        return out


def render(recs: list[dict]) -> str:
    from iobs.utils import markdown_table

    base = {r["target"]: r for r in recs if r["variant"] == "sparsegpt/uniform"}
    rows = []
    for r in sorted(recs, key=lambda r: (r["target"], r["solver"] != "sparsegpt", r["solver"])):
        b = base.get(r["target"])
        row = {"target": f"{r['target']:g}", "solver": r["solver"], "allocation": _label(r)}
        for data in CORPORA:
            row[f"{data} ppl"] = f"{r[data]:.2f}"
            if data != "wiki-val":
                row[f"{data} / SGPT-uniform"] = f"{r[data] / b[data]:.3f}" if b else "-"
        s = list(r["layer_sparsity"].values())
        row["layer sparsity min–max"] = f"{min(s):.2f}–{max(s):.2f}"
        row["global sparsity"] = f"{r['sparsity']:.5f}"
        row["mean layer rel. err"] = f"{r['mean_rel_error']:.4f}"
        row["prune s (pre-pass)"] = f"{r['prune_s']:.0f} ({r['alloc_s']:.0f})"
        row["time / SGPT-uniform"] = f"{r['prune_s'] / b['prune_s']:.1f}" if b else "-"
        rows.append(row)
    return markdown_table(rows)


def plot(recs: list[dict], path: Path) -> None:
    """Per-block sparsity (unweighted mean over the block's layers) of every variant, one panel per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iobs.utils import save_figure

    targets = sorted({r["target"] for r in recs})
    fig, axes = plt.subplots(1, len(targets), figsize=(6 * len(targets), 4), squeeze=False)
    for ax, t in zip(axes[0], targets):
        for r in (r for r in recs if r["target"] == t and r["allocation"] != "uniform"):
            blocks: dict[int, list[float]] = {}
            for name, v in r["layer_sparsity"].items():
                blocks.setdefault(int(name.split(".")[2]), []).append(v)
            xs = sorted(blocks)
            ax.plot(
                xs,
                [sum(blocks[b]) / len(blocks[b]) for b in xs],
                marker=".",
                label=f"{r['solver']} {_label(r)}",
            )
        ax.axhline(t, color="k", lw=0.8, label="uniform")
        ax.set(title=f"global sparsity {t:g}", xlabel="decoder block", ylabel="mean layer sparsity")
        ax.legend(fontsize=6)
    save_figure(fig, path)


def _label(r: dict) -> str:
    p = r["params"]
    if r["allocation"] == "owl":
        return f"owl λ={p['owl_lambda']:g} M={p['owl_m']:g}"
    if r["allocation"] == "error":
        return f"error ({p['alloc_error']}, s±2×{p.get('alloc_step', 0.1):g}, SparseGPT curves)"
    return "uniform"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="0.7,0.6")
    p.add_argument("--variants", default="sparsegpt/uniform,sparsegpt/owl:0.08:5,sparsegpt/error:relative")
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--max-windows", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--records", default=str(ROOT / "benchmarks/results/llm_allocation.jsonl"))
    p.add_argument("--out")
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--plot", help="PNG of the per-block sparsity of every variant")
    a = p.parse_args(argv)
    set_threads(a.threads)
    path = Path(a.records)
    recs = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    todo = [(float(t), v) for t in a.targets.split(",") for v in a.variants.split(",")]
    todo = [(t, v) for t, v in todo if not any(r["variant"] == v and r["target"] == t for r in recs)]
    if todo and not a.render_only:
        Ms = sorted({parse_variant(v)[2]["owl_m"] for _, v in todo if "/owl" in v})
        bench = Bench(a.nsamples, a.max_windows, Ms, curve_grid(todo))
        for t, v in todo:
            rec = bench.run(v, t)
            rec["nsamples"], rec["max_windows"] = a.nsamples, a.max_windows
            recs.append(rec)
            with path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps({k: rec[k] for k in ("variant", "target", "prune_s", *CORPORA)}), flush=True)
    title = "End-to-end perplexity with layer-wise sparsity allocation (SmolLM2-135M)"
    text = header(title, sys.argv) + "\n" + render(recs)
    if a.out:
        Path(a.out).write_text(text + "\n")
    if a.plot:
        plot(recs, Path(a.plot))
    print(text)


if __name__ == "__main__":
    main()
