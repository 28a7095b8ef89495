"""Local quadratic convergence of I-OBS on the logistic loss beside k-IHT's linear rate (a PNG).

    python benchmarks/recovery_convergence.py [--n 2000 --d 100 --k 5 --seed 0]
        [--png benchmarks/results/recovery_convergence.png] [--out benchmarks/results/recovery_convergence.md]

The experiment is iobs.recovery.convergence.logistic_convergence (meant to become an ``iobs reproduce``
target once see also ``iobs reproduce convergence``): e_t = ‖θ_t − θ̂‖/‖θ̂‖ per iteration,
θ̂ the maximum-likelihood fit on the planted support, θ0 = 0. The table lists the per-step exponents
log e_{t+1}/log e_t on 1e-13 ≤ e ≤ 1e-1 (2 = quadratic; near 1 = linear).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from recovery_suite import emit, report_head  # noqa: E402

from iobs.recovery.convergence import convergence_figure, logistic_convergence, slope_rows  # noqa: E402
from iobs.utils import markdown_table, save_figure  # noqa: E402

torch.set_num_threads(1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--d", type=int, default=100)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--png", default="benchmarks/results/recovery_convergence.png")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    r = logistic_convergence(n=args.n, d=args.d, k=args.k, seed=args.seed)
    save_figure(convergence_figure(r), args.png)
    rows = slope_rows(r)
    text = (
        report_head("Logistic loss: local convergence", argv)
        + f"n={r['n']}, d={r['d']}, k={r['k']}, seed {r['seed']}; plot: `{args.png}`.\n\n"
        + markdown_table(rows)
    )
    return emit(text, args.out)


if __name__ == "__main__":
    sys.exit(main())
