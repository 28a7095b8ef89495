"""End-to-end perplexity of SmolLM2-135M pruned by each layer solver, SparseGPT measured in the same run.

Protocol (paired): 32×512 calibration ids from the wiki calibration split (seed 0), the same for every
solver; the decoder walk of ``iobs prune`` (block-sequential, pruned-upstream inputs); perplexity on
the same non-overlapping 512-token windows of wiki-test and news (the first --max-windows of each).
Each (solver, target) runs in its own process: prune seconds (the walk only) and that process's peak
RSS. Results go to --records (JSON lines); a rerun skips what is there (resumable).

    .venv/bin/python benchmarks/llm_layer_solvers.py --targets 0.7,2:4 --solvers sparsegpt,alps \
        --records benchmarks/results/llm_layer_solvers.jsonl --out benchmarks/results/llm_layer_solvers.md
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_common import ROOT, header, set_threads  # noqa: E402

SOLVERS = {
    "sparsegpt": {"method": "sparsegpt"},
    "sparsegpt+refit": {"method": "sparsegpt", "refit": True},
    "alps": {"method": "alps"},
    "search(alps)": {"method": "mask-search", "search": {"warm": "alps", "add": 16, "iters": 3}},
    "search(sparsegpt)": {"method": "mask-search", "search": {"warm": "sparsegpt", "add": 16, "iters": 3}},
}


@dataclass(frozen=True)
class Solver:
    """A layer solver for the decoder walk: prune_layer with fixed keywords (duck-types LayerSolver)."""

    kw: dict = field(default_factory=dict)
    sparsity: float | None = None
    pattern: str | None = None
    method: str = "sparsegpt"
    per_row: bool = False
    blocksize: int = 128
    percdamp: float = 0.01

    def __call__(self, W, H, name):
        from iobs.obs.layer import prune_layer

        return prune_layer(W, H, sparsity=self.sparsity, pattern=self.pattern, name=name, **self.kw)


def one(solver: str, target: str, max_windows: int) -> dict:
    import torch

    from iobs.data.calibration import calibration_batch
    from iobs.eval.perplexity import perplexity
    from iobs.models import load_model
    from iobs.prune.decoder import prune_decoder

    torch.manual_seed(0)
    model, tok = load_model("smollm2-135m")
    ids = calibration_batch(tok, "wiki", 32, 512, 0)
    tk = {"pattern": target} if ":" in target else {"sparsity": float(target)}
    t0 = time.perf_counter()
    recs = prune_decoder(model, ids, Solver(SOLVERS[solver], **tk), progress=False, device="cpu")
    secs = time.perf_counter() - t0
    out = {"solver": solver, "target": target, "prune_s": secs}
    out["mean_rel_error"] = sum(r["rel_error"] for r in recs) / len(recs)
    for data in ("wiki-test", "news"):
        out[data] = perplexity(model, tok, data, 512, max_windows, progress=False)["ppl"]
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def render(recs: list[dict]) -> str:
    from iobs.utils import markdown_table

    base = {r["target"]: r for r in recs if r["solver"] == "sparsegpt"}
    rows = []
    for r in recs:
        b = base.get(r["target"])
        row = {"target": r["target"], "solver": r["solver"]}
        for data in ("wiki-test", "news"):
            row[f"{data} ppl"] = f"{r[data]:.2f}"
            row[f"{data} / SparseGPT"] = f"{r[data] / b[data]:.3f}" if b else "-"
        row["mean layer rel. error"] = f"{r['mean_rel_error']:.5f}"
        row["prune s"] = f"{r['prune_s']:.0f}"
        row["time / SparseGPT"] = f"{r['prune_s'] / b['prune_s']:.1f}" if b else "-"
        row["peak RSS GiB"] = f"{r['peak_rss_gib']:.2f}"
        rows.append(row)
    return markdown_table(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="0.5,0.6,0.7,2:4")
    p.add_argument("--solvers", default=",".join(SOLVERS))
    p.add_argument("--max-windows", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--records", default=str(ROOT / "benchmarks/results/llm_layer_solvers.jsonl"))
    p.add_argument("--out")
    p.add_argument("--one", nargs=2, metavar=("SOLVER", "TARGET"))
    a = p.parse_args(argv)
    set_threads(a.threads)
    if a.one:
        print(json.dumps(one(*a.one, a.max_windows)))
        return
    path = Path(a.records)
    recs = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    for target in a.targets.split(","):
        for solver in a.solvers.split(","):
            if any(r["solver"] == solver and r["target"] == target for r in recs):
                continue
            cmd = [
                sys.executable,
                __file__,
                "--one",
                solver,
                target,
                "--max-windows",
                str(a.max_windows),
                "--threads",
                str(a.threads),
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rec = json.loads(res.stdout.strip().splitlines()[-1])
            recs.append(rec)
            with path.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(json.dumps(rec), flush=True)
    text = header("End-to-end perplexity by layer solver (SmolLM2-135M)", sys.argv) + "\n" + render(recs)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
