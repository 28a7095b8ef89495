"""Scaling benchmark of ``iobs prune``: peak memory and time in-memory vs ``--stream``, 1 process (1 and 2
threads) vs 2 processes (``--nproc 2``, gloo, 1 thread each), and a synthetic deep model (random weights,
SmolLM2's block at 1x and 4x its depth) to show whether peak memory is flat in depth.

Every row runs ``iobs prune`` as a subprocess; peak RSS is the peak of the summed resident memory of the
whole process tree (launcher + workers), sampled every 0.1 s with psutil. Outputs are compared with the
row's reference (the 1-process 1-thread run of the same model): mask agreement and max |ΔW|.
Rows are appended to benchmarks/results/scale.jsonl and skipped when already there (resumable); the
markdown table goes to benchmarks/results/scale.md. Rows that need ``--stream`` are recorded as
pending while this build's ``iobs prune`` has no such flag.

    .venv/bin/python benchmarks/scale.py --nsamples 8 --seqlen 256
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llm_common import ROOT, header, python

RESULTS = ROOT / "benchmarks" / "results"
#: row name -> (model kind, depth multiple, extra flags, threads); model kind "smollm2" or "synthetic"
ROWS = {
    "smollm2 in-memory, 1 proc x 1 thread": ("smollm2", 1, [], 1),
    "smollm2 in-memory, 2 procs x 1 thread (gloo)": ("smollm2", 1, ["--nproc", "2"], 1),
    "smollm2 in-memory, 1 proc x 2 threads": ("smollm2", 1, [], 2),
    "smollm2 --stream, 1 proc x 1 thread": ("smollm2", 1, ["--stream"], 1),
    "smollm2 --stream, 2 procs x 1 thread (gloo)": ("smollm2", 1, ["--stream", "--nproc", "2"], 1),
    "smollm2 in-memory, 1 proc x 1 thread, samples reversed (float-order control)": ("control", 1, [], 1),
    "synthetic 1x depth in-memory": ("synthetic", 1, [], 1),
    "synthetic 4x depth in-memory": ("synthetic", 4, [], 1),
    "synthetic 1x depth --stream": ("synthetic", 1, ["--stream"], 1),
    "synthetic 4x depth --stream": ("synthetic", 4, ["--stream"], 1),
}
REFERENCE = {"smollm2": "smollm2 in-memory, 1 proc x 1 thread"}


def sample_tree(proc, cpu: dict) -> int:
    """Summed RSS (bytes) of ``proc`` and all its descendants; ``cpu[pid]`` = each one's latest user+system
    seconds (a process that exits between samples loses at most its last 0.1 s)."""
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            with p.oneshot():
                total += p.memory_info().rss
                t = p.cpu_times()
                cpu[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return total


def run_row(cmd: list[str], env: dict, log: Path) -> dict:
    """Run ``cmd``; wall seconds, the peak summed RSS and the CPU seconds of its process tree."""
    import psutil

    t0 = time.perf_counter()
    cpu: dict[int, float] = {}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        ps, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            peak = max(peak, sample_tree(ps, cpu))
            time.sleep(0.1)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    return {
        "wall_s": wall,
        "peak_tree_rss_bytes": peak,
        "cpu_s": sum(cpu.values()),
        "max_proc_cpu_s": max(cpu.values(), default=0.0),  # the launcher, a worker or the one process
    }


def has_stream_flag() -> bool:
    r = subprocess.run(
        [python(), "-m", "iobs.cli", "prune", "--help"], capture_output=True, text=True, cwd=ROOT, env=_env(1)
    )
    return "--stream" in r.stdout


def _env(threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    return env


def smollm2_dir() -> Path:
    """The packaged SmolLM2 as an ordinary safetensors checkpoint (the iobs cache)."""
    from iobs.models.loader import MODELS, ensure_cached

    return ensure_cached(MODELS["smollm2-135m"])


def synthetic_dir(depth: int, work: Path) -> Path:
    """SmolLM2's architecture with ``depth`` x its 30 blocks, random weights (seed 0), saved with its
    tokenizer; built once per depth in ``work``."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    out = work / f"synthetic-{depth}x"
    if (out / "config.json").exists():
        return out
    src = smollm2_dir()
    config = AutoConfig.from_pretrained(src)
    config.num_hidden_layers *= depth
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tmp = work / f"synthetic-{depth}x.tmp"
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def prune_cmd(model: Path, flags: list[str], threads: int, args, out: Path) -> list[str]:
    synthetic = "synthetic" in str(model)
    method = args.depth_method if synthetic else args.method
    ev = [] if synthetic else ["--eval", "wiki-test", "--eval-max-windows", str(args.eval_windows)]
    return [
        python(), "-m", "iobs.cli", "prune", str(model), "--method", method, "--sparsity", "0.5",
        "--calib", "wiki", "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
        "--threads", str(threads), "--quiet", "--out", str(out), *ev, *flags,
    ]  # fmt: skip


