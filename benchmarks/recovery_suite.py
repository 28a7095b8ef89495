"""Recovery suite: every solver of ours and every peer over a grid of problem classes, one run.

    python benchmarks/recovery_suite.py [--quick] [--split test|val] [--trials 20] [--cells DIR]
        [--out benchmarks/results/recovery_suite.md] [--png ...] [--solvers a,b] [--classes c1,c2]

Classes (iobs.recovery.synthetic.make_problem, N = 256 unknowns): amplitudes gaussian / rademacher /
uniform |x| ∈ [1, 2] / powerlaw j^-1; designs i.i.d. Gaussian, AR(1) ρ = 0.5, 0.8, 0.9, partial DCT;
noise none (success: ‖θ − θ*‖/‖θ*‖ < 1e-4) or SNR 10/20/40 dB (success: exact support; the median
relative error is reported too); aspect ratios m/N = 0.1, 0.25, 0.5. The grid is the sub-grid of
GRID below (every amplitude × design at m/N = 0.25 noiseless; the aspect ratios and the SNRs on fewer
designs; appended later: SNR 10/40 dB and m/N = 0.1/0.5 on AR(0.8) and DCT, n = 1.25·N at 20 dB),
documented in the table. Times: the CPU time of each solve (time.process_time) beside its wall time;
``--carry DIR`` copies the records of the solvers not run now from an earlier pass's cells.
k runs over k/m ∈ {0.05, …, 0.45}; a solver at 0 % on two
consecutive k of a class is not run at larger k there (counted 0, marked).

Seeds: ``--split val`` uses trials 1000+t (for choosing auto's rules), ``--split test`` uses
10^6 + 1000·class + 50·k_index + t (the reported table): the two never overlap. One process, one
thread. Each (class, k) cell is checkpointed to its own JSON file in --cells; a rerun skips the cells
already there (resumable); ``--render`` rebuilds the table and PNG from the cells.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import recovery as rb  # noqa: E402  (peers and helpers of the phase-transition benchmark)

from iobs.recovery.solvers import solve  # noqa: E402
from iobs.recovery.synthetic import AMPLITUDES, DESIGNS, make_problem  # noqa: E402
from iobs.utils import atomic_write_json, atomic_write_text, markdown_table  # noqa: E402

torch.set_num_threads(1)
N = 256
FRACS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45)
PEERS = ("abess", "abess-rs", "omp", "sp", "cosamp", "htp")  # the target's "best peer" set
DEFAULT = "auto"


def grid(quick: bool) -> list[dict]:
    """The classes: (amplitude, design, m/N, snr)."""
    if quick:
        return [dict(amp=a, design="gaussian", ratio=0.25, snr=None) for a in ("gaussian", "rademacher")]
    g = [dict(amp=a, design=d, ratio=0.25, snr=None) for d in DESIGNS for a in AMPLITUDES]
    g += [dict(amp=a, design="gaussian", ratio=r, snr=None) for r in (0.1, 0.5) for a in AMPLITUDES]
    g += [dict(amp=a, design=d, ratio=0.25, snr=20) for d in ("gaussian", "ar0.8", "dct") for a in AMPLITUDES]
    g += [
        dict(amp=a, design="gaussian", ratio=0.25, snr=s)
        for s in (10, 40)
        for a in ("gaussian", "rademacher")
    ]
    # appended later (issue 10, second pass): the indices above keep their test seeds
    g += [
        dict(amp=a, design=d, ratio=0.25, snr=s)
        for d in ("ar0.8", "dct")
        for s in (10, 40)
        for a in ("gaussian", "rademacher")
    ]
    g += [
        dict(amp=a, design=d, ratio=r, snr=None)
        for d in ("ar0.8", "dct")
        for r in (0.1, 0.5)
        for a in ("gaussian", "rademacher")
    ]
    g += [
        dict(amp=a, design=d, ratio=1.25, snr=20)
        for d in ("gaussian", "ar0.8")
        for a in ("gaussian", "rademacher")
    ]
    return g


def class_name(c: dict) -> str:
    noise = "noiseless" if c["snr"] is None else f"{c['snr']}dB"
    return f"{c['amp']}/{c['design']}/m{c['ratio']:g}/{noise}"


# ----------------------------------------------------------------------------------------------
# solvers: (problem, k) -> (θ, iterations)
# ----------------------------------------------------------------------------------------------
def _ours(solver, **opts):
    def run(p, k):
        res = solve(p.objective(), k, solver=solver, **opts)
        extra = {"chosen": res.chosen} if solver == "auto" else {}
        return res.theta.numpy(), res.n_iter, extra

    return run


def _lasso_refit(p, k):
    """LARS-lasso path; the last path point with ≤ k non-zeros; least squares refit on its support."""
    from sklearn.linear_model import lars_path

    A, y = p.A.numpy(), p.y.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, _, coefs = lars_path(A, y, method="lasso", max_iter=8 * k)
    nnz = (coefs != 0).sum(0)
    col = int(np.flatnonzero(nnz <= k)[-1])
    S = np.flatnonzero(coefs[:, col])
    theta = np.zeros(p.d)
    if S.size:
        theta[S] = np.linalg.lstsq(A[:, S], y, rcond=None)[0]
    return theta, coefs.shape[1] - 1, {}


def _peer(fn):
    def run(p, k):
        theta, it, _ = fn(p, k)
        return theta, it, {}

    return run


def entries(skscope_ok: bool) -> dict:
    e = {
        "auto": ("auto (default)", _ours("auto")),
        "auto-exact": ("auto, stop=exact (validation)", _ours("auto", stop="exact")),
        "auto-none": ("auto, stop=none (validation)", _ours("auto", stop="none")),
        "auto-v1": ("auto, first pass (6 schedules, agree stop; carried)", None),  # records only
        "r-iobs": ("restricted I-OBS (⌈k/8⌉ gains)", _ours("restricted-iobs")),
        "r-iobs-grad": ("restricted I-OBS (k gradient coords)", None),  # options depend on k: below
        "iobs": ("I-OBS global (greedy)", _ours("iobs")),
        "topk-iobs": ("Topk-I-OBS", _ours("topk-iobs")),
        "kiht-norm": ("k-IHT (normalised)", _ours("kiht", step="normalized", max_iter=500)),
        "htp": ("HTP", _ours("htp")),
        "cosamp": ("CoSaMP", _ours("cosamp")),
        "sp": ("subspace pursuit", _ours("subspace-pursuit")),
        "abess": ("abess (defaults)", _peer(rb._abess(False))),
        "abess-rs": ("abess (y rescaled)", _peer(rb._abess(True))),
        "omp": ("scikit-learn OMP", _peer(rb._omp)),
        "lasso": ("Lasso path + refit", _lasso_refit),
    }

    def grad_k(p, k):
        return _ours("restricted-iobs", select="gradient", expand=k)(p, k)

    e["r-iobs-grad"] = (e["r-iobs-grad"][0], grad_k)
    if skscope_ok:
        e["sk-grasp"] = ("skscope GraSP (≤5 trials, noiseless i.i.d. only)", _peer(rb._skscope("grasp")))
    return e


def run_one(key, fn, p, k, noiseless: bool) -> dict:
    """One solve: success, errors, iterations, wall time and CPU time (``cpu``: time.process_time, the
    time the process itself ran; on the shared machine the wall time of a solve longer than a scheduler
    slice also counts the other jobs' turns, so the ratios use CPU time)."""
    c0, t0 = time.process_time(), time.perf_counter()
    try:
        theta, it, extra = fn(p, k)
        err = None
    except Exception as ex:  # noqa: BLE001 - a crash is a failed solve, reported
        theta, it, extra, err = np.zeros(p.d), None, {}, f"{type(ex).__name__}: {ex}"[:200]
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    ts = p.theta_star.numpy()
    theta = np.nan_to_num(np.asarray(theta, dtype=np.float64).reshape(-1), nan=1e300)
    rel = float(np.linalg.norm(theta - ts) / np.linalg.norm(ts))
    exact = bool(((theta != 0) == (ts != 0)).all())
    ok = rel < rb.SUCCESS if noiseless else exact
    return dict(
        solver=key,
        k=k,
        seed=p.seed,
        rel=rel,
        support=exact,
        ok=ok,
        iters=it,
        time=dt,
        cpu=cpu,
        error=err,
        **extra,
    )


# ----------------------------------------------------------------------------------------------
# the run: one JSON per (class, k) cell
# ----------------------------------------------------------------------------------------------
def seed_of(split: str, ci: int, ki: int, t: int) -> int:
    return 1000 + t if split == "val" else 10**6 + 1000 * ci + 50 * ki + t


def run_class(ci, c, sols, args, cells: Path, log):
    m = max(2, round(c["ratio"] * N))
    ks = sorted({max(1, round(f * m)) for f in FRACS})
    zeros = {key: 0 for key in sols}
    for ki, k in enumerate(ks):
        path = cells / f"{args.split}_{class_name(c).replace('/', '_')}_k{k}.json"
        if path.exists():
            recs = json.loads(path.read_text())["records"]
        else:
            recs = _run_cell(ci, c, m, ki, k, sols, zeros, args)
            old = Path(args.carry) / path.name if args.carry else None
            if old is not None and old.exists():  # solvers not rerun: their records of an earlier pass
                recs += [
                    dict(r, carried=True)
                    for r in json.loads(old.read_text())["records"]
                    if r["solver"] not in sols
                ]
            atomic_write_json(path, {"class": c, "name": class_name(c), "m": m, "k": k, "records": recs})
        for key in sols:
            rs = [r for r in recs if r["solver"] == key]
            if rs:
                zeros[key] = zeros[key] + 1 if not any(r["ok"] for r in rs) else 0
        log(
            f"{class_name(c)} k={k}: "
            + " ".join(
                f"{key}={np.mean([r['ok'] for r in recs if r['solver'] == key]):.2f}"
                for key in sols
                if any(r["solver"] == key for r in recs)
            )
        )


def _run_cell(ci, c, m, ki, k, sols, zeros, args) -> list[dict]:
    recs = []
    for t in range(args.trials):
        p = make_problem(m, N, k, c["amp"], c["design"], c["snr"], seed=seed_of(args.split, ci, ki, t))
        for key, (_, fn) in sols.items():
            if zeros[key] >= 2:
                continue
            if key == "sk-grasp" and (t >= 5 or c["snr"] is not None or c["design"] != "gaussian"):
                continue
            recs.append(dict(run_one(key, fn, p, k, c["snr"] is None), trial=t))
    return recs


# ----------------------------------------------------------------------------------------------
# tables and the PNG
# ----------------------------------------------------------------------------------------------
def load_cells(cells: Path, split: str) -> dict:
    """class name -> {"class", "m", "cells": {k: records}}."""
    out: dict = {}
    for path in sorted(cells.glob(f"{split}_*.json")):
        d = json.loads(path.read_text())
        entry = out.setdefault(d["name"], {"class": d["class"], "m": d["m"], "cells": {}})
        entry["cells"][d["k"]] = d["records"]
    return out


def _cpu(r) -> float:
    """The CPU time of a record (cells written before it was recorded: the wall time)."""
    return r.get("cpu", r["time"])


def _paired_ratio(rs, ref):
    """median time ÷ median time of ``ref`` over the problems both ran, CPU times of the same pass only
    (records carried over from an earlier pass have no ratio)."""
    rt = {(r["k"], r["trial"]): _cpu(r) for r in ref if "cpu" in r}
    pairs = [(_cpu(r), rt[(r["k"], r["trial"])]) for r in rs if (r["k"], r["trial"]) in rt and "cpu" in r]
    return float(np.median([a for a, _ in pairs]) / np.median([b for _, b in pairs])) if pairs else None


def summarize(classes: dict, keys: list[str]) -> dict:
    """Per class and solver: rates per k, mean rate over the class's k (skipped = 0), k@50 %, medians."""
    out = {}
    for name, entry in classes.items():
        ks = sorted(entry["cells"])
        allrecs = [r for k in ks for r in entry["cells"][k]]
        row = {}
        for key in keys:
            rs = [r for r in allrecs if r["solver"] == key]
            if not rs:
                continue
            rates, ran = [], []
            for k in ks:
                rk = [r for r in entry["cells"][k] if r["solver"] == key]
                rates.append(float(np.mean([r["ok"] for r in rk])) if rk else 0.0)
                ran.append(bool(rk))
            row[key] = dict(
                rates=rates,
                ran=ran,
                ks=ks,
                mean=float(np.mean(rates)),
                k50=rb.k_at_half(ks, rates),
                time=float(np.median([_cpu(r) for r in rs])),
                wall=float(np.median([r["time"] for r in rs])),
                iters=rb._med([r["iters"] for r in rs]),
                rel=float(np.median([r["rel"] for r in rs])),
                vs_abess=_paired_ratio(rs, [r for r in allrecs if r["solver"] == "abess"]),
                vs_abess_rs=_paired_ratio(rs, [r for r in allrecs if r["solver"] == "abess-rs"]),
                chosen=_chosen(rs),
            )
        out[name] = dict(row=row, m=entry["m"], cls=entry["class"])
    return out


def _chosen(rs):
    counts: dict = {}
    for r in rs:
        if "chosen" in r:
            counts[r["chosen"]] = counts.get(r["chosen"], 0) + 1
    return counts


def _k(v):
    return "—" if v is None else ("≥ max k" if v == float("inf") else f"{v:.1f}")


def render(summary: dict, labels: dict, keys: list[str]) -> str:
    rows, verdicts = [], []
    for name, s in summary.items():
        row = s["row"]
        if DEFAULT not in row:
            continue
        peers = [p for p in PEERS if p in row]
        best = max(peers, key=lambda p: row[p]["mean"]) if peers else None
        d = row[DEFAULT]
        ok_rate = best is None or d["mean"] >= row[best]["mean"] - 1e-12
        ratio = d["vs_abess"]
        rows.append(
            {
                "class": name,
                "m": s["m"],
                "k grid": ",".join(map(str, d["ks"])),
                "auto rate": f"{d['mean']:.3f}",
                "first pass rate": f"{row['auto-v1']['mean']:.3f}" if "auto-v1" in row else "—",
                "best peer": labels[best] if best else "—",
                "peer rate": f"{row[best]['mean']:.3f}" if best else "—",
                "auto k@50%": _k(d["k50"]),
                "peer k@50%": _k(row[best]["k50"]) if best else "—",
                "auto ms": f"{d['time'] * 1e3:.3g}",
                "auto wall ms": f"{d['wall'] * 1e3:.3g}",
                "÷ abess": rb._fmt_ratio(ratio),
                "÷ abess-rs": rb._fmt_ratio(d["vs_abess_rs"]),
                "rate ≥ peer": "PASS" if ok_rate else "MISS",
                "time ≤ 3× abess": "PASS" if ratio is not None and ratio <= 3 else "MISS",
            }
        )
        verdicts.append((ok_rate, ratio is not None and ratio <= 3))
    head = markdown_table(rows)
    n = len(verdicts)
    tally = (
        f"\nRate target met on {sum(a for a, _ in verdicts)}/{n} classes; time target (median ≤ 3× "
        f"abess defaults, paired) on {sum(b for _, b in verdicts)}/{n}.\n"
    )
    return head + tally + "\n" + _per_solver_table(summary, labels, keys)


def _per_solver_table(summary, labels, keys) -> str:
    """Every solver: mean success rate per class (rows: solvers, columns: classes)."""
    out = []
    for name, s in summary.items():
        row = s["row"]
        rs = []
        for key in keys:
            if key not in row:
                continue
            r = row[key]
            rs.append(
                {
                    "solver": labels[key],
                    "mean rate": f"{r['mean']:.3f}",
                    "k@50%": _k(r["k50"]),
                    **{
                        f"k={k}": (f"{v:.2f}" if ran else "(0)")
                        for k, v, ran in zip(r["ks"], r["rates"], r["ran"])
                    },
                    "median ms": f"{r['time'] * 1e3:.3g}",
                    "median iters": "—" if r["iters"] is None else f"{r['iters']:.0f}",
                    "median rel. err": f"{r['rel']:.1e}",
                    "÷ abess": rb._fmt_ratio(r["vs_abess"]),
                }
            )
        chosen = row.get(DEFAULT, {}).get("chosen", {})
        ch = "; ".join(f"{c}: {v}" for c, v in sorted(chosen.items(), key=lambda x: -x[1]))
        out.append(f"#### {name} (m = {s['m']}, N = {N})\n\n{markdown_table(rs)}\nauto chose: {ch}\n")
    return "\n".join(out)


def plot(summary: dict, labels: dict, keys: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    keys = [k for k in keys if any(k in summary[n]["row"] for n in names)]
    M = np.full((len(names), len(keys)), np.nan)
    for i, n in enumerate(names):
        for j, key in enumerate(keys):
            if key in summary[n]["row"]:
                M[i, j] = summary[n]["row"][key]["mean"]
    fig, ax = plt.subplots(figsize=(1.0 * len(keys) + 4, 0.32 * len(names) + 2))
    im = ax.imshow(M, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for i in range(len(names)):
        best = np.nanmax(M[i])
        for j in range(len(keys)):
            if not np.isnan(M[i, j]):
                ax.text(
                    j,
                    i,
                    f"{M[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="red" if M[i, j] >= best - 1e-12 else ("black" if M[i, j] > 0.5 else "white"),
                    fontweight="bold" if M[i, j] >= best - 1e-12 else "normal",
                )
    ax.set_xticks(range(len(keys)), [labels[k] for k in keys], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title(
        f"Recovery suite (N = {N}): success rate averaged over the k grid of each class "
        "(red = best in the row)",
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, fraction=0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_head(title: str, argv) -> str:
    """The markdown title and the Command / Date / Machine / Commit lines of a benchmark table."""
    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:]))
    return (
        f"# {title}\n\nCommand: `{cmd}`  \nDate: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}  \n"
        f"Machine: {rb.machine()}  \nCommit: {rb._git()}  \n"
    )


def _carried_note(cells: Path, split: str) -> str:
    """A line naming the solvers whose records were carried over from an earlier pass (--carry)."""
    carried = set()
    for path in cells.glob(f"{split}_*.json"):
        carried |= {r["solver"] for r in json.loads(path.read_text())["records"] if r.get("carried")}
    if not carried:
        return ""
    return (
        "Carried over from the first pass's cells (same code and seeds, deterministic rates; not rerun): "
        f"{', '.join(sorted(carried))}; their times are that pass's wall times and have no ratio.\n\n"
    )


def emit(text: str, out) -> int:
    """Print the table and write it to ``out`` (when given)."""
    print(text)
    if out:
        atomic_write_text(out, text)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 classes, 5 trials: a smoke run")
    ap.add_argument("--split", choices=("val", "test"), default="test")
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument(
        "--cells", default="/tmp/recovery_suite_cells", help="folder of per-cell JSON checkpoints"
    )
    ap.add_argument("--out", default=None)
    ap.add_argument("--png", default=None)
    ap.add_argument("--solvers", default=None, help="comma-separated keys (default: all)")
    ap.add_argument("--classes", default=None, help="comma-separated indices into the grid")
    ap.add_argument("--render", action="store_true", help="only rebuild the table/PNG from --cells")
    ap.add_argument(
        "--carry",
        default=None,
        help="cells of an earlier pass: the records of the solvers not run now are copied",
    )
    ap.add_argument("--no-skscope", action="store_true")
    args = ap.parse_args(argv)
    args.trials = args.trials or (5 if args.quick else 20)
    skscope_ok = not args.no_skscope
    try:
        import skscope  # noqa: F401
    except ImportError:
        skscope_ok = False
    sols = entries(skscope_ok)
    if args.solvers:
        sols = {k: v for k, v in sols.items() if k in args.solvers.split(",")}
    else:
        sols = {k: v for k, v in sols.items() if k not in ("auto-exact", "auto-none")}
    if not args.render:
        sols = {k: v for k, v in sols.items() if v[1] is not None}  # auto-v1: rendered, never run
    labels = {k: v[0] for k, v in sols.items()}
    cells = Path(args.cells)
    cells.mkdir(parents=True, exist_ok=True)
    g = grid(args.quick)
    picked = range(len(g)) if not args.classes else [int(i) for i in args.classes.split(",")]
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    if not args.render:
        for ci in picked:
            run_class(ci, g[ci], sols, args, cells, log)
    summary = summarize(load_cells(cells, args.split), list(sols))
    text = (
        report_head(f"Recovery suite ({args.split} seeds)", argv)
        + f"N = {N}, {args.trials} trials per (class, k); success: rel. error < {rb.SUCCESS:g} (noiseless) "
        "or exact support (noisy). Class rate = mean over the class's k grid. Best peer among "
        f"{', '.join(PEERS)}. Times: medians of the CPU time of each solve (time.process_time; the wall "
        "time of a solve longer than a scheduler slice also counts the other jobs on the shared machine), "
        "ratios of medians paired on the same problems, one thread.\n\n"
        + _carried_note(cells, args.split)
        + render(summary, labels, list(sols))
    )
    emit(text, args.out)
    if args.out:
        atomic_write_json(Path(args.out).with_suffix(".json"), summary)
    if args.png:
        plot(summary, labels, list(sols), Path(args.png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
