"""Layer solvers on real SmolLM2 layers: relative error ‖(W − Ŵ)X‖²/‖WX‖² and seconds per layer.

(W, H) come from benchmarks/layer_hessians.py (the calibration walk of `smollm2-135m`, 32×512 wiki
windows; dense-model Hessians). Every method prunes exactly the same number of weights per layer and
all are run in this process, one after the other, with the same torch thread count. Ratios are per
layer against SparseGPT of the same run, then averaged over layers (geometric mean).

Methods: magnitude, Wanda, SparseGPT, SparseGPT + re-fit (obs/refit.py), OBC (only layers with
d_out·d_in ≤ ``--obc-max`` weights), ALPS (obs/alps.py, our implementation from the paper, its
published settings), the I-OBS mask search (obs/mask_search.py) warm-started from SparseGPT and from
ALPS. Records are appended to a JSON-lines file and a rerun skips what is there (resumable).

Usage:
    .venv/bin/python benchmarks/layer_solvers.py --cache benchmarks/cache/h_seed0.pt \
        --records benchmarks/results/layer_solvers.jsonl --out benchmarks/results/layer_solvers.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from llm_common import header, set_threads

from iobs.obs.layer import layer_error, prune_layer
from iobs.utils import atomic_write_text, markdown_table

TARGETS = ("0.5", "0.6", "0.7", "0.8", "2:4")
LAYER_TYPES = ("q_proj", "k_proj", "o_proj", "up_proj", "down_proj")


def methods(add: int, iters: int) -> dict[str, dict]:
    """Display name -> prune_layer keywords."""
    search = {"add": add, "iters": iters}
    return {
        "magnitude": {"method": "magnitude"},
        "wanda": {"method": "wanda"},
        "sparsegpt": {"method": "sparsegpt"},
        "sparsegpt+refit": {"method": "sparsegpt", "refit": True},
        "obc": {"method": "obc"},
        "alps": {"method": "alps"},
        "search(sparsegpt)": {"method": "mask-search", "search": {"warm": "sparsegpt", **search}},
        "search(alps)": {"method": "mask-search", "search": {"warm": "alps", **search}},
    }


def target_kw(t: str) -> dict:
    return {"pattern": t} if ":" in t else {"sparsity": float(t)}


def skip(name: str, key: str, W, obc_max: int, search_max_din: int) -> bool:
    """OBC only where it fits (d_out·d_in ≤ obc_max); the mask search only on d_in ≤ search_max_din."""
    if name == "obc":
        return W.numel() > obc_max
    return name.startswith("search") and W.shape[1] > search_max_din


def run(
    cache,
    records: Path,
    names,
    targets,
    layer_types,
    add,
    iters,
    obc_max,
    blocks=None,
    search_max_din=1 << 30,
):
    data = torch.load(cache)
    done = {}
    if records.exists():
        for line in records.read_text().splitlines():
            r = json.loads(line)
            done[(r["layer"], r["target"], r["method"])] = r
    table = methods(add, iters)
    layers = {k: v for k, v in data["layers"].items() if k.split(".")[-1] in layer_types}
    layers = {k: v for k, v in layers.items() if blocks is None or int(k.split(".")[0]) in blocks}
    with records.open("a") as f:
        for t in targets:  # target by target: a cut-off run still has whole targets
            for key, lw in layers.items():
                W, H = lw["W"], lw["H"]
                dense = layer_error(W, torch.zeros_like(W), H)
                for name in names:
                    if (key, t, name) in done or skip(name, key, W, obc_max, search_max_din):
                        continue
                    t0 = time.perf_counter()
                    res = prune_layer(W, H, **table[name], **target_kw(t), name=key)
                    rec = {
                        "layer": key,
                        "target": t,
                        "method": name,
                        "shape": list(W.shape),
                        "rel_error": res.error / dense,
                        "seconds": time.perf_counter() - t0,
                        "kept": int(res.mask.sum()),
                    }
                    done[(key, t, name)] = rec
                    f.write(json.dumps(rec) + "\n")
                    f.flush()
                    print(json.dumps(rec), flush=True)
    return list(done.values())


def _geo(pairs) -> float:
    return math.exp(sum(math.log(r["rel_error"] / b["rel_error"]) for r, b in pairs) / len(pairs))


def render(recs: list[dict], names, targets) -> str:
    """One row per (target, method): means over the layers it ran on; ratios per layer against SparseGPT
    and against ALPS on the same layers (geometric means)."""
    by = {(r["layer"], r["target"], r["method"]): r for r in recs}
    rows = []
    for t in targets:
        for name in names:
            layers = [k[0] for k in by if k[1] == t and k[2] == name]
            pairs = [
                (by[(lay, t, name)], by[(lay, t, "sparsegpt")])
                for lay in layers
                if (lay, t, "sparsegpt") in by
            ]
            alps = [(by[(lay, t, name)], by[(lay, t, "alps")]) for lay in layers if (lay, t, "alps") in by]
            if not pairs:
                continue
            n = len(pairs)
            rows.append(
                {
                    "target": t,
                    "method": name,
                    "layers": n,
                    "mean rel. error": f"{sum(r['rel_error'] for r, _ in pairs) / n:.5f}",
                    "error / SparseGPT": f"{_geo(pairs):.3f}",
                    "error / ALPS (same layers)": f"{_geo(alps):.3f}" if alps else "-",
                    "s / layer": f"{sum(r['seconds'] for r, _ in pairs) / n:.2f}",
                    "SparseGPT s / layer (same layers)": f"{sum(b['seconds'] for _, b in pairs) / n:.2f}",
                }
            )
    return markdown_table(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", required=True)
    p.add_argument("--records", required=True)
    p.add_argument("--out")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--layers", default=",".join(LAYER_TYPES))
    p.add_argument("--methods", default=",".join(methods(0, 0)))
    p.add_argument("--add", type=int, default=16)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--obc-max", type=int, default=576 * 576)
    p.add_argument("--search-max-din", type=int, default=1 << 30, help="mask search only on d_in <= this")
    p.add_argument("--blocks", help="comma-separated block indices (default: all in the cache)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--render-only", action="store_true")
    a = p.parse_args(argv)
    set_threads(a.threads)
    names, targets = a.methods.split(","), a.targets.split(",")
    records = Path(a.records)
    if a.render_only:
        recs = [json.loads(x) for x in records.read_text().splitlines()]
    else:
        blocks = None if a.blocks is None else {int(b) for b in a.blocks.split(",")}
        recs = run(
            a.cache,
            records,
            names,
            targets,
            a.layers.split(","),
            a.add,
            a.iters,
            a.obc_max,
            blocks,
            a.search_max_din,
        )
    text = header("Layer solvers on SmolLM2 layers", sys.argv) + "\n" + render(recs, names, targets) + "\n"
    if a.out:
        atomic_write_text(a.out, text)
    print(text)


if __name__ == "__main__":
    main()
