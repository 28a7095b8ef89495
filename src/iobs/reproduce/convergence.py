"""Convergence: I-OBS's local quadratic rate on the logistic loss beside k-IHT's linear rate.

A logistic problem with a planted k-sparse w* (n ≥ d); θ̂ = the maximum-likelihood fit on supp w*;
every solver starts at θ0 = 0 and records e_t = ‖θ_t − θ̂‖/‖θ̂‖ (iobs.recovery.convergence). Near θ̂,
I-OBS is Newton's method on the fixed support (e_{t+1} ≈ C e_t²: the exponent log e_{t+1}/log e_t is
2, the log error doubles per step); k-IHT contracts linearly (exponent → 1).

Writes to ``--out``: convergence.png (error per iteration; e_{t+1} against e_t with slopes 1 and 2),
convergence.json (config, curves, exponents) and convergence.md (the table).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

from iobs._validate import check_int_range
from iobs.config import add_arguments as add_config_arguments
from iobs.config import from_args, option
from iobs.reproduce.output import run_target
from iobs.utils import markdown_table


@dataclass
class ConvergenceConfig:
    """The problem and the iteration budget; saved in convergence.json."""

    n: int = option(2000, "samples")
    d: int = option(100, "features (n >= d: the global Newton step)")
    k: int = option(5, "non-zeros of w* and the sparsity constraint")
    seed: int = option(0, "problem seed")
    max_iter: int = option(150, "iterations per solver")
    quick: bool = option(False, "n=600, d=30, k=3, 40 iterations: seconds")

    def __post_init__(self):
        if self.quick:
            self.n, self.d, self.k, self.max_iter = 600, 30, 3, 40
        check_int_range("d", self.d, 2, 10**5)
        check_int_range("n", self.n, self.d, 10**7)  # n >= d: the regime of the local theorem
        check_int_range("k", self.k, 1, self.d - 1)
        check_int_range("seed", self.seed, 0, 2**62)
        check_int_range("max_iter", self.max_iter, 1, 10**5)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created; files are replaced atomically)")
    add_config_arguments(parser, ConvergenceConfig)


def experiment(cfg: ConvergenceConfig) -> dict:
    from iobs.recovery.convergence import logistic_convergence

    return logistic_convergence(n=cfg.n, d=cfg.d, k=cfg.k, seed=cfg.seed, max_iter=cfg.max_iter)


def render(result: dict, cfg: ConvergenceConfig, seconds: float, env: dict) -> dict:
    from iobs.recovery.convergence import convergence_figure, fitted_slopes, slope_rows

    rows = slope_rows(result)
    text = (
        f"# Local convergence on the logistic loss (n={cfg.n}, d={cfg.d}, k={cfg.k}, seed {cfg.seed})\n\n"
        + markdown_table(rows)
        + f"\n{seconds:.1f} s.\n"
    )
    slopes = {label: fitted_slopes(e) for label, e in result["curves"].items()}
    return {
        "convergence.png": convergence_figure(result),
        "convergence.json": {
            "config": asdict(cfg),
            **result,
            "exponents": slopes,
            "seconds": seconds,
            "env": env,
        },
        "convergence.md": text,
    }


def run(args) -> int:
    files = run_target(from_args(ConvergenceConfig, args), experiment, render, out=args.out)
    print(files["convergence.md"])
    return 0