def load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def compare(ref: Path, other: Path) -> dict:
    """Mask agreement over the pruned (2-D, in-block) weights and max |ΔW| over all tensors."""
    a, b = load_weights(ref), load_weights(other)
    if set(a) != set(b):
        return {"same_tensors": False}
    agree = n = 0
    dmax, identical = 0.0, True
    for k, t in a.items():
        identical &= bool((t == b[k]).all())
        dmax = max(dmax, float((t.double() - b[k].double()).abs().max()))
        if t.dim() == 2 and ".layers." in k:
            agree += int(((t != 0) == (b[k] != 0)).sum())
            n += t.numel()
    return {"same_tensors": True, "bit_identical": identical, "max_abs_dw": dmax, "mask_agreement": agree / n}


def reference(name: str) -> str | None:
    """The row another row is compared with: 1 process x 1 thread in memory, same model and depth."""
    kind, depth, flags, threads = ROWS[name]
    if kind in ("smollm2", "control"):
        ref = REFERENCE["smollm2"]
    else:
        ref = f"synthetic {depth}x depth in-memory"
    return None if ref == name else ref


def run_all(args, done: dict, jsonl: Path) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    stream = has_stream_flag()
    for name in args.rows:
        kind, depth, flags, threads = ROWS[name]
        if name in done and "pending" not in done[name] and not args.force:
            continue
        if "--stream" in flags and not stream:
            rec = {"row": name, "pending": "this build's iobs prune has no --stream yet"}
        elif "--stream" in flags and "--nproc" in flags:
            rec = {
                "row": name,
                "pending": "refused by iobs prune: the streamed walk has no distributed form yet",
            }
        else:
            model = synthetic_dir(depth, work) if kind == "synthetic" else smollm2_dir()
            out = work / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
            shutil.rmtree(out, ignore_errors=True)
            print(f"running: {name}", flush=True)
            load = os.getloadavg()[0]
            cmd = prune_cmd(model, flags, threads, args, out)
            if kind == "control":
                cmd = [python(), str(Path(__file__).resolve()), "--control", json.dumps(cmd[3:])]
            rec = {"row": name, **run_row(cmd, _env(threads), work / f"{out.name}.log")}
            report = json.loads((out / "report.json").read_text())
            rec["ppl"] = {k: v["ppl"] for k, v in report.get("eval", {}).items()}
            rec.update(
                timings=report["timings"], out=str(out), load_before=load, load_after=os.getloadavg()[0]
            )
            ref = reference(name)
            if ref and ref in done and "out" in done[ref]:
                rec["vs_ref"] = compare(Path(done[ref]["out"]), out)
        rec["settings"] = settings(args)
        if args.note:
            rec["note"] = args.note
        done[name] = rec
        with open(jsonl, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps({k: v for k, v in rec.items() if k != "timings"}), flush=True)


def fill_comparisons(done: dict, jsonl: Path) -> None:
    """Compare rows that finished before their reference did (rows run by separate invocations)."""
    for name, rec in done.items():
        ref = done.get(reference(name) or "")
        if "out" in rec and "vs_ref" not in rec and ref and "out" in ref and Path(ref["out"]).exists():
            rec["vs_ref"], rec["filled"] = compare(Path(ref["out"]), Path(rec["out"])), True
            with open(jsonl, "a") as f:
                f.write(json.dumps(rec) + "\n")


def settings(args) -> dict:
    return {
        "method": args.method,
        "depth_method": args.depth_method,
        "nsamples": args.nsamples,
        "seqlen": args.seqlen,
        "eval_windows": args.eval_windows,
    }


def load_done(jsonl: Path, args) -> dict:
    done = {}
    if jsonl.exists():
        for line in jsonl.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("settings") == settings(args):
                done[rec["row"]] = rec
    return done


