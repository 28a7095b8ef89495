"""The I-OBS outer loop for networks (paper.md §4), independent of the model family (LMs and vision).

Starting from the dense model, iteration t = 1..T:
  1. draw a fresh calibration batch  ``calibration(t)``;
  2. dense step on the current weights without a mask ``dense_step(model, batch, t)`` (skipped at t = 1,
     so that iteration 1 is exactly the one-shot layer solver, e.g. SparseGPT);
  3. sparse projection ``project(model, batch, t)``, target = the dense-stepped weights;
  4. evaluate (``evaluate(model)`` returns a dict of metrics) and keep the best iteration by ``select``.
At the end the best iteration's weights are restored (the paper's star). Every callback is told the
iteration t, so a caller that shares work between steps 2 and 3 (e.g. one Fisher) keys it by t.

Diagnostics per iteration (optional callbacks): with ``weights(model)`` (the pruned layers' weight
tensors by name; mask = W ≠ 0) the entry records ``mask_changed`` (fraction of those weights whose
kept/pruned status differs from the previous iteration's, t ≥ 2), its largest per-layer value and
``pruned_mass`` = ‖W⁺_S‖ / ‖W⁺‖ after the dense step (S = the previous iteration's pruned set: how far
the dense step moved pruned weights off zero); with ``loss(model, batch)`` it records the task loss on
the iteration's batch before the dense step, after it and after the projection.

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

    def __init__(self, model: nn.Module, select: str, mode: str, state_dir, state_key: str, select_from=1):
        self.model, self.select, self.select_from = model, select, select_from
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
        eligible = entry["finite"] and entry["iteration"] >= self.select_from
        if eligible and (self.best_value is None or self.better(value, self.best_value)):
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


class _Diagnostics:
    """The diagnostics of the module docstring, measured around the dense step and the projection."""

    def __init__(self, model: nn.Module, weights, loss):
        self.model, self.weights, self.loss = model, weights, loss
        self.prev, self.batch, self.out = None, None, {}

    def start(self, batch) -> None:
        self.batch, self.out = batch, {}
        if self.weights is not None:
            self.prev = {n: W.detach() != 0 for n, W in self.weights(self.model).items()}
        if self.loss is not None:
            self.out["loss_before"] = self.loss(self.model, batch)

    def dense_done(self, t: int) -> None:
        if t == 1:
            return
        if self.weights is not None:
            pruned = kept = 0.0
            for n, W in self.weights(self.model).items():
                W = W.detach().double()
                pruned += float(W[~self.prev[n]].square().sum())
                kept += float(W[self.prev[n]].square().sum())
            self.out["pruned_mass"] = math.sqrt(pruned / (pruned + kept)) if pruned + kept > 0 else 0.0
        if self.loss is not None:
            self.out["loss_dense"] = self.loss(self.model, self.batch)

    def projected(self, t: int) -> dict:
        if self.weights is not None and t > 1:
            changed, total, worst = 0, 0, 0.0
            for n, W in self.weights(self.model).items():
                c = int(((W.detach() != 0) != self.prev[n]).sum())
                changed, total = changed + c, total + W.numel()
                worst = max(worst, c / W.numel())
            self.out["mask_changed"] = changed / total if total else 0.0
            self.out["mask_changed_max_layer"] = worst
        if self.loss is not None:
            self.out["loss_projected"] = self.loss(self.model, self.batch)
        self.prev = self.batch = None
        return self.out


def _entry(t: int, metrics: dict, dense: dict, records: list[dict], seconds: float, label) -> dict:
    kept = sum(r["kept"] for r in records)
    numel = sum(r["numel"] for r in records)
    return {
        "iteration": t,
        "label": label(t),
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
    weights: Callable[[nn.Module], dict[str, torch.Tensor]] | None = None,
    loss: Callable[[nn.Module, object], float] | None = None,
    select_from: int = 1,
    label: Callable[[int], str] = lambda t: f"I-OBS({t})",
) -> LoopResult:
    """Run T iterations of dense step + projection on ``model`` in place; restore the best iteration.

    ``calibration(t)`` gives iteration t's batch(es); ``project(model, batch, t)`` prunes in place and
    returns per-layer records (``kept``, ``numel``, ``error``); ``dense_step(model, batch, t)`` returns a
    dict; ``evaluate`` returns metrics containing ``select`` (minimised when ``mode="min"``). A dense step
    that makes weights or metrics non-finite stops the loop (the best finite iteration is kept and the
    reason recorded). ``on_iteration(entry)`` sees every history entry as it is recorded. ``weights`` and
    ``loss``: the diagnostics of the module docstring. Only iterations t ≥ ``select_from`` can be the
    best (a sparsity schedule: the first iteration at the final target). ``label(t)`` names entry t.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    if (
        isinstance(select_from, bool)
        or not isinstance(select_from, int)
        or not 1 <= select_from <= iterations
    ):
        raise ValueError(
            f"select_from must be an integer in [1, iterations={iterations}], got {select_from!r}"
        )
    tracker = _Tracker(model, select, mode, state_dir, state_key, select_from)
    diag = _Diagnostics(model, weights, loss)
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
        diag.start(batch)
        dense, stopped = _dense(model, batch, t, dense_step)
        if stopped is None:
            diag.dense_done(t)
            records = project(model, batch, t)
            extra = diag.projected(t)
            entry = _entry(t, evaluate(model), dense, records, time.perf_counter() - t0, label) | extra
            if not tracker.record(entry):
                stopped = f"iteration {t}: {select} is not finite"
            notify(entry)
        if stopped is not None:
            log.warning("%s; keeping the best finite iteration %d", stopped, tracker.best)
            break
    tracker.restore_best(stopped)
    return LoopResult(history=tracker.history, best=tracker.best, select=select, stopped=stopped)


