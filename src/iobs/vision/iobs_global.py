"""I-OBS for global pruning with the same block empirical Fisher as WoodFisher / CBS (paper.md §2).

Iteration t = 1..T on a fresh batch of ``n`` samples (so T iterations use T·n per-sample gradients):
  1. at the current (sparse) weights θ_t, per-sample gradients → Fisher blocks F_t and mean gradient g_t;
  2. Newton point θ⁺ = θ_t − η F_t⁻¹ g_t (skipped at t = 1: iteration 1 is one-shot WoodFisher), with η the
     value in ``lr · LINE_SEARCH`` (0 included) of lowest loss on the same batch: a backtracking line search
     that costs forward passes only (no extra gradients) and guards against the natural-gradient step on an
     empirical Fisher overshooting near the optimum;
  3. support: keep the d − floor(s·d) largest OBS saliencies θ⁺_i² / [F_t⁻¹]_ii (global budget);
  4. θ_{t+1} = the exact OBS update of θ⁺ on that support under F_t (block by block).
The loop is :func:`iobs.prune.outer_loop.run_iobs` (dense step = 1–2, projection = 3–4), which evaluates each
iteration and restores the best one by ``select``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from iobs._validate import check_sparsity
from iobs.prune.outer_loop import LoopResult, run_iobs
from iobs.vision.fisher import empirical_fisher, get_flat, prunable_weights, set_flat
from iobs.vision.global_prune import keep_mask, newton_point, obs_saliency, obs_update

#: step sizes tried by the line search, as multiples of ``lr``
LINE_SEARCH = (1.0, 0.3, 0.1, 0.03, 0.01, 0.0)


def iobs_global(
    model: nn.Module,
    *,
    sparsity: float,
    iterations: int,
    calibration: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    evaluate: Callable[[nn.Module], dict],
    select: str,
    mode: str = "max",
    block_size: int = 1000,
    damping: float = 1e-3,
    lr: float = 1.0,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    evaluate_dense: bool = True,
    on_iteration: Callable[[dict], None] | None = None,
) -> LoopResult:
    """Run I-OBS on ``model`` in place (best iteration restored); ``calibration(t)`` returns (X, y)."""
    sparsity = check_sparsity(sparsity)
    params = prunable_weights(model, include, exclude)
    d = sum(p.numel() for p in params.values())
    state: dict = {}

    def fisher_here(batch):
        X, y = batch
        return empirical_fisher(model, params, X, y, block_size, damping)

    def dense_step(m, batch, t):
        t0 = time.perf_counter()
        fisher = fisher_here(batch)
        theta = get_flat(params).to(fisher.A.dtype)
        direction = newton_point(theta, fisher, 1.0) - theta
        X, y = batch
        tried = {}
        for f in LINE_SEARCH:
            set_flat(params, theta + f * lr * direction)
            with torch.no_grad():
                out = m(X)
                tried[f * lr] = float(nn.functional.cross_entropy(getattr(out, "logits", out), y))
        eta = min(tried, key=tried.get)
        theta_plus = theta + eta * direction
        set_flat(params, theta_plus)
        state.update(batch=batch, fisher=fisher)
        return {
            "step": "fisher-newton",
            "lr": eta,
            "line_search": tried,
            "step_norm": float((theta_plus - theta).norm()),
            "seconds": time.perf_counter() - t0,
        }

    def project(m, batch):
        fisher = state["fisher"] if state.get("batch") is batch else fisher_here(batch)
        state.clear()
        theta_plus = get_flat(params).to(fisher.A.dtype)
        mask = keep_mask(obs_saliency(theta_plus, fisher), sparsity)
        theta = obs_update(theta_plus, fisher, mask)
        set_flat(params, theta)
        err = fisher.quadratic(theta, theta_plus, use_grad=False) * 2.0
        return [{"name": "global", "numel": d, "kept": int(mask.sum()), "error": err}]

    return run_iobs(
        model,
        iterations=iterations,
        calibration=calibration,
        project=project,
        dense_step=dense_step,
        evaluate=evaluate,
        select=select,
        mode=mode,
        evaluate_dense=evaluate_dense,
        on_iteration=on_iteration,
    )
