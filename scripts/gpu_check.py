"""The Python half of scripts/gpu-check.sh: compare a GPU and a CPU prune, time the layer solver against
the device's measured matmul rate, and write the markdown report.

    python scripts/gpu_check.py compare GPU_OUT CPU_OUT --label sparsegpt   # -> JSON line on stdout
    python scripts/gpu_check.py speed --device cuda                          # -> JSON line on stdout
    python scripts/gpu_check.py report RESULTS.jsonl REPORT.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

PPL_TOLERANCE = 0.01  # |ppl_gpu / ppl_cpu - 1| allowed


def load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        tensors.update(load_file(f))
    if not tensors:
        raise FileNotFoundError(f"no *.safetensors in {folder}")
    return tensors


def compare(gpu: Path, cpu: Path, label: str) -> dict:
    """Mask agreement of the decoder layers, max |ΔW|, and each evaluated perplexity's relative gap."""
    a, b = load_weights(gpu), load_weights(cpu)
    agree = n = 0
    dmax = 0.0
    for k, t in b.items():
        dmax = max(dmax, float((a[k].double() - t.double()).abs().max()))
        if t.dim() == 2 and ".layers." in k:
            agree += int(((a[k] != 0) == (t != 0)).sum())
            n += t.numel()
    rg, rc = (json.loads((Path(p) / "report.json").read_text()) for p in (gpu, cpu))
    ppl = {
        data: {"gpu": rg["eval"][data]["ppl"], "cpu": r["ppl"], "rel": rg["eval"][data]["ppl"] / r["ppl"] - 1}
        for data, r in rc["eval"].items()
    }
    ok = all(abs(v["rel"]) <= PPL_TOLERANCE for v in ppl.values())
    return {
        "kind": "compare",
        "label": label,
        "mask_agreement": agree / max(n, 1),
        "max_abs_dw": dmax,
        "ppl": ppl,
        "ppl_within_1pct": ok,
        "prune_s": {"gpu": rg["timings"]["prune_s"], "cpu": rc["timings"]["prune_s"]},
        "devices": {"gpu": rg["device"], "cpu": rc["device"]},
    }


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeat: int = 3) -> float:
    fn()  # warm-up (kernels, allocator)
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_rate(device, n: int, dtype) -> float:
    """Measured flop/s of an n x n x n matmul (2n³ flops), best of 3."""
    import torch

    A = torch.randn(n, n, device=device, dtype=dtype)
    B = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _timed(lambda: A @ B, device)


def solver_speed(device, shapes, dtype) -> list[dict]:
    """SparseGPT 50 % on random layers (W d_out x d_in, H = XXᵀ from 2·d_in tokens); the solve's
    nominal flops d_in³ (Cholesky, inverse, Cholesky) + 2·d_out·d_in² (the OBS updates) against the
    measured matmul rate."""
    import torch

    from iobs.obs.layer import prune_layer

    gen = torch.Generator().manual_seed(0)
    rows = []
    for d_out, d_in in shapes:
        W = torch.randn(d_out, d_in, generator=gen, dtype=dtype).to(device)
        X = torch.randn(2 * d_in, d_in, generator=gen, dtype=dtype).to(device)
        H = X.t() @ X
        s = _timed(lambda W=W, H=H: prune_layer(W, H, "sparsegpt", 0.5), device, repeat=2)
        flops = d_in**3 + 2 * d_out * d_in**2
        rows.append({"d_out": d_out, "d_in": d_in, "seconds": s, "flops_per_s": flops / s})
    return rows


def speed(device: str, quick: bool) -> dict:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # the solver runs in float32: compare like with like
    n = 1024 if quick else 8192
    shapes = (
        [(576, 1536), (1536, 576)] if quick else [(576, 1536), (4096, 4096), (4096, 11008), (11008, 4096)]
    )
    rate = matmul_rate(device, n, torch.float32)
    rows = solver_speed(device, shapes, torch.float32)
    for r in rows:
        r["fraction_of_matmul"] = r["flops_per_s"] / rate
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"
    return {"kind": "speed", "device": device, "name": name, "matmul_n": n, "matmul_flops_per_s": rate,
            "solver": rows}  # fmt: skip


def _compare_rows(recs: list[dict]) -> list[dict]:
    return [
        {
            "method (corpus)": f"{r['label']} ({data})",
            "mask agreement": f"{r['mask_agreement']:.6f}",
            "max abs dW": f"{r['max_abs_dw']:.3g}",
            "ppl GPU": f"{p['gpu']:.4f}",
            "ppl CPU": f"{p['cpu']:.4f}",
            "rel. gap": f"{100 * p['rel']:+.3f} %",
            "within 1 %": "yes" if abs(p["rel"]) <= PPL_TOLERANCE else "NO",
            "prune s GPU / CPU": f"{r['prune_s']['gpu']:.1f} / {r['prune_s']['cpu']:.1f}",
        }
        for r in recs
        if r["kind"] == "compare"
        for data, p in r["ppl"].items()
    ]


def _speed_lines(r: dict) -> list[str]:
    from iobs.utils import markdown_table

    rows = [
        {
            "layer d_out x d_in": f"{s['d_out']}x{s['d_in']}",
            "SparseGPT 50 % s": f"{s['seconds']:.4f}",
            "nominal Tflop/s": f"{s['flops_per_s'] / 1e12:.4f}",
            "fraction of matmul": f"{s['fraction_of_matmul']:.3f}",
        }
        for s in r["solver"]
    ]
    rate = r["matmul_flops_per_s"] / 1e12
    return [
        "",
        f"## Layer solver speed on {r['name']} ({r['device']})",
        "",
        f"float32 matmul {r['matmul_n']}^3: {rate:.3f} Tflop/s (TF32 off); nominal solve flops "
        "d_in^3 + 2 d_out d_in^2",
        "",
        markdown_table(rows),
    ]


def report(results: Path, out: Path) -> str:
    """The markdown report of one gpu-check run (every JSON line of ``results``)."""
    from iobs.utils import markdown_table

    recs = [json.loads(line) for line in Path(results).read_text().splitlines() if line.strip()]
    lines = ["# iobs GPU check", ""]
    for r in recs:
        if r["kind"] == "meta":
            lines += [f"- {k}: {v}" for k, v in r.items() if k != "kind"] + [""]
        elif r["kind"] == "tests":
            lines += [f"- CUDA tests: `{r['command']}` -> exit {r['rc']}: {r['summary']}", ""]
    lines += ["## GPU vs CPU prune", "", markdown_table(_compare_rows(recs))]
    for r in recs:
        if r["kind"] == "speed":
            lines += _speed_lines(r)
    text = "\n".join(lines) + "\n"
    Path(out).write_text(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare")
    c.add_argument("gpu")
    c.add_argument("cpu")
    c.add_argument("--label", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--device", default="cuda")
    s.add_argument("--quick", action="store_true")
    r = sub.add_parser("report")
    r.add_argument("results")
    r.add_argument("out")
    args = p.parse_args(argv)
    if args.cmd == "compare":
        print(json.dumps(compare(Path(args.gpu), Path(args.cpu), args.label)))
    elif args.cmd == "speed":
        print(json.dumps(speed(args.device, args.quick)))
    else:
        print(report(Path(args.results), Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