def history_figure(
    result: LoopResult,
    metrics: list[str] | None = None,
    title: str = "I-OBS iterations",
    control: LoopResult | None = None,
    name: str = "I-OBS",
):
    """One panel per metric against iteration (dense dashed, best starred; ``control``'s rounds drawn at
    the iteration whose dense step they mirror), then the diagnostics recorded: mask change, layer error
    of each projection and the losses on the iteration's batch."""
    its = [h for h in result.history if h["iteration"] >= 1]
    dense = next((h for h in result.history if h["iteration"] == 0), None)
    best = next((h for h in its if h["iteration"] == result.best), None)
    metrics = metrics or (list(its[0]["metrics"]) if its else [])
    diags = [d for d in _DIAGNOSTICS if any(d[0] in h for h in its)]
    n = len(metrics) + len(diags)
    fig, axes = subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    xs = [h["iteration"] for h in its]
    for ax, m in zip(axes[0], metrics):
        ax.plot(xs, [h["metrics"].get(m) for h in its], "o-", label=name)
        if control is not None:
            cits = [h for h in control.history if h["iteration"] >= 1]
            ax.plot(
                [h["iteration"] for h in cits], [h["metrics"].get(m) for h in cits], "s--", label="control"
            )
        if dense is not None and m in dense["metrics"]:
            ax.axhline(dense["metrics"][m], ls="--", c="gray", label="dense")
        if best is not None:
            label = f"best ({result.select})"
            ax.plot([best["iteration"]], [best["metrics"].get(m)], "*", ms=16, c="tab:red", label=label)
        _iteration_axis(ax, m, xs)
    for ax, (key, name, keys) in zip(axes[0][len(metrics) :], diags):
        log_scale, drawn = key in ("layer_error", "mask_changed"), 0
        for k in keys:  # on a log scale zeros (a held mask, an identity projection) are left out
            pts = [
                (h["iteration"], h[k]) for h in its if h.get(k) is not None and (h[k] > 0 or not log_scale)
            ]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=k.removeprefix("loss_"))
            drawn += len(pts)
        if log_scale and drawn:
            ax.set_yscale("log")
        if key == "mask_changed" and not any(h.get(key) for h in its):
            ax.text(0.5, 0.5, "0 at every iteration (mask held)", ha="center", transform=ax.transAxes)
        _iteration_axis(ax, name, xs)
        ax.legend(fontsize=7)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# (key present in an entry, panel title, entry keys drawn)
_DIAGNOSTICS = (
    ("mask_changed", "mask changed vs previous iteration", ("mask_changed", "mask_changed_max_layer")),
    ("layer_error", "layer error of the projection", ("layer_error",)),
    ("loss_before", "loss on the iteration's batch", ("loss_before", "loss_dense", "loss_projected")),
)


def _iteration_axis(ax, title: str, xs: list[int]) -> None:
    ax.set_xlabel("iteration (1 = one-shot)")
    ax.set_title(title)
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
