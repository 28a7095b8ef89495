"""The I-OBS outer loop for networks (paper.md §4), independent of the model family.

Starting from the dense model, iteration t = 1..T:
  1. draw a fresh calibration batch  ``calibration(t)``;
  2. dense step on the current weights without a mask (skipped at t = 1, so that iteration 1 is exactly
     the one-shot layer solver, e.g. SparseGPT);
  3. sparse projection layer by layer (``project``), Hessians from inputs through already-pruned layers,
     target = the dense-stepped weights;
  4. evaluate (``evaluate`` returns a dict of metrics) and keep the best iteration by ``select``.
At the end the best iteration's weights are restored (the paper's star).

Resumable: with ``state_dir`` the weights after each finished iteration and the history are persisted
atomically; a rerun continues after the last finished iteration and gives the same result because
calibration batches and dense-step seeds depend only on t.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from iobs.utils import atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class LoopResult:
    """Per-iteration ``history`` (iteration 0 = the dense model when evaluated), the ``best`` iteration."""

    history: list[dict]
    best: int
    select: str
    stopped: str | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "history": self.history,
            "best_iteration": self.best,
            "select": self.select,
            "stopped": self.stopped,
            **self.extra,
        }


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _save_state(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_model(model, str(tmp))
    os.replace(tmp, path)


def _load_state(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_model

    load_model(model, str(path), strict=True, device=str(next(model.parameters()).device))


def _finite_params(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def run_iobs(
    model: nn.Module,
    *,
    iterations: int,
    calibration: Callable[[int], object],
    project: Callable[[nn.Module, object], list[dict]],
    dense_step: Callable[[nn.Module, object, int], dict] | None,
    evaluate: Callable[[nn.Module], dict],
    select: str,
    mode: str = "min",
    evaluate_dense: bool = True,
    state_dir: str | os.PathLike | None = None,
    state_key: str = "",
    on_iteration: Callable[[dict], None] | None = None,
) -> LoopResult:
    """Run T iterations of dense step + projection on ``model`` in place; restore the best iteration.

    ``calibration(t)`` gives iteration t's batch(es); ``project(model, batch)`` prunes in place and returns
    per-layer records (``sparsity``, ``error``); ``dense_step(model, batch, t)`` returns a dict; ``evaluate``
    returns metrics containing ``select`` (minimised when ``mode="min"``). A dense step that makes weights
    or metrics non-finite stops the loop (the best finite iteration is kept and the reason recorded).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)

    state = Path(state_dir) if state_dir is not None else None
    key = hashlib.sha256(state_key.encode()).hexdigest()[:16]
    history: list[dict] = []
    best, best_value, best_state = 0, None, None
    start = 1
    if state is not None:
        state.mkdir(parents=True, exist_ok=True)
        saved = state / "loop.json"
        if saved.exists():
            meta = json.loads(saved.read_text())
            if meta.get("key") == key and (state / "last.safetensors").exists():
                history = meta["history"]
                best, best_value = meta["best"], meta["best_value"]
                start = history[-1]["iteration"] + 1
                _load_state(model, state / "last.safetensors")
                log.info("resuming the I-OBS loop after iteration %d from %s", start - 1, state)
            else:
                log.warning("state in %s belongs to another configuration; starting over", state)

    def record(entry: dict) -> None:
        nonlocal best, best_value, best_state
        history.append(entry)
        value = entry["metrics"].get(select)
        if value is None:
            raise ValueError(
                f"select={select!r} is not among the evaluated metrics {sorted(entry['metrics'])}"
            )
        finite = value is not None and math.isfinite(value)
        entry["finite"] = finite
        if entry["iteration"] >= 1 and finite and (best_value is None or better(value, best_value)):
            best, best_value = entry["iteration"], value
            best_state = _state_copy(model)
            if state is not None:
                _save_state(model, state / "best.safetensors")
        if state is not None:
            _save_state(model, state / "last.safetensors")
            atomic_write_json(
                state / "loop.json", {"key": key, "history": history, "best": best, "best_value": best_value}
            )
        if on_iteration is not None:
            on_iteration(entry)

    if start == 1 and evaluate_dense:
        t0 = time.perf_counter()
        history.append(
            {
                "iteration": 0,
                "label": "dense",
                "metrics": evaluate(model),
                "seconds": time.perf_counter() - t0,
            }
        )
        if on_iteration is not None:
            on_iteration(history[-1])

    stopped = None
    for t in range(start, iterations + 1):
        t0 = time.perf_counter()
        batch = calibration(t)
        dense = {"step": "skipped (iteration 1 = one-shot)"}
        if t > 1 and dense_step is not None:
            try:
                dense = dense_step(model, batch, t)
            except FloatingPointError as e:
                stopped = f"iteration {t}: dense step diverged ({e})"
            if stopped is None and not _finite_params(model):
                stopped = f"iteration {t}: dense step produced non-finite weights"
            if stopped:
                log.warning("%s; keeping the best finite iteration %d", stopped, best)
                break
        records = project(model, batch)
        metrics = evaluate(model)
        kept = sum(r["kept"] for r in records)
        numel = sum(r["numel"] for r in records)
        record(
            {
                "iteration": t,
                "label": f"I-OBS({t})",
                "metrics": metrics,
                "dense_step": dense,
                "sparsity": 1.0 - kept / numel if numel else None,
                "layer_error": sum(r.get("error", 0.0) for r in records),
                "seconds": time.perf_counter() - t0,
            }
        )
        if not history[-1]["finite"]:
            stopped = f"iteration {t}: {select} is not finite"
            log.warning("%s; keeping the best finite iteration %d", stopped, best)
            break

    if best == 0:
        raise FloatingPointError(f"no iteration produced a finite {select}; nothing to keep ({stopped})")
    if best_state is not None:
        model.load_state_dict(best_state)
    elif state is not None:  # best came from a previous (resumed) run
        _load_state(model, state / "best.safetensors")
    return LoopResult(history=history, best=best, select=select, stopped=stopped)


def plot_history(
    result: LoopResult,
    path: str | os.PathLike,
    metrics: list[str] | None = None,
    title: str = "I-OBS iterations",
) -> Path:
    """One panel per metric against iteration; dense as a dashed line, the best iteration starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from iobs.utils import atomic_write_bytes

    its = [h for h in result.history if h["iteration"] >= 1]
    dense = next((h for h in result.history if h["iteration"] == 0), None)
    metrics = metrics or (list(its[0]["metrics"]) if its else [])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        xs = [h["iteration"] for h in its]
        ys = [h["metrics"].get(m) for h in its]
        ax.plot(xs, ys, "o-", label="I-OBS")
        if dense is not None and m in dense["metrics"]:
            ax.axhline(dense["metrics"][m], ls="--", c="gray", label="dense")
        b = next((h for h in its if h["iteration"] == result.best), None)
        if b is not None:
            ax.plot(
                [b["iteration"]],
                [b["metrics"].get(m)],
                "*",
                ms=16,
                c="tab:red",
                label=f"best ({result.select})",
            )
        ax.set_xlabel("iteration (1 = one-shot)")
        ax.set_title(m)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
