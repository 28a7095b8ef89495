"""Choosing auto's portfolio rules on VALIDATION seeds: every candidate schedule run alone on every
problem, then any ordering / stopping rule simulated offline from those runs.

    python benchmarks/recovery_suite_rules.py [--trials 10] [--cells DIR] [--classes 0,1,...]
    python benchmarks/recovery_suite_rules.py --peers [--cells DIR]   (second pass: peers, CPU times)
    python benchmarks/recovery_suite_rules.py --simulate [--search] [--cells DIR] [--out FILE]
    python benchmarks/recovery_suite_rules.py --pt [--trials 50] --cells DIR2   (200×1000, val seeds)

Problems: the classes of benchmarks/recovery_suite.py with the validation seeds 1000 + t (never the
test seeds). Per problem and schedule (each from θ0 = 0 unless said): f(θ), success (the suite's rule),
time, iterations and the residual statistic z = max_{j ∉ S} |a_jᵀr| / (‖a_j‖‖r‖) (r = y − Aθ; 0 at an
exact fit). A rule = an order of schedules + when to stop; its θ is the lowest f among the schedules
it ran, its time the sum of their times. One JSON per (class, k) cell, resumable.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import recovery_suite as suite  # noqa: E402

from iobs.recovery.solvers import SOLVERS  # noqa: E402
from iobs.recovery.synthetic import make_problem  # noqa: E402
from iobs.utils import atomic_write_json, atomic_write_text, markdown_table  # noqa: E402

torch.set_num_threads(1)


def candidates(k: int, n: int, d: int) -> dict:
    """key -> (solver, options, warm-from key or None)."""
    c = {
        "k8": ("restricted-iobs", {"expand": max(1, -(-k // 8))}, None),
        "gk": ("restricted-iobs", {"select": "gradient", "expand": k}, None),
        "sp": ("subspace-pursuit", {}, None),
        "k2": ("restricted-iobs", {"expand": max(1, -(-k // 2))}, None),
        "htp": ("htp", {}, None),
        "e1": ("restricted-iobs", {"expand": 1}, None),
        "k4": ("restricted-iobs", {"expand": max(1, -(-k // 4))}, None),
        "k8+e1": ("restricted-iobs", {"expand": 1}, "k8"),
    }
    if n >= d:
        c["glob"] = ("iobs", {"support": "greedy"}, None)
        c["glob+e1"] = ("restricted-iobs", {"expand": 1}, "glob")
    return c


def z_stat(A, y, theta) -> float:
    r = y - A @ theta
    rn = float(r.norm())
    if rn == 0:
        return 0.0
    c = (A.T @ r).abs() / (torch.linalg.vector_norm(A, dim=0) * rn)
    c[theta != 0] = 0
    return float(c.max())


def run_problem(p, k, noiseless) -> dict:
    obj = p.objective()
    out, thetas = {}, {}
    for key, (name, opts, warm) in candidates(k, p.A.shape[0], p.d).items():
        theta0 = thetas.get(warm) if warm else None
        t0 = time.perf_counter()
        r = SOLVERS[name](obj, k, theta0=theta0, **opts)
        dt = time.perf_counter() - t0
        thetas[key] = r.theta
        rel = float((r.theta - p.theta_star).norm() / p.theta_star.norm())
        sup = bool(((r.theta != 0) == (p.theta_star != 0)).all())
        out[key] = dict(
            f=float(obj.value(r.theta)),
            ok=rel < 1e-4 if noiseless else sup,
            time=dt,
            it=r.n_iter,
            z=z_stat(p.A, p.y, r.theta),
        )
    out["f0"] = float(obj.value(torch.zeros(p.d, dtype=torch.float64)))
    return out


def retime(p, k, rec) -> None:
    """Second pass on a stored cell: the peers (abess both forms, OMP, CoSaMP) and the numpy fast-path
    time of each schedule it serves (iobs.recovery.fastls; same iterates as the torch solvers)."""
    from iobs.recovery import fastls

    obj = p.objective()
    ls = fastls.LSData(obj)
    thetas = {}
    for key, (name, opts, warm) in candidates(k, p.A.shape[0], p.d).items():
        t0 = time.process_time()
        if name == "htp" or not fastls.serves(name, opts):
            thetas[key] = SOLVERS[name](obj, k, **opts).theta.numpy()  # torch (HTP: see iobs.recovery.auto)
        else:
            start = thetas[warm] if warm else np.zeros(p.d)
            thetas[key] = fastls.run_schedule(ls, name, opts, k, start, SOLVERS[name].max_iter, 1e-10)[
                "theta"
            ]
        rec[key]["ftime"] = time.process_time() - t0  # CPU time: see recovery_suite.run_one
    noiseless = p.noise_std == 0
    for key, fn in (
        ("abess", suite.rb._abess(False)),
        ("abess-rs", suite.rb._abess(True)),
        ("omp", suite.rb._omp),
        ("cosamp", suite._ours("cosamp")),
    ):
        r = suite.run_one(key, suite._peer(fn) if key != "cosamp" else fn, p, k, noiseless)
        rec[key] = dict(ok=r["ok"], time=r["cpu"])


def collect_pt(args):
    """The 200×1000 Gaussian phase transition (benchmarks/recovery.py's pt case) on validation seeds
    7·10^6 + 100·k + t (its test seeds are 10^4·k + t): every schedule alone (numpy fast path, CPU
    time) and abess, one cell per k."""
    from iobs.recovery import fastls
    from iobs.recovery.problems import phase_transition

    cells = Path(args.cells)
    cells.mkdir(parents=True, exist_ok=True)
    for k in (60, 64, 68, 72, 76):
        path = cells / f"pt_k{k}.json"
        if path.exists():
            continue
        recs = []
        for t in range(args.trials):
            p = phase_transition(k, n=200, d=1000, seed=7_000_000 + 100 * k + t)
            obj, rec = p.objective(), {"f0": 0.5 * float(p.y @ p.y)}
            ls = fastls.LSData(obj)
            for key, (name, opts, warm) in candidates(k, 200, 1000).items():
                if warm or name == "htp":
                    continue
                t0 = time.process_time()
                out = fastls.run_schedule(ls, name, opts, k, np.zeros(1000), SOLVERS[name].max_iter, 1e-10)
                dt = time.process_time() - t0
                th = torch.from_numpy(out["theta"])
                ok = float((th - p.theta_star).norm() / p.theta_star.norm()) < 1e-4
                rec[key] = dict(
                    f=out["history"][-1]["objective"], ok=ok, time=dt, ftime=dt, it=out["n_iter"], z=0.0
                )
            for key, fn in (("abess", suite.rb._abess(False)), ("abess-rs", suite.rb._abess(True))):
                r = suite.run_one(key, suite._peer(fn), p, k, True)
                rec[key] = dict(ok=r["ok"], time=r["cpu"])
            rec.update(omp=rec["abess"], cosamp=rec["abess"], sp=rec["sp"], htp=rec["abess"])
            recs.append(rec)
        atomic_write_json(path, {"name": f"pt200x1000/k{k}", "m": 200, "k": k, "records": recs, "pass2": 3})
        print(f"pt k={k}", file=sys.stderr, flush=True)


def collect(args):
    cells = Path(args.cells)
    cells.mkdir(parents=True, exist_ok=True)
    g = suite.grid(False)
    picked = range(len(g)) if not args.classes else [int(i) for i in args.classes.split(",")]
    t0 = time.perf_counter()
    for ci in picked:
        c = g[ci]
        m = max(2, round(c["ratio"] * suite.N))
        ks = sorted({max(1, round(f * m)) for f in suite.FRACS})
        for k in ks:
            path = cells / f"rules_{suite.class_name(c).replace('/', '_')}_k{k}.json"
            if path.exists() and args.peers:
                d = json.loads(path.read_text())
                if "abess" in d["records"][0] and "ftime" in d["records"][0]["htp"] and d.get("pass2") == 3:
                    continue
                for t, rec in enumerate(d["records"]):
                    p = make_problem(m, suite.N, k, c["amp"], c["design"], c["snr"], seed=1000 + t)
                    retime(p, k, rec)
                d["pass2"] = 3
                atomic_write_json(path, d)
                print(
                    f"[{time.perf_counter() - t0:7.1f}s] peers {suite.class_name(c)} k={k}", file=sys.stderr
                )
                continue
            if path.exists() or args.peers:
                continue
            recs = []
            for t in range(args.trials):
                p = make_problem(m, suite.N, k, c["amp"], c["design"], c["snr"], seed=1000 + t)
                recs.append(run_problem(p, k, c["snr"] is None))
            atomic_write_json(
                path, {"name": suite.class_name(c), "class": c, "m": m, "k": k, "records": recs}
            )
            print(
                f"[{time.perf_counter() - t0:7.1f}s] {suite.class_name(c)} k={k}", file=sys.stderr, flush=True
            )


# ----------------------------------------------------------------------------------------------
# the offline simulation of portfolio rules
# ----------------------------------------------------------------------------------------------
def load(cells: Path) -> dict:
    out: dict = {}
    for path in sorted(cells.glob("rules_*.json")) + sorted(cells.glob("pt_*.json")):
        d = json.loads(path.read_text())
        if d.get("pass2") != 3:
            continue  # not through the second pass yet
        e = out.setdefault(d["name"], {"m": d["m"], "recs": []})
        e["recs"] += [dict(r, k=d["k"]) for r in d["records"]]
    return out


def simulate(
    rec, order, exact=True, agree=True, zc=None, maxrun=None, idle=None, tkey="ftime", order_nd=None, minrun=0
):
    """(ok, time, runs) of one rule on one problem: lowest f among the schedules run in ``order``.
    Stops: ``exact`` f ≤ 1e-20·f(0); ``agree`` a run with the best run's f (same support); ``zc`` the
    best run's z ≤ zc·√(2 ln d / n); ``maxrun`` runs; ``idle`` runs in a row without a new best (not
    before ``minrun`` runs). ``order_nd``: the order used instead on the n ≥ N classes."""
    best, total, runs, since = None, 0.0, 0, 0
    if order_nd is not None and rec["n"] >= suite.N:
        order = order_nd  # the n ≥ d classes
    thr = None if zc is None else zc * math.sqrt(2 * math.log(suite.N) / rec["n"])
    for key in order:
        if key not in rec:
            continue
        r = rec[key]
        total += r[tkey]
        runs += 1
        same = best is not None and abs(r["f"] - best["f"]) <= 1e-10 * best["f"]
        if best is None or r["f"] < best["f"] - 1e-12 * abs(best["f"]):
            best, since = r, 0
        else:
            since += 1
        if idle is not None and since >= idle and runs >= minrun:
            break
        if exact and best["f"] <= 1e-20 * rec["f0"]:
            break
        if agree and same:
            break
        if thr is not None and best["z"] <= thr:
            break
        if maxrun is not None and runs >= maxrun:
            break
    return best["ok"], total, runs


def evaluate(data, rule) -> dict:
    """Per class: rate, median time, median time ÷ median abess time, best peer rate."""
    out = {}
    for name, e in data.items():
        recs = e["recs"]
        sims = [simulate(dict(r, n=e["m"]), **rule) for r in recs]
        peers = {
            p: float(np.mean([r[p]["ok"] for r in recs])) for p in ("abess", "abess-rs", "omp", "cosamp")
        }
        peers.update({p: float(np.mean([r[p]["ok"] for r in recs])) for p in ("sp", "htp")})
        ab = float(np.median([r["abess"]["time"] for r in recs]))
        t = float(np.median([s[1] for s in sims]))
        out[name] = dict(
            rate=float(np.mean([s[0] for s in sims])),
            peer=max(peers.values()),
            time=t,
            ratio=t / ab,
            runs=float(np.mean([s[2] for s in sims])),
        )
    return out


ORDER = ("k8", "gk", "sp", "k2", "htp", "e1")  # the first pass's portfolio, in its order


def rules() -> dict:
    """Every rule tried (name -> simulate options)."""
    r = {
        "old: 6 schedules, exact+agree": dict(order=ORDER),
        "old order, stop=none": dict(order=ORDER, exact=False, agree=False),
        "old order, exact only": dict(order=ORDER, agree=False),
    }
    for m in (1, 2, 3, 4):
        r[f"old order, exact+agree, at most {m}"] = dict(order=ORDER, maxrun=m)
    for i in (1, 2):
        r[f"old order, exact+agree, {i} runs without a new best"] = dict(order=ORDER, idle=i)
    orders = {
        "gk,k8,sp,k2,htp,e1": ("gk", "k8", "sp", "k2", "htp", "e1"),
        "sp,k8,gk,k2,htp,e1": ("sp", "k8", "gk", "k2", "htp", "e1"),
        "k8,gk,k2,sp,e1,htp": ("k8", "gk", "k2", "sp", "e1", "htp"),
        "k8,sp,gk,k2,htp,e1": ("k8", "sp", "gk", "k2", "htp", "e1"),
        "k8,gk,sp,k2 (no htp, e1)": ("k8", "gk", "sp", "k2"),
        "k8,gk,sp,k2,e1 (no htp)": ("k8", "gk", "sp", "k2", "e1"),
        "k4,gk,sp,k2,htp,e1": ("k4", "gk", "sp", "k2", "htp", "e1"),
        "k8,k8+e1,gk,sp,k2,htp,e1": ("k8", "k8+e1", "gk", "sp", "k2", "htp", "e1"),
    }
    for name, order in orders.items():
        r[f"{name}, exact+agree"] = dict(order=order)
        r[f"{name}, exact+agree, at most 3"] = dict(order=order, maxrun=3)
        r[f"{name}, exact+agree, 2 runs without a new best"] = dict(order=order, idle=2)
    chosen = ("k4", "gk", "k2", "e1", "k8", "sp")
    r["CHOSEN: k4,gk,k2,e1,k8,sp, exact + 1 without a new best; n ≥ d: k4 alone"] = dict(
        order=chosen, idle=1, order_nd=("k4",)
    )
    nd = {
        "glob,glob+e1 (first pass)": ("glob", "glob+e1"),
        "glob,glob+e1,k4,gk,k2": ("glob", "glob+e1", "k4", "gk", "k2"),
        "k4 alone": ("k4",),
        "k8,k4": ("k8", "k4"),
        "k4,k8,gk,k2": ("k4", "k8", "gk", "k2"),
        "sp,k4,k8,gk": ("sp", "k4", "k8", "gk"),
    }
    for name, order in nd.items():
        r[f"n ≥ d: {name}, exact + 1 without a new best"] = dict(order=chosen, idle=1, order_nd=order)
    for zc in (0.8, 0.9, 1.0):
        r[f"old order, exact+agree, z ≤ {zc}·√(2 ln d/n)"] = dict(order=ORDER, zc=zc)
    return r


POOL = ("k8", "gk", "sp", "k2", "e1", "k4")


def searched() -> dict:
    """The search: every ordered triple and quadruple of POOL (exact + agree stops, nothing after the
    last), and every quadruple followed by the rest of POOL with 1 or 2 runs without a new best."""
    r = {}
    for n in (3, 4):
        for order in itertools.permutations(POOL, n):
            r[",".join(order) + ", exact+agree"] = dict(order=order)
    for order in itertools.permutations(POOL, 4):
        rest = tuple(x for x in POOL if x not in order)
        for idle in (1, 2):
            r[",".join(order + rest) + f", exact+agree, {idle} without a new best"] = dict(
                order=order + rest, idle=idle
            )
    return r


def score(ev) -> tuple:
    """Lexicographic: classes below the best peer, classes over 3x abess, Σ max(0, ratio − 3)."""
    fails = sum(v["rate"] < v["peer"] - 1e-12 for v in ev.values())
    slow = sum(v["ratio"] > 3 for v in ev.values())
    return fails, slow, sum(max(0.0, v["ratio"] - 3) for v in ev.values())


def report(data, out=None, search=False) -> str:
    rows = []
    for name, rule in (searched() if search else rules()).items():
        ev = evaluate(data, rule)
        fails = [c for c, v in ev.items() if v["rate"] < v["peer"] - 1e-12]
        slow = [c for c, v in ev.items() if v["ratio"] > 3]
        rows.append(
            {
                "rule": name,
                "classes rate < best peer": len(fails),
                "mean rate margin": f"{np.mean([v['rate'] - v['peer'] for v in ev.values()]):+.3f}",
                "worst margin": f"{min(v['rate'] - v['peer'] for v in ev.values()):+.3f}",
                "classes time > 3x abess": len(slow),
                "median ratio": f"{np.median([v['ratio'] for v in ev.values()]):.2f}",
                "max ratio": f"{max(v['ratio'] for v in ev.values()):.2f}",
                "mean runs": f"{np.mean([v['runs'] for v in ev.values()]):.2f}",
                "_score": score(ev),
            }
        )
    if search:
        rows.sort(key=lambda x: x["_score"])
    for row in rows:
        row.pop("_score")
    text = markdown_table(rows)
    if out:
        atomic_write_text(out, text)
    return text


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--cells", default="/tmp/recovery_rules_cells")
    ap.add_argument("--classes", default=None)
    ap.add_argument("--simulate", action="store_true")
    ap.add_argument("--peers", action="store_true", help="second pass: peers and fast-path times")
    ap.add_argument("--out", default=None)
    ap.add_argument("--search", action="store_true", help="with --simulate: the searched rules, ranked")
    ap.add_argument("--pt", action="store_true", help="collect the 200×1000 phase transition instead")
    a = ap.parse_args()
    if a.pt:
        collect_pt(a)
        sys.exit(0)
    if a.simulate:
        print(report(load(Path(a.cells)), a.out, a.search))
    else:
        collect(a)