COLUMNS = (
    "row", "wall s", "prune s", "CPU s: all / busiest process", "load before / after", "peak RSS GiB",
    "speedup: wall / prune / CPU path", "RSS ratio", "ppl wiki-test", "masks agree", "max abs dW",
    "bit-identical",
)  # fmt: skip


def _cells(rec: dict, ref: dict) -> list[str]:
    """The table cells of one finished row; ratios against ``ref`` (empty when it is the reference)."""
    t = rec["timings"]
    speed = rss = ""
    if "wall_s" in ref:
        cpu_path = ref["max_proc_cpu_s"] / max(rec["max_proc_cpu_s"], 1e-9)
        speed = (
            f"{ref['wall_s'] / rec['wall_s']:.2f}x / {ref['timings']['prune_s'] / t['prune_s']:.2f}x / "
            f"{cpu_path:.2f}x"
        )
        rss = f"{rec['peak_tree_rss_bytes'] / ref['peak_tree_rss_bytes']:.2f}"
    v = rec.get("vs_ref", {})
    return [
        f"{rec['wall_s']:.1f}",
        f"{t['prune_s']:.1f}",
        f"{rec['cpu_s']:.0f} / {rec['max_proc_cpu_s']:.0f}",
        f"{rec['load_before']:.1f} / {rec['load_after']:.1f}",
        f"{rec['peak_tree_rss_bytes'] / 2**30:.2f}",
        speed,
        rss,
        ", ".join(f"{p:.3f}" for p in rec.get("ppl", {}).values()),
        f"{v['mask_agreement']:.4f}" if "mask_agreement" in v else "",
        f"{v['max_abs_dw']:.3g}" if "max_abs_dw" in v else "",
        str(v.get("bit_identical", "")),
    ]


def phases(done: dict) -> str:
    """Where the walk's time went, from each SmolLM2 row's report.json: the layer solves (per rank where
    split), the Hessian passes and the rest of prune_s (capture + propagation of the pruned blocks)."""
    lines = [
        "| row | prune s | solves s (per rank) | H passes s | capture + propagation s |",
        "|---|---|---|---|---|",
    ]
    for name, rec in done.items():
        if "out" not in rec or ROWS[name][0] == "synthetic" or not Path(rec["out"], "report.json").exists():
            continue
        layers = json.loads(Path(rec["out"], "report.json").read_text())["layers"]
        ranks = sorted({r.get("rank", 0) for r in layers})
        per = [sum(r["seconds"] for r in layers if r.get("rank", 0) == k) for k in ranks]
        h = sum(r["hessian_seconds"] for r in layers)
        prune = rec["timings"]["prune_s"]
        rest = prune - h - max(per)
        lines.append(
            f"| {name} | {prune:.1f} | {' / '.join(f'{x:.1f}' for x in per)} | {h:.1f} | {rest:.1f} |"
        )
    return "\n".join(lines) + "\n"


