"""SparseGPT layer-solver speed against this machine's matmul rate and a plain column-by-column OBS.

For every layer shape (d_out × d_in) it times, in the same run and with the same torch thread count:

* ``ours``: ``iobs.obs.sparsegpt.sparsegpt`` (blocked, lazy batched updates), 50 % unstructured;
* ``plain``: an unblocked column-by-column OBS written here: the same damped Hinv Cholesky factor and
  the same mask rule, but every column's update is applied at once to all later columns
  (W[:, i:] -= err ⊗ U[i, i:]), i.e. without lazy batching. Its result must equal ours (printed);
* the matmul rate: float32 n×n GEMM (n = 2048 by default), 2n³ flop per product, sampled around every
  timed run (the other jobs on a shared machine change it during the run).

FLOP count (multiply and add counted separately) of the work SparseGPT needs: the factor U = R⁻¹ with
H_λ = R Rᵀ, i.e. a Cholesky (d_in³/3) and a triangular inverse (d_in³/3) — our recursive inverse performs
more, which counts against us — plus the updates, each column's error applied once to every later
column as scheduled (rank-1 inside 32-column sub-blocks, then sub-block and block trailing products),
about d_out·d_in² in total. "% of matmul" = (flop / time) / matmul rate.

Usage:
    .venv/bin/python benchmarks/layer_solver_speed.py --threads 2 \
        --out benchmarks/results/layer_solver_speed.md
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import torch

from iobs._validate import n_pruned
from iobs.obs.damping import inverse_cholesky
from iobs.obs.layer import layer_error
from iobs.obs.sparsegpt import INNER, sparsegpt
from iobs.utils import atomic_write_text, markdown_table

SMOLLM2_SHAPES = [
    ("q_proj / o_proj", 576, 576),
    ("k_proj / v_proj", 192, 576),
    ("gate_proj / up_proj", 1536, 576),
    ("down_proj", 576, 1536),
    ("square 4096", 4096, 4096),
]


class MatmulMeter:
    """Float32 n×n GEMM rate sampled for ``seconds`` at a time around each solver run; the reported rate is
    total flop / total time over all samples, so it sees the same (shared-machine) load as the runs."""

    def __init__(self, n: int, device, seconds: float = 1.0):
        self.a = torch.randn(n, n, device=device)
        self.b = torch.randn(n, n, device=device)
        self.n, self.device, self.seconds = n, device, seconds
        self.a @ self.b  # warm up
        self.reset()

    def reset(self):
        self.flop, self.wall, self.cpu = 0.0, 0.0, 0.0

    def sample(self):
        sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < self.seconds:
            self.a @ self.b
            sync(self.device)
            self.flop += 2 * self.n**3
        self.wall += time.perf_counter() - t0
        self.cpu += time.process_time() - c0

    def rates(self) -> tuple[float, float]:
        return self.flop / self.wall, self.flop / self.cpu


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def sparsegpt_flops(rows: int, cols: int, blocksize: int = 128, inner: int = INNER) -> float:
    """Flops of the factorisations plus the update schedule of iobs.obs.sparsegpt."""
    flops = 2 / 3 * cols**3
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        for j1 in range(i1, i2, inner):
            j2 = min(j1 + inner, i2)
            flops += sum(2 * rows * (j2 - i) for i in range(j1, j2))  # rank-1 updates in the sub-block
            flops += 2 * rows * (j2 - j1) * (i2 - j2)  # sub-block -> rest of block
        flops += 2 * rows * (i2 - i1) * (cols - i2)  # block -> later columns
    return flops


def plain_obs(
    W: torch.Tensor, H: torch.Tensor, sparsity: float, blocksize: int = 128, percdamp: float = 0.01
):
    """Unblocked column-by-column OBS with the same damping, mask rule and Hinv factor as SparseGPT:
    after each column, its error updates all later columns at once (in place, contiguous layout)."""
    rows, cols = W.shape
    Wt = W.t().contiguous()  # column i of W is row i of Wt
    Wt[torch.diagonal(H) == 0] = 0
    U, _ = inverse_cholesky(H, percdamp)  # the same factor: the ratio measures the update schedule
    keep = torch.ones_like(Wt, dtype=torch.bool)
    for i in range(cols):
        if i % blocksize == 0:
            i2 = min(i + blocksize, cols)
            score = (Wt[i:i2] / torch.diagonal(U)[i:i2, None]).square().t().reshape(-1)
            p = n_pruned(sparsity, rows * i2) - n_pruned(sparsity, rows * i)
            block = torch.ones_like(score, dtype=torch.bool)
            # prune the p lowest scores; among ties the lower index is kept
            order = torch.sort(score, descending=True, stable=True).indices
            block[order[score.numel() - p :]] = False
            keep[i:i2] = block.reshape(rows, i2 - i).t()
        err = Wt[i].masked_fill(keep[i], 0) / U[i, i]
        Wt[i:].addr_(U[i, i:], err, alpha=-1)
    return Wt.masked_fill_(~keep, 0).t(), keep.t()


def layer_problem(rows: int, cols: int, device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    X = torch.randn(cols, cols + 256, generator=g)
    X = X * torch.exp(0.5 * torch.randn(cols, 1, generator=g))
    W = torch.randn(rows, cols, generator=g)
    return W.to(device), (X @ X.T).to(device)


def time_call(fn, device, repeats: int, meter: MatmulMeter | None = None):
    """Mean (wall seconds, process CPU seconds) over ``repeats`` runs and the last result; with a meter,
    the matmul rate is sampled before and after every run."""
    wall, cpu, out = 0.0, 0.0, None
    for _ in range(repeats):
        if meter is not None:
            meter.sample()
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        sync(device)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
        if meter is not None:
            meter.sample()
    return wall / repeats, cpu / repeats, out


def run_table(args, threads: int, device, shapes) -> tuple[list[dict], tuple | None]:
    torch.set_num_threads(threads)
    meter = MatmulMeter(args.matmul_n, device)
    rows_out = []
    for label, rows, cols in shapes:
        W, H = layer_problem(rows, cols, device)
        sparsegpt(W, H, 0.5, blocksize=args.blocksize)  # warm up
        meter.reset()
        t_ours, c_ours, (W_ours, mask_ours, _) = time_call(
            lambda W=W, H=H: sparsegpt(W, H, 0.5, blocksize=args.blocksize), device, args.repeats, meter
        )
        rate, rate_cpu = meter.rates()
        flops = sparsegpt_flops(rows, cols, args.blocksize)
        row = {
            "layer": label,
            "shape": f"{rows}x{cols}",
            "GFLOP": flops / 1e9,
            "matmul GFLOP/s": rate / 1e9,
            "ours s": t_ours,
            "ours GFLOP/s": flops / t_ours / 1e9,
            "% of matmul": 100 * flops / t_ours / rate,
            "% of matmul (CPU s)": 100 * flops / c_ours / rate_cpu if device.type == "cpu" else None,
            "plain s": None,
            "plain / ours": None,
            "masks differ": None,
            "error rel. diff": None,
        }
        if cols <= args.plain_max_cols:
            t_plain, _, (W_plain, mask_plain) = time_call(
                lambda W=W, H=H: plain_obs(W, H, 0.5, args.blocksize), device, 1
            )
            row["plain s"] = t_plain
            row["plain / ours"] = t_plain / t_ours
            same = mask_plain == mask_ours
            row["masks differ"] = int((~same).sum())
            e_ours, e_plain = layer_error(W, W_ours, H), layer_error(W, W_plain, H)
            row["error rel. diff"] = abs(e_plain - e_ours) / e_ours
        rows_out.append(row)
        print(f"done threads={threads} {label} {rows}x{cols}: ours {t_ours:.3f}s", flush=True)
    try:
        load = tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        load = None
    return rows_out, load


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="2", help="torch thread counts, comma-separated (default 2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2, help="mean of N timings for ours (default 2)")
    ap.add_argument("--blocksize", type=int, default=128)
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--plain-max-cols", type=int, default=4096, help="skip the plain OBS above this d_in")
    ap.add_argument("--only", default=None, help="comma-separated subset of shape labels (e.g. 'down_proj')")
    ap.add_argument("--out", default=None, help="also write the markdown report here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    shapes = SMOLLM2_SHAPES
    if args.only:
        wanted = {s.strip() for s in args.only.split(",")}
        shapes = [s for s in shapes if any(w in s[0] for w in wanted)]
    cpu = platform.processor() or platform.machine()
    try:
        model = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in model.splitlines() if "Model name" in ln), cpu)
    except OSError:
        model = cpu
    try:
        load0 = tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        load0 = None
    command = "benchmarks/layer_solver_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = "\n".join(
        [
            "# SparseGPT layer-solver speed",
            "",
            f"- command: `.venv/bin/python {command.strip()}`",
            f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; machine: {model}, nproc {os.cpu_count()}, "
            f"torch {torch.__version__}, device {device}; load average (1/5/15 min) at the start: {load0}. "
            "The machine is shared with other jobs: timings are noisy (plain: one run).",
            f"- matmul rate: float32 {args.matmul_n}² GEMM sampled for 1 s before and after every timed run "
            "of ours, total flop / total time (column 'matmul GFLOP/s'), so that it sees the same load; "
            f"'ours s' is the mean of {args.repeats} runs; '% of matmul' compares wall-clock rates, "
            "'(CPU s)' process CPU-time rates (meaningful with 1 thread: idle OpenMP threads spin)",
            "- FLOP: Cholesky and triangular inverse (2/3·d_in³) plus the updates (≈ d_out·d_in²); "
            "'masks differ': entries where float rounding flips a borderline choice, "
            "'error rel. diff': |e_plain − e_ours| / e_ours of the layer errors tr(ΔW H ΔWᵀ)",
            "- task: 50 % unstructured, blocksize "
            f"{args.blocksize}, float32, H = X Xᵀ from random inputs of log-normal scale; 'plain' = "
            "unblocked column-by-column OBS (same Hinv factor from iobs.obs.damping and the same mask "
            "rule, eager rank-1 updates of all later columns)",
            "",
        ]
    )
    for threads in (int(t) for t in args.threads.split(",")):
        rows_out, load = run_table(args, threads, device, shapes)
        text += f"\n## torch threads = {threads} (load average at the end: {load})\n\n"
        text += markdown_table(rows_out, floatfmt=".3g")
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
