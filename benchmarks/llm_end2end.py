"""End to end: wall time and peak RSS of `iobs prune smollm2-135m --method sparsegpt --sparsity 0.5`
(32 x 512 calibration tokens) against llm-compressor's SparseGPT (`oneshot`) in the same run.

Each side runs as its own process (start-up, imports, model load, calibration, pruning and saving the
checkpoint all included); peak RSS is that process's own maximum resident set (``os.wait4``). The
SmolLM2 checkpoint is converted to the cache before timing, so neither side pays for the GGUF
conversion. llm-compressor gets the same calibration ids as ours (saved tensor). Targets: ours faster
(ratio printed) and peak RSS <= 4 GB.

    bash benchmarks/peers/setup.sh        # once
    .venv/bin/python benchmarks/llm_end2end.py [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llm_common import ROOT, header, peers_available, run_peer, run_timed, set_threads  # noqa: E402

from iobs.data.calibration import calibration_batch  # noqa: E402
from iobs.models import MODELS, load_model  # noqa: E402
from iobs.models.loader import ensure_cached  # noqa: E402
from iobs.utils import atomic_write_text, markdown_table  # noqa: E402

RSS_LIMIT = 4e9


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument(
        "--repeats", type=int, default=1, help="alternating runs of each side; best wall time kept"
    )
    p.add_argument("--work", default=str(ROOT / "runs" / "bench-llm-end2end"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "llm_end2end.md"))
    p.add_argument("--threads", type=int, default=0, help="torch/OpenMP threads for every side (0 = default)")
    args = p.parse_args(argv)
    set_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    ckpt = ensure_cached(MODELS["smollm2-135m"])  # conversion is not part of either timing
    _, tok = load_model("smollm2-135m")
    calib = calibration_batch(tok, "wiki", args.nsamples, args.seqlen, 0)
    calib_path = work / "calib.pt"
    torch.save(calib, calib_path)
    peer_reason = peers_available()

    runs = {"ours": [], "llmc": []}
    for i in range(args.repeats):
        out = work / "ours"
        cmd = [
            str(ROOT / ".venv" / "bin" / "iobs"),
            "prune",
            "smollm2-135m",
            "--method",
            "sparsegpt",
            "--sparsity",
            "0.5",
            "--nsamples",
            str(args.nsamples),
            "--seqlen",
            str(args.seqlen),
            "--calib",
            "wiki",
            "--out",
            str(out),
            "--overwrite",
            "--no-resume",
            "--quiet",
        ]
        r = run_timed(cmd, work / f"ours-{i}.log")
        report = json.loads((out / "report.json").read_text())
        r["inner"] = report.get("timings", {})
        runs["ours"].append(r)
        print("ours", json.dumps({k: v for k, v in r.items() if k != "cmd"}), flush=True)
        if peer_reason is None:
            out = work / "llmc"
            shutil.rmtree(out, ignore_errors=True)
            r = run_peer(ckpt, calib_path, "sparsegpt", "0.5", out, work / f"llmc-{i}.log")
            r["inner"] = {"oneshot_s": json.loads((out / "iobs_peer_run.json").read_text())["oneshot_s"]}
            runs["llmc"].append(r)
            print("llmc", json.dumps({k: v for k, v in r.items() if k != "cmd"}), flush=True)

    best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in runs.items() if v}
    rows = []
    for name, label in (
        ("ours", "iobs prune (sparsegpt 50%)"),
        ("llmc", "llm-compressor oneshot SparseGPT 50%"),
    ):
        if name not in best:
            continue
        b = best[name]
        inner = ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in b["inner"].items())
        rows.append(
            {
                "run": label,
                "wall s": f"{b['wall_s']:.1f}",
                "peak RSS GB": f"{b['peak_rss_bytes'] / 1e9:.2f}",
                "inner timings s": inner,
                "runs": len(runs[name]),
            }
        )
    text = header(
        "End to end: pruning SmolLM2-135M with SparseGPT, ours vs llm-compressor",
        [sys.argv[0], *sys.argv[1:]],
    )
    text += (
        f"- calibration: {args.nsamples} x {args.seqlen} tokens from wiki-calib, the same ids for both\n"
        "- each side a separate process, from start-up to the saved checkpoint; best of the runs\n"
        f"- benchmark run time: {(time.time() - started) / 60:.1f} min\n\n"
    )
    text += markdown_table(rows) + "\n### Targets\n\n"
    o = best["ours"]
    if "llmc" in best:
        ratio = best["llmc"]["wall_s"] / o["wall_s"]
        text += (
            f"- {'PASS' if ratio > 1 else 'MISS'}: ours faster than llm-compressor: speed-up {ratio:.2f}x "
            f"({o['wall_s']:.1f} s vs {best['llmc']['wall_s']:.1f} s)\n"
        )
    else:
        text += f"- llm-compressor not run: {peer_reason}\n"
    ok = o["peak_rss_bytes"] <= RSS_LIMIT
    text += f"- {'PASS' if ok else 'MISS'}: peak RSS {o['peak_rss_bytes'] / 1e9:.2f} GB <= 4 GB\n"
    atomic_write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
