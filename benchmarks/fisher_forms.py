"""Block empirical Fisher: Woodbury form (n×n factor per block) against the dense form (B×B factor).

Both forms hold the same matrix F_b = λI + A_bᵀA_b (``iobs.vision.fisher``); ``fisher_from_grads`` picks
the dense form for a block when n ≥ B. For MLPNet's 32 360 prunable weights in blocks of 500 and n random
per-sample gradients, this times in one run, with the same torch thread count:

* build: the damped blocks and their Cholesky factors;
* woodfisher: the OBS saliency θ²/[F⁻¹]_ii and the exact OBS update at 70 % global sparsity;
* cbs: the CBS swap search (50 swaps, 64 candidates) and its OBS updates;
and checks that both forms give the same weights (max |Δθ|). Ratio = Woodbury time / dense time.

Usage:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fisher_forms.py --out benchmarks/results/fisher_forms.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from iobs.utils import atomic_write_text, markdown_table
from iobs.vision.fisher import fisher_from_grads
from iobs.vision.global_prune import cbs, woodfisher

SIZES = [784 * 40, 40 * 20, 20 * 10]  # MLPNet 784-40-20-10 weights


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def measure(G, theta, block, dense):
    F, t_build = timed(lambda: fisher_from_grads(G, SIZES, block, 1e-4, True, dense=dense))
    wf, t_wf = timed(lambda: woodfisher(theta, F, 0.7))
    cb, t_cbs = timed(lambda: cbs(theta, F, 0.7, candidates=64, max_swaps=50))
    return {"build": t_build, "woodfisher": t_wf, "cbs": t_cbs}, (wf.theta, cb.theta)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="250,600,2400", help="gradient counts, comma-separated")
    ap.add_argument("--dense-only", default="9600", help="gradient counts timed in the dense form only")
    ap.add_argument("--block-size", type=int, default=500)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    d = sum(SIZES)
    theta = torch.randn(d, dtype=torch.float64)
    rows = []
    todo = [(int(n), True) for n in args.n.split(",") if n] + [
        (int(n), False) for n in args.dense_only.split(",") if n
    ]
    for n, both in todo:
        G = 0.01 * torch.randn(n, d, dtype=torch.float64)
        dense, (wf_d, cb_d) = measure(G, theta, args.block_size, True)
        wood, diff = None, None
        if both:
            wood, (wf_w, cb_w) = measure(G, theta, args.block_size, False)
            diff = max(float((wf_d - wf_w).abs().max()), float((cb_d - cb_w).abs().max()))
        for step in ("build", "woodfisher", "cbs"):
            rows.append(
                {
                    "n": n,
                    "step": step,
                    "woodbury s": wood[step] if wood else None,
                    "dense s": dense[step],
                    "woodbury/dense": wood[step] / dense[step] if wood else None,
                    "max |Δθ|": f"{diff:.1e}" if diff is not None and step == "cbs" else None,
                }
            )
        print(markdown_table(rows[-3:], floatfmt=".2f"), flush=True)
    md = (
        "# Block Fisher: Woodbury against dense form\n\n"
        f"- command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} .venv/bin/python "
        f"benchmarks/fisher_forms.py`\n"
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; "
        f"machine: {platform.processor() or platform.machine()}, "
        f"nproc {os.cpu_count()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)\n"
        f"- d = {d} (MLPNet), blocks of {args.block_size}, absolute damping 1e-4, 70 % sparsity, float64; "
        "the dense form is what `fisher_from_grads` picks when n ≥ B\n\n"
        + markdown_table(rows, floatfmt=".2f")
    )
    print(md)
    if args.out:
        atomic_write_text(args.out, md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
