"""The I-OBS outer loop for networks (paper.md §4), independent of the model family (LMs and vision).

Starting from the dense model, iteration t = 1..T:
  1. draw a fresh calibration batch  ``calibration(t)``;
  2. dense step on the current weights without a mask ``dense_step(model, batch, t)`` (skipped at t = 1,
     so that iteration 1 is exactly the one-shot layer solver, e.g. SparseGPT);
  3. sparse projection ``project(model, batch, t)``, target = the dense-stepped weights;
  4. evaluate (``evaluate(model)`` returns a dict of metrics) and keep the best iteration by ``select``.
At the end the best iteration's weights are restored (the paper's star). Every callback is told the
iteration t, so a caller that shares work between steps 2 and 3 (e.g. one Fisher) keys it by t.

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

from iobs.utils import atomic_write_json, subplots

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
        out = {"history": self.history, "best_iteration": self.best, "select": self.select}
        return out | {"stopped": self.stopped, **self.extra}


def _save_state(model: nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_model(model, str(tmp))
    os.replace(tmp, path)


def _load_state(model: nn.Module, path: Path) -> None:
    from safetensors.torch import load_model

    load_model(model, str(path), strict=True, device=str(next(model.parameters()).device))


class _Tracker:
    """History, best iteration (by ``select``, ``mode``) and its weights; persisted in ``state_dir``."""

    def __init__(self, model: nn.Module, select: str, mode: str, state_dir, state_key: str):
        self.model, self.select = model, select
        self.better = (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)
        self.state = Path(state_dir) if state_dir is not None else None
        self.key = hashlib.sha256(state_key.encode()).hexdigest()[:16]
        self.history: list[dict] = []
        self.best, self.best_value, self.best_weights = 0, None, None

    def resume(self) -> int:
        """The first iteration to run: 1, or the one after the last finished iteration of a saved run."""
        if self.state is None:
            return 1
        self.state.mkdir(parents=True, exist_ok=True)
        saved = self.state / "loop.json"
        if not saved.exists():
            return 1
        meta = json.loads(saved.read_text())
        if meta.get("key") != self.key or not (self.state / "last.safetensors").exists():
            log.warning("state in %s belongs to another configuration; starting over", self.state)
            return 1
        self.history = meta["history"]
        self.best, self.best_value = meta["best"], meta["best_value"]
        _load_state(self.model, self.state / "last.safetensors")
        start = self.history[-1]["iteration"] + 1
        log.info("resuming the I-OBS loop after iteration %d from %s", start - 1, self.state)
        return start

    def record(self, entry: dict) -> bool:
        """Append iteration ``entry``; keep it when best; persist; True when its metric is finite."""
        self.history.append(entry)
        value = entry["metrics"].get(self.select)
        if value is None:
            raise ValueError(
                f"select={self.select!r} is not among the evaluated metrics {sorted(entry['metrics'])}"
            )
        entry["finite"] = math.isfinite(value)
        if entry["finite"] and (self.best_value is None or self.better(value, self.best_value)):
            self.best, self.best_value = entry["iteration"], value
            self.best_weights = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }
            if self.state is not None:
                _save_state(self.model, self.state / "best.safetensors")
        if self.state is not None:
            _save_state(self.model, self.state / "last.safetensors")
            meta = {
                "key": self.key,
                "history": self.history,
                "best": self.best,
                "best_value": self.best_value,
            }
            atomic_write_json(self.state / "loop.json", meta)
        return entry["finite"]

    def restore_best(self, stopped: str | None) -> None:
        if self.best == 0:
            raise FloatingPointError(
                f"no iteration produced a finite {self.select}; nothing to keep ({stopped})"
            )
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        elif self.state is not None:  # best came from a previous (resumed) run
            _load_state(self.model, self.state / "best.safetensors")


def _dense(model, batch, t, dense_step) -> tuple[dict, str | None]:
    """(dense-step info, why the loop stops or None): a diverged step or non-finite weights stop it."""
    if t == 1 or dense_step is None:
        return {"step": "skipped (iteration 1 = one-shot)"}, None
    try:
        info = dense_step(model, batch, t)
    except FloatingPointError as e:
        return {}, f"iteration {t}: dense step diverged ({e})"
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return info, f"iteration {t}: dense step produced non-finite weights"
    return info, None


def _entry(t: int, metrics: dict, dense: dict, records: list[dict], seconds: float) -> dict:
    kept = sum(r["kept"] for r in records)
    numel = sum(r["numel"] for r in records)
    return {
        "iteration": t,
        "label": f"I-OBS({t})",
        "metrics": metrics,
        "dense_step": dense,
        "sparsity": 1.0 - kept / numel if numel else None,
        "layer_error": sum(r.get("error", 0.0) for r in records),
        "seconds": seconds,
    }


def run_iobs(
    model: nn.Module,
    *,
    iterations: int,
    calibration: Callable[[int], object],
    project: Callable[[nn.Module, object, int], list[dict]],
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

    ``calibration(t)`` gives iteration t's batch(es); ``project(model, batch, t)`` prunes in place and
    returns per-layer records (``kept``, ``numel``, ``error``); ``dense_step(model, batch, t)`` returns a
    dict; ``evaluate`` returns metrics containing ``select`` (minimised when ``mode="min"``). A dense step
    that makes weights or metrics non-finite stops the loop (the best finite iteration is kept and the
    reason recorded). ``on_iteration(entry)`` sees every history entry as it is recorded.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    tracker = _Tracker(model, select, mode, state_dir, state_key)
    notify = on_iteration or (lambda entry: None)
    start = tracker.resume()
    if start == 1 and evaluate_dense:
        t0 = time.perf_counter()
        metrics = evaluate(model)
        tracker.history.append(
            {"iteration": 0, "label": "dense", "metrics": metrics, "seconds": time.perf_counter() - t0}
        )
        notify(tracker.history[-1])
    stopped = None
    for t in range(start, iterations + 1):
        t0 = time.perf_counter()
        batch = calibration(t)
        dense, stopped = _dense(model, batch, t, dense_step)
        if stopped is None:
            records = project(model, batch, t)
            entry = _entry(t, evaluate(model), dense, records, time.perf_counter() - t0)
            if not tracker.record(entry):
                stopped = f"iteration {t}: {select} is not finite"
            notify(entry)
        if stopped is not None:
            log.warning("%s; keeping the best finite iteration %d", stopped, tracker.best)
            break
    tracker.restore_best(stopped)
    return LoopResult(history=tracker.history, best=tracker.best, select=select, stopped=stopped)


def history_figure(result: LoopResult, metrics: list[str] | None = None, title: str = "I-OBS iterations"):
    """One panel per metric against iteration; dense as a dashed line, the best iteration starred."""
    its = [h for h in result.history if h["iteration"] >= 1]
    dense = next((h for h in result.history if h["iteration"] == 0), None)
    best = next((h for h in its if h["iteration"] == result.best), None)
    metrics = metrics or (list(its[0]["metrics"]) if its else [])
    fig, axes = subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        xs = [h["iteration"] for h in its]
        ax.plot(xs, [h["metrics"].get(m) for h in its], "o-", label="I-OBS")
        if dense is not None and m in dense["metrics"]:
            ax.axhline(dense["metrics"][m], ls="--", c="gray", label="dense")
        if best is not None:
            label = f"best ({result.select})"
            ax.plot([best["iteration"]], [best["metrics"].get(m)], "*", ms=16, c="tab:red", label=label)
        ax.set_xlabel("iteration (1 = one-shot)")
        ax.set_title(m)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
