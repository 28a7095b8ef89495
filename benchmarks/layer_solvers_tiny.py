"""Tiny layers (one row, d_in = 10, 4 kept, no damping): how often each solver reaches the brute-force
optimum over all C(10, 4) supports, and ALPS's error / optimum. A check that ALPS behaves as its paper
describes (near-optimal supports, better than SparseGPT) and of the mask search on the same instances.

Usage: PYTHONPATH=src:tests/obs .venv/bin/python benchmarks/layer_solvers_tiny.py
"""

import torch
from test_layer_solvers import best_row, layer

from iobs.obs.layer import prune_layer

SOLVERS = {
    "sparsegpt": {"method": "sparsegpt"},
    "sparsegpt+refit": {"method": "sparsegpt", "refit": True},
    "alps": {"method": "alps"},
    "mask-search": {"method": "mask-search"},
}


def main(n: int = 30) -> None:
    torch.set_num_threads(1)
    hits = dict.fromkeys(SOLVERS, 0)
    ratios = {k: [] for k in SOLVERS}
    for seed in range(n):
        W, H = layer(1, 10, 100 + seed)
        opt = best_row(W[0], H, 4)
        for name, kw in SOLVERS.items():
            r = prune_layer(W, H, sparsity=0.6, percdamp=0.0, **kw)
            hits[name] += r.error <= opt * (1 + 1e-6)
            ratios[name].append(r.error / opt)
    print(f"| solver | optimum reached (of {n}) | median error / optimum | max error / optimum |")
    print("|---|---|---|---|")
    for name in SOLVERS:
        s = sorted(ratios[name])
        print(f"| {name} | {hits[name]} | {s[n // 2]:.4f} | {s[-1]:.3f} |")


if __name__ == "__main__":
    main()
