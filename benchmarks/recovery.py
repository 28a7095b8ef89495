"""Sparse-recovery benchmark: the I-OBS family and classic peers against abess, OMP and skscope, one run.

    .venv/bin/python benchmarks/recovery.py [--quick] [--trials 50] [--slow-trials 10] [--out FILE]

Cases (least squares f(θ) = ½‖Aθ − y‖², noiseless, θ₀ = 0):
  fig1a  d=128, k*=16 N(0,1) values, n=256, A_ij ~ N(0, 1/n), k=64, 20 runs (paper Fig. 1a);
  fig1b  MNIST digits as θ* (d=784, 0..255), n=2d, k=2k* (paper Fig. 1b; one digit per class);
  pt     phase transition A ∈ R^{200×1000}, A_ij ~ N(0, 1/200), k = k* = 20…100, Gaussian amplitudes.
Success: ‖θ − θ*‖/‖θ*‖ < 1e-4 (and < 1e-6). Per solver: success rate per k, the k at 50 % success
(linear interpolation between the last k at ≥ 50 % and the next), median iterations and median time
per solve, and the time ratio to abess measured in the same run on the same problems.

Everything runs in ONE process with one thread (torch, BLAS, XLA) so that times compare. "Slow"
solvers (global I-OBS greedy with d = 1000, skscope) use --slow-trials per k in the phase
transition. A solver whose success rate at 1e-4 is 0 at two consecutive k is not run at larger k
(counted as 0 there, marked in the table). Progress is checkpointed to a JSON file (--json) after
every (solver, k); ``--render FILE.json`` rebuilds the tables from it.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_v] = "1"
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from iobs.recovery.problems import gaussian_prior, mnist_prior, phase_transition  # noqa: E402
from iobs.recovery.solvers import solve  # noqa: E402
from iobs.utils import atomic_write_json, atomic_write_text, environment, markdown_table  # noqa: E402

torch.set_num_threads(1)
SUCCESS = 1e-4
ACCURATE = 1e-6
ABESS_RMS = 1e3  # abess with y rescaled to this RMS, coefficients divided back


# ----------------------------------------------------------------------------------------------
# solvers: each maps (problem, k) -> (theta as numpy, iterations or None)
# ----------------------------------------------------------------------------------------------
@dataclass
class Entry:
    key: str
    label: str
    group: str  # "ours" (I-OBS variant), "ours-peer" (classic algorithm in iobs), "peer" (other package)
    run: object
    slow_pt: bool = False  # reduced trials in the phase transition
    iobs_variant: bool = False


def _ours(solver, max_iter=200, **opts):
    def run(p, k):
        # θ* only feeds the history's distance column (one vector norm per iteration)
        res = solve(p.objective(), k, solver=solver, max_iter=max_iter, theta_star=p.theta_star, **opts)
        return res.theta.numpy(), res.n_iter, res.iterations_to(ACCURATE)

    return run


def _abess(rescale: bool):
    from abess.linear import LinearRegression

    def run(p, k):
        A, y = p.A.numpy(), p.y.numpy()
        scale = ABESS_RMS / float(np.sqrt(np.mean(y**2))) if rescale else 1.0
        m = LinearRegression(support_size=k, fit_intercept=False, thread=1)
        m.fit(A, y * scale, is_normal=False)
        return np.asarray(m.coef_) / scale, None, None

    return run


def _omp(p, k):
    from sklearn.linear_model import OrthogonalMatchingPursuit

    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # "Orthogonal matching pursuit ended prematurely": reported as failure
        m = OrthogonalMatchingPursuit(n_nonzero_coefs=k, fit_intercept=False).fit(p.A.numpy(), p.y.numpy())
    return m.coef_, int(m.n_iter_), None


def _skscope(name):
    def run(p, k):
        import jax
        import jax.numpy as jnp

        jax.config.update("jax_enable_x64", True)
        import skscope

        A, y = jnp.asarray(p.A.numpy()), jnp.asarray(p.y.numpy())
        cls = {"iht": skscope.IHTSolver, "htp": skscope.HTPSolver, "grasp": skscope.GraspSolver}[name]
        kw = {}
        if name in ("iht", "htp"):  # skscope's default step 0.005 is arbitrary; give it 1/L of its objective
            kw["step_size"] = 1.0 / (2.0 * float(torch.linalg.matrix_norm(p.A, ord=2)) ** 2)
        s = cls(p.d, k, **kw)

        def f(params):
            r = A @ params - y
            return jnp.sum(r * r)

        theta = s.solve(f, jit=True)
        return np.asarray(theta), None, None

    return run


def solver_entries(skscope_ok: bool) -> list[Entry]:
    e = [
        Entry("kiht", "k-IHT (1/L)", "ours-peer", _ours("kiht", max_iter=500)),
        Entry(
            "kiht-norm",
            "k-IHT (normalised step)",
            "ours-peer",
            _ours("kiht", max_iter=500, step="normalized"),
        ),
        Entry("htp", "HTP", "ours-peer", _ours("htp")),
        Entry("cosamp", "CoSaMP", "ours-peer", _ours("cosamp")),
        Entry("sp", "subspace pursuit", "ours-peer", _ours("subspace-pursuit")),
        Entry("topk-iobs", "Topk-I-OBS", "ours", _ours("topk-iobs"), iobs_variant=True),
        Entry("iobs-greedy", "I-OBS (greedy)", "ours", _ours("iobs", support="greedy"), True, True),
        Entry("iobs-topk", "I-OBS (topk support)", "ours", _ours("iobs", support="topk"), iobs_variant=True),
        Entry("r-iobs", "restricted I-OBS (greedy)", "ours", _ours("restricted-iobs"), iobs_variant=True),
        Entry(
            "r-iobs-topk",
            "restricted I-OBS (topk support)",
            "ours",
            _ours("restricted-iobs", support="topk"),
            iobs_variant=True,
        ),
        Entry(
            "r-topk-iobs", "restricted Topk-I-OBS", "ours", _ours("restricted-topk-iobs"), iobs_variant=True
        ),
        Entry("auto", "auto (default portfolio)", "ours", _ours("auto"), iobs_variant=True),
        Entry("abess", "abess (defaults)", "peer", _abess(False)),
        Entry("abess-rs", f"abess (y rescaled to RMS {ABESS_RMS:g})", "peer", _abess(True)),
        Entry("omp", "scikit-learn OMP", "peer", _omp),
    ]
    if skscope_ok:
        e += [
            Entry("sk-iht", "skscope IHT", "peer", _skscope("iht"), slow_pt=True),
            Entry("sk-htp", "skscope HTP", "peer", _skscope("htp"), slow_pt=True),
            Entry("sk-grasp", "skscope GraSP", "peer", _skscope("grasp"), slow_pt=True),
        ]
    return e


OURS_KEYS = {
    "kiht",
    "kiht-norm",
    "htp",
    "cosamp",
    "sp",
    "topk-iobs",
    "iobs-greedy",
    "iobs-topk",
    "r-iobs",
    "r-iobs-topk",
    "r-topk-iobs",
    "auto",
}


def run_one(entry: Entry, p, k: int) -> dict:
    t0 = time.perf_counter()
    try:
        theta, n_iter, it6 = entry.run(p, k)
        err = None
    except Exception as e:  # noqa: BLE001 - a peer that crashes is a failed solve, reported
        theta, n_iter, it6, err = np.zeros(p.d), None, None, f"{type(e).__name__}: {e}"[:200]
    dt = time.perf_counter() - t0
    ts = p.theta_star.numpy()
    theta = np.nan_to_num(np.asarray(theta, dtype=np.float64).reshape(-1), nan=1e300)
    rel = float(np.linalg.norm(theta - ts) / np.linalg.norm(ts))
    return {
        "solver": entry.key,
        "k": k,
        "seed": p.seed,
        "rel": rel,
        "iters": n_iter,
        "it6": it6,
        "time": dt,
        "error": err,
    }


# ----------------------------------------------------------------------------------------------
# cases
# ----------------------------------------------------------------------------------------------
class Store:
    """Records plus an atomic JSON checkpoint."""

    def __init__(self, path: Path | None, meta: dict):
        self.path, self.data = path, {"meta": meta, "records": {}, "skipped": {}}

    def add(self, case: str, recs: list[dict]):
        self.data["records"].setdefault(case, []).extend(recs)

    def save(self):
        if self.path:
            atomic_write_json(self.path, self.data)


def case_fig1a(entries, store, runs: int, log):
    for r in range(runs):
        p = gaussian_prior(d=128, k_star=16, n=256, seed=r)
        store.add("fig1a", [dict(run_one(e, p, 64), trial=r) for e in entries])
        log(f"fig1a run {r + 1}/{runs}")
    store.save()


def case_fig1b(entries, store, digits: int, log):
    from iobs.data.mnist import load_mnist

    ds = load_mnist(limit=1000)
    for c in range(digits):
        idx = int((ds.labels == c).nonzero()[0])
        p = mnist_prior(image=ds.images[idx], n_factor=2, seed=c)
        store.add("fig1b", [dict(run_one(e, p, 2 * p.k_star), trial=c) for e in entries])
        log(f"fig1b digit {c + 1}/{digits}")
    store.save()


def case_pt(entries, store, ks, trials: int, slow_trials: int, log):
    """Fast solvers over every k first, then the slow ones, so a cut-short run still has the core."""
    problems: dict = {}

    def problem(k, t):
        if (k, t) not in problems:
            problems[(k, t)] = phase_transition(k, n=200, d=1000, seed=10_000 * k + t)
        return problems[(k, t)]

    for slow in (False, True):
        for e in [e for e in entries if e.slow_pt == slow]:
            zeros = 0
            for k in ks:
                if zeros >= 2:
                    store.data["skipped"].setdefault(e.key, []).append(k)
                    continue
                n_tr = slow_trials if slow else trials
                recs = [dict(run_one(e, problem(k, t), k), trial=t) for t in range(n_tr)]
                store.add("pt", recs)
                rate = sum(r["rel"] < SUCCESS for r in recs) / n_tr
                zeros = zeros + 1 if rate == 0 else 0
                store.save()
                log(f"pt {e.key} k={k}: {rate:.2f} ({np.median([r['time'] for r in recs]) * 1e3:.0f} ms)")
        problems.clear()


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------
def k_at_half(ks: list[int], rates: list[float]) -> float | None:
    """Largest k on the first downward crossing of 50 %, linearly interpolated; None when never ≥ 50 %."""
    if not ks or rates[0] < 0.5:
        return None
    for i in range(1, len(ks)):
        if rates[i] < 0.5:
            k0, k1, r0, r1 = ks[i - 1], ks[i], rates[i - 1], rates[i]
            return k0 + (r0 - 0.5) / (r0 - r1) * (k1 - k0)
    return float("inf")


def _fmt_it6(rs):
    it = [r.get("it6") for r in rs]
    if rs and rs[0]["solver"] not in OURS_KEYS:
        return "n/a"
    if any(i is None for i in it):
        return f"reached in {sum(i is not None for i in it)}/{len(it)}"
    return f"{_med(it):.0f} / {max(it)}"


def _med(xs):
    xs = [x for x in xs if x is not None]
    return float(np.median(xs)) if xs else None


def _fmt_ms(t):
    return "—" if t is None else f"{t * 1e3:.3g}"


def _ratio(mine: list[dict], ref: list[dict]):
    """Median time ratio on the problems both solved (matched by k and trial)."""
    rt = {(r["k"], r["trial"]): r["time"] for r in ref}
    pairs = [(r["time"], rt[(r["k"], r["trial"])]) for r in mine if (r["k"], r["trial"]) in rt]
    if not pairs:
        return None
    return float(np.median([a for a, _ in pairs]) / np.median([b for _, b in pairs]))


def _fmt_ratio(x):
    return "—" if x is None else f"{x:.2f}×"


def render(data: dict) -> tuple[str, dict]:
    """Markdown tables and the target verdicts from a checkpoint."""
    meta, recs, skipped = data["meta"], data["records"], data.get("skipped", {})
    labels = meta["labels"]
    order = [k for k in labels]
    by = {case: {} for case in recs}
    for case, rs in recs.items():
        for r in rs:
            by[case].setdefault(r["solver"], []).append(r)
    out, verdict = [], {}

    # --- Fig. 1a / 1b -----------------------------------------------------------------------
    for case, title in (
        ("fig1a", "Fig. 1a: d=128, k*=16, n=256, k=64"),
        ("fig1b", "Fig. 1b: MNIST, n=2d, k=2k*"),
    ):
        if case not in by:
            continue
        rows = []
        for key in order:
            rs = by[case].get(key)
            if not rs:
                continue
            iters = [r["iters"] for r in rs if r["iters"] is not None]
            rows.append(
                {
                    "solver": labels[key],
                    "runs": len(rs),
                    f"rel<{ACCURATE:g}": f"{sum(r['rel'] < ACCURATE for r in rs)}/{len(rs)}",
                    f"rel<{SUCCESS:g}": f"{sum(r['rel'] < SUCCESS for r in rs)}/{len(rs)}",
                    "max rel. error": f"{max(r['rel'] for r in rs):.1e}",
                    "iters (median / max)": f"{_med(iters):.0f} / {max(iters)}" if iters else "—",
                    "iters to 1e-6 (median / max)": _fmt_it6(rs),
                    "median time (ms)": _fmt_ms(_med([r["time"] for r in rs])),
                    "÷ abess-rs": _fmt_ratio(_ratio(rs, by[case].get("abess-rs", []))),
                    "÷ abess": _fmt_ratio(_ratio(rs, by[case].get("abess", []))),
                    "errors": sum(r["error"] is not None for r in rs) or "",
                }
            )
        out.append(f"### {title} ({len(by[case].get('abess', by[case][next(iter(by[case]))]))} problems)\n")
        out.append(markdown_table(rows))

    # --- phase transition ---------------------------------------------------------------------
    k50 = {}
    if "pt" in by:
        ks = sorted({r["k"] for r in recs["pt"]})
        rows = []
        for key in order:
            rs = by["pt"].get(key)
            if not rs:
                continue
            per_k = {k: [r for r in rs if r["k"] == k] for k in ks}
            rates = [
                sum(r["rel"] < SUCCESS for r in per_k[k]) / len(per_k[k]) if per_k[k] else 0.0 for k in ks
            ]
            rates6 = [
                sum(r["rel"] < ACCURATE for r in per_k[k]) / len(per_k[k]) if per_k[k] else 0.0 for k in ks
            ]
            k50[key] = k_at_half(ks, rates)
            k506 = k_at_half(ks, rates6)
            iters = [r["iters"] for r in rs if r["iters"] is not None]
            row = {
                "solver": labels[key],
                "trials/k": max(len(v) for v in per_k.values()),
                "k@50% (1e-4)": _fmt_k(k50[key]),
                "k@50% (1e-6)": _fmt_k(k506),
            }
            for k, rate in zip(ks, rates):
                row[f"k={k}"] = f"{rate:.2f}" if per_k[k] else "(0)"
            row["median iters"] = "—" if not iters else f"{_med(iters):.0f}"
            row["median time (ms)"] = _fmt_ms(_med([r["time"] for r in rs]))
            row["÷ abess-rs"] = _fmt_ratio(_ratio(rs, by["pt"].get("abess-rs", [])))
            row["÷ abess"] = _fmt_ratio(_ratio(rs, by["pt"].get("abess", [])))
            rows.append(row)
        out.append(
            f"### Phase transition: n=200, d=1000, success = rel. error < {SUCCESS:g} "
            "(per-k columns: success rate at 1e-4; (0) = not run after two k at 0 %)\n"
        )
        out.append(markdown_table(rows))

    # --- targets ------------------------------------------------------------------------------
    t_rows = []
    if "fig1a" in by:
        for key in ("iobs-greedy", "topk-iobs"):
            rs = by["fig1a"].get(key, [])
            ok = bool(rs) and all(
                r["rel"] < ACCURATE and r.get("it6") is not None and r["it6"] <= 3 for r in rs
            )
            worst = max((r.get("it6") or 10**9) for r in rs) if rs else None
            t_rows.append(
                {
                    "target": f"Fig. 1a: {labels[key]} rel. error < 1e-6 in all runs in ≤ 3 iterations",
                    "measured": f"{sum(r['rel'] < ACCURATE for r in rs)}/{len(rs)} runs; "
                    f"max {worst} iterations to 1e-6",
                    "verdict": "PASS" if ok else "MISS",
                }
            )
        kr = [r["it6"] for r in by["fig1a"].get("kiht", []) if r.get("it6") is not None]
        t_rows.append(
            {
                "target": "Fig. 1a: k-IHT needs about 190 iterations (for scale)",
                "measured": f"median {_med(kr):.0f} iterations to 1e-6" if kr else "did not reach 1e-6",
                "verdict": "info",
            }
        )
    best = None
    if k50 and any(meta["iobs_variants"].get(k) and k not in meta["slow"] for k in k50):
        # candidates: I-OBS variants run with the full number of trials (the slow ones have too few)
        variants = [k for k in order if k in k50 and meta["iobs_variants"].get(k) and k not in meta["slow"]]
        # highest k@50 %; among equals the faster one (median time per solve in the phase transition)
        best = max(variants, key=lambda k: (_kval(k50[k]), -_med([r["time"] for r in by["pt"][k]])))
        peers = {k: v for k, v in k50.items() if not meta["iobs_variants"].get(k)}
        top_peer = max(peers, key=lambda k: _kval(peers[k])) if peers else None
        t_rows.append(
            {
                "target": "Phase transition: best I-OBS variant k@50% ≥ 64",
                "measured": f"{labels[best]}: {_fmt_k(k50[best])}",
                "verdict": "PASS" if _kval(k50[best]) >= 64 else "MISS",
            }
        )
        if top_peer:
            t_rows.append(
                {
                    "target": "Phase transition: best I-OBS variant above every peer",
                    "measured": f"{_fmt_k(k50[best])} vs best peer {labels[top_peer]} "
                    f"{_fmt_k(peers[top_peer])}",
                    "verdict": "PASS" if _kval(k50[best]) > _kval(peers[top_peer]) else "MISS",
                }
            )
    if best:
        for case in ("fig1a", "fig1b", "pt"):
            if case not in by or best not in by[case]:
                continue
            for ref in ("abess-rs", "abess"):
                r = _ratio(by[case][best], by[case].get(ref, []))
                if r is None:
                    continue
                t_rows.append(
                    {
                        "target": f"{case}: median time of {labels[best]} ≤ {labels[ref]}",
                        "measured": f"ratio {r:.2f}",
                        "verdict": "PASS" if r <= 1.0 else "MISS",
                    }
                )
    verdict = {"best_iobs_variant": best, "k50": {k: _kval(v) for k, v in k50.items()}, "targets": t_rows}
    out.append("### Targets\n")
    out.append(markdown_table(t_rows))
    if skipped:
        out.append(
            "\nNot run (0 % at two smaller k): "
            + "; ".join(f"{labels[k]}: k ≥ {v[0]}" for k, v in skipped.items())
        )
    return "\n".join(out) + "\n", verdict


def _kval(v):
    return -1.0 if v is None else float(v)


def _fmt_k(v):
    if v is None:
        return "< min k"
    if v == float("inf"):
        return "> max k"
    return f"{v:.1f}"


# ----------------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return f"{cpu}, nproc={os.cpu_count()}, load average at start {load[0]:.2f} (shared machine: noisy times)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="3 Fig. 1a runs, 2 digits, k ∈ {20, 40, 60, 80}, 5 trials"
    )
    ap.add_argument("--trials", type=int, default=None, help="phase-transition trials per k (default 50)")
    ap.add_argument(
        "--slow-trials", type=int, default=None, help="trials per k for slow solvers (default 10)"
    )
    ap.add_argument("--runs", type=int, default=None, help="Fig. 1a runs (default 20)")
    ap.add_argument("--digits", type=int, default=None, help="Fig. 1b digits, one per class (default 10)")
    ap.add_argument("--ks", default=None, help="comma-separated k for the phase transition")
    ap.add_argument("--cases", default="fig1a,fig1b,pt", help="subset of fig1a,fig1b,pt")
    ap.add_argument("--solvers", default=None, help="comma-separated solver keys (default all)")
    ap.add_argument("--no-skscope", action="store_true", help="leave skscope out")
    ap.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    ap.add_argument("--json", default=None, help="checkpoint JSON (default: next to --out)")
    ap.add_argument("--render", default=None, help="only rebuild the tables from this checkpoint JSON")
    args = ap.parse_args(argv)

    if args.render:
        data = json.loads(Path(args.render).read_text())
        md, _ = render(data)
        text = header(data["meta"]) + md
        print(text)
        if args.out:
            atomic_write_text(args.out, text)
        return 0

    q = args.quick
    runs = args.runs if args.runs is not None else (3 if q else 20)
    digits = args.digits if args.digits is not None else (2 if q else 10)
    trials = args.trials if args.trials is not None else (5 if q else 50)
    slow_trials = args.slow_trials if args.slow_trials is not None else (2 if q else 10)
    if args.ks:
        ks = [int(x) for x in args.ks.split(",")]
    else:
        ks = [20, 40, 60, 80] if q else [20, 30, 40, 48, 52, 56, 60, 64, 68, 72, 76, 80, 90, 100]
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    skscope_ok = not args.no_skscope
    if skscope_ok:
        try:
            import skscope  # noqa: F401
        except ImportError:
            skscope_ok = False
    entries = solver_entries(skscope_ok)
    if args.solvers:
        want = set(args.solvers.split(","))
        unknown = want - {e.key for e in entries}
        if unknown:
            ap.error(f"unknown --solvers {sorted(unknown)}; choose from {[e.key for e in entries]}")
        entries = [e for e in entries if e.key in want]
    argv_str = " ".join([Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:]))
    meta = {
        "command": f"python {argv_str}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "environment": environment(),
        "versions": _versions(),
        "git": _git(),
        "config": {
            "runs": runs,
            "digits": digits,
            "trials": trials,
            "slow_trials": slow_trials,
            "ks": ks,
            "cases": cases,
            "success": SUCCESS,
            "accurate": ACCURATE,
        },
        "labels": {e.key: e.label for e in entries},
        "iobs_variants": {e.key: e.iobs_variant for e in entries},
        "slow": [e.key for e in entries if e.slow_pt],
    }
    json_path = Path(args.json) if args.json else (Path(args.out).with_suffix(".json") if args.out else None)
    store = Store(json_path, meta)
    t0 = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    if "fig1a" in cases:
        case_fig1a(entries, store, runs, log)
    if "fig1b" in cases:
        case_fig1b(entries, store, digits, log)
    if "pt" in cases:
        case_pt(entries, store, ks, trials, slow_trials, log)
    store.data["meta"]["total_time_s"] = time.perf_counter() - t0
    store.save()
    md, verdict = render(store.data)
    text = header(meta) + md + f"\nTotal benchmark time {time.perf_counter() - t0:.0f} s.\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


def header(meta: dict) -> str:
    c = meta["config"]
    v = ", ".join(f"{k} {val}" for k, val in meta["versions"].items())
    return (
        "# Sparse-recovery benchmark\n\n"
        f"Command: `{meta['command']}`  \nDate: {meta['date']}  \nMachine: {meta['machine']}  \n"
        f"Commit: {meta.get('git')}  \nVersions: {v}  \n"
        f"One process, one thread (torch, BLAS, XLA). Fig. 1a runs {c['runs']}, "
        f"Fig. 1b digits {c['digits']}, "
        f"phase transition {c['trials']} trials per k ({c['slow_trials']} for the slow solvers: "
        f"{', '.join(meta['labels'][k] for k in meta['slow']) or 'none'}). "
        "abess: support_size=k, is_normal=False, thread=1; 'abess-rs' fits y rescaled to RMS 1e3 and divides "
        "the coefficients back (its splicing stops on an absolute threshold: see shared/notes.md). "
        "skscope IHT/HTP "
        "get step 1/L of their objective ‖Aθ−y‖²; their inner solver limits accuracy to about 1e-5, so "
        "compare them at 1e-4. Time ratios are medians on the same problems.\n\n"
    )


def _versions() -> dict:
    out = {"torch": torch.__version__, "numpy": np.__version__}
    for mod in ("abess", "sklearn", "skscope", "jax"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional peer
            out[mod] = None
    return out


def _git() -> str | None:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).parent,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except Exception:  # noqa: BLE001
        return None


if __name__ == "__main__":
    sys.exit(main())
