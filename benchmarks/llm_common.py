"""Shared pieces of the LLM benchmarks: machine facts, the peers' venv, running llm-compressor."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_PY = ROOT / ".venv-peers" / "bin" / "python"
#: 1-min load average when the benchmark process started (other jobs on the machine), None where unknown
LOAD_AT_START = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
PEER_RUNNER = ROOT / "benchmarks" / "peers" / "run_llmcompressor.py"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    load = ""
    if LOAD_AT_START is not None:
        load = (
            f", 1-min load average {LOAD_AT_START:.1f} at start and {os.getloadavg()[0]:.1f} when the table "
            "was written (the benchmark's own processes count in the second)"
        )
    return f"{cpu}, nproc {os.cpu_count()}{mem}{load}"


def set_threads(n: int) -> None:
    """n > 0: this process and every child (OMP_NUM_THREADS) use n threads. On a busy 2-core machine
    one thread is many times faster than two (OpenMP threads spin-wait for each other)."""
    if n > 0:
        import torch

        torch.set_num_threads(n)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(n)


def header(title: str, argv: list[str]) -> str:
    cmd = " ".join([".venv/bin/python", os.path.relpath(argv[0], ROOT), *argv[1:]])
    busy = LOAD_AT_START is None or LOAD_AT_START >= 1.0
    note = (
        "- note: other jobs were running when this benchmark started (or the load is unknown); timings are "
        "noisy, perplexities are not affected\n"
        if busy
        else "- note: the machine was idle when this benchmark started\n"
    )
    return (
        f"# {title}\n\n"
        f"- command: `{cmd}`\n"
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n"
        f"- machine: {machine()}\n"
        f"- torch threads: {os.environ.get('OMP_NUM_THREADS', 'default')}\n" + note
    )


def peers_available() -> str | None:
    """None when .venv-peers has llm-compressor, else the reason."""
    if not PEERS_PY.exists():
        return "no .venv-peers: run `bash benchmarks/peers/setup.sh` first"
    r = subprocess.run([str(PEERS_PY), "-c", "import llmcompressor"], capture_output=True, text=True)
    if r.returncode:
        return f".venv-peers cannot import llmcompressor: {r.stderr.strip().splitlines()[-1:]}"
    return None


def run_timed(cmd: list[str], log: Path | None = None, env: dict | None = None) -> dict:
    """Run ``cmd``; wall seconds and the child's own peak RSS (``os.wait4`` rusage, bytes)."""
    t0 = time.perf_counter()
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if log:
            out.close()
    wall = time.perf_counter() - t0
    if proc.returncode:
        tail = Path(log).read_text()[-3000:] if log else ""
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")
    return {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "cmd": [str(c) for c in cmd]}


def run_peer(model_dir: Path, calib_path: Path, method: str, target: str, out: Path, log: Path) -> dict:
    """llm-compressor's oneshot in .venv-peers on a plain checkpoint with our calibration ids."""
    flag = ["--pattern", target] if ":" in target else ["--sparsity", target]
    cmd = [
        str(PEERS_PY),
        str(PEER_RUNNER),
        "--model",
        str(model_dir),
        "--calib",
        str(calib_path),
        "--method",
        method,
        *flag,
        "--out",
        str(out),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_DATASETS_OFFLINE"] = "1"
    return run_timed(cmd, log, env)


def python() -> str:
    return sys.executable