def runs(jsonl: Path, args, names: tuple[str, ...]) -> str:
    """Every recorded run of ``names`` with these settings (the main table shows the latest): on a shared
    machine the same row's time moves with the load, and the table should show how much."""
    lines = [
        "| run | row | wall s | prune s | CPU s: all / busiest | load before / after |",
        "|---|---|---|---|---|---|",
    ]
    k = 0
    for line in jsonl.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("row") in names and rec.get("settings") == settings(args) and "wall_s" in rec:
            if rec.get("filled"):  # the same run again, with its comparison added
                continue
            k += 1
            lines.append(
                f"| {k} | {rec['row']} | {rec['wall_s']:.1f} | {rec['timings']['prune_s']:.1f} | "
                f"{rec['cpu_s']:.0f} / {rec['max_proc_cpu_s']:.0f} | "
                f"{rec['load_before']:.1f} / {rec['load_after']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def targets(done: dict) -> str:
    """The issue's targets, each met or missed, from the rows present."""

    def get(name, key):
        rec = done.get(name, {})
        return rec.get(key) if "pending" not in rec else None

    out = []
    one, two = "smollm2 in-memory, 1 proc x 1 thread", "smollm2 in-memory, 2 procs x 1 thread (gloo)"
    if get(one, "wall_s") and get(two, "wall_s"):
        w, p = (
            done[one]["wall_s"] / done[two]["wall_s"],
            done[one]["timings"]["prune_s"] / done[two]["timings"]["prune_s"],
        )
        verdict = (
            "met"
            if w >= 1.5
            else ("met for the walk (prune_s), missed for the whole command" if p >= 1.5 else "missed")
        )
        out.append(
            f"2 processes >= 1.5x one process x 1 thread: whole command {w:.2f}x, walk {p:.2f}x: {verdict}"
        )
    rss = {name: get(name, "peak_tree_rss_bytes") for name in ROWS}
    mem, st = rss["smollm2 in-memory, 1 proc x 1 thread"], rss["smollm2 --stream, 1 proc x 1 thread"]
    if mem and st:
        verdict = "met" if st <= 0.4 * mem else "missed"
        out.append(f"streaming peak RSS <= 40 % of in-memory on SmolLM2: {st / mem:.0%}: {verdict}")
    for mode in ("--stream", "in-memory"):
        a, b = rss[f"synthetic 1x depth {mode}"], rss[f"synthetic 4x depth {mode}"]
        if a and b:
            verdict = (
                ("met" if abs(b / a - 1) <= 0.1 else "missed") if mode == "--stream" else "for comparison"
            )
            target = "target for --stream" if mode == "--stream" else "no target"
            out.append(
                f"peak RSS {mode}, 1x to 4x depth, flat within 10 % ({target}): {b / a - 1:+.0%}: {verdict}"
            )
    return "".join(f"- target: {line}\n" for line in out)


def table(done: dict) -> str:
    """One line per row: time, memory, ratios against the row's reference, output agreement."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name in ROWS:
        rec = done.get(name)
        if rec is None:
            continue
        if "pending" in rec:
            cells = [f"pending: {rec['pending']}"] + [""] * (len(COLUMNS) - 2)
        else:
            cells = _cells(rec, done.get(reference(name) or "", {}))
        label = f"{name} ({rec['note']})" if rec.get("note") else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def control(prune_argv: list[str]) -> int:
    """`iobs prune` with the calibration samples in reverse order: the same H up to the order of its float
    sums, i.e. the size of difference any reordering (such as the split over processes) makes."""
    import torch

    import iobs.prune.decoder as decoder

    walk = decoder.prune_decoder

    def reversed_walk(model, calib_ids, *a, **kw):
        return walk(model, torch.flip(calib_ids, dims=[0]), *a, **kw)

    import iobs.prune.api as api

    api.prune_decoder = reversed_walk
    from iobs.cli import main as cli

    return cli(prune_argv)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument(
        "--eval-windows", type=int, default=8, help="wiki-test windows (of --seqlen) per SmolLM2 row"
    )
    p.add_argument("--method", default="sparsegpt", help="layer solver of the SmolLM2 rows")
    p.add_argument("--depth-method", default="magnitude", help="layer solver of the synthetic-depth rows")
    p.add_argument("--rows", type=lambda s: s.split(";"), default=list(ROWS), help="';'-separated row names")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "iobs-scale"))
    p.add_argument("--table-only", action="store_true")
    p.add_argument("--force", action="store_true", help="rerun --rows even when recorded (the latest counts)")
    p.add_argument("--note", default="", help="shown beside the rows this invocation runs (e.g. which tree)")
    p.add_argument("--header-note", action="append", default=[], help="a line for the table's header")
    p.add_argument("--control", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.control:
        return control(json.loads(args.control))
    bad = [r for r in args.rows if r not in ROWS]
    if bad:
        p.error(f"--rows: unknown {bad}; allowed: {list(ROWS)}")
    jsonl = RESULTS / "scale.jsonl"
    done = load_done(jsonl, args)
    if not args.table_only:
        run_all(args, done, jsonl)
    fill_comparisons(done, jsonl)
    text = header("iobs prune at scale: memory and time", [sys.argv[0], *(argv or sys.argv[1:])])
    text += (
        f"- protocol (trimmed): {args.nsamples}x{args.seqlen} wiki calibration tokens, "
        f"{args.method} 50 % on SmolLM2, {args.depth_method} 50 % on the synthetic rows; "
        "peak RSS = summed RSS of the process tree (0.1 s samples)\n"
    )
    text += "".join(f"- {line}\n" for line in args.header_note) + "\n"
    text += targets(done) + "\n" + table(done) + "\n" + phases(done)
    text += "\nEvery run of the 1- and 2-process rows (the tables above show the latest):\n\n"
    text += runs(
        jsonl, args, ("smollm2 in-memory, 1 proc x 1 thread", "smollm2 in-memory, 2 procs x 1 thread (gloo)")
    )
    (RESULTS / "scale.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
