"""I-OBS for global pruning with the same block empirical Fisher as WoodFisher / CBS (paper.md §2).

Iteration t = 1..T on batch t of ``n`` samples (so T iterations cost T·n per-sample gradients):
  1. at the current (sparse) weights θ_t, per-sample gradients → Fisher blocks F_t and mean gradient g_t;
  2. Newton point θ⁺ = θ_t − η F_t⁻¹ g_t (skipped at t = 1: iteration 1 is one-shot WoodFisher), with η the
     value in ``lr · LINE_SEARCH`` (0 included) whose *projected* point P(θ⁺) has the lowest loss on the
     ``line_search`` samples — forward passes only, no extra gradients. Held-out samples matter: the
     natural-gradient step on n samples can fit them exactly, so a line search on the same batch picks
     steps that overfit (measured on MLPNet: calibration loss 0.09 → 0.02 while validation accuracy fell);
  3. support: keep the d − floor(s·d) largest OBS saliencies θ⁺_i² / [F_t⁻¹]_ii (global budget);
  4. θ_{t+1} = P(θ⁺), the exact OBS update of θ⁺ on that support under F_t (block by block).
η = 0 gives P(θ_t) = θ_t, so the line-search loss never rises from one iteration to the next.
The loop is :func:`iobs.loop.run_iobs` (dense step = 1–2, projection = 3–4), which evaluates each
iteration and restores the best one by ``select``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from iobs._validate import check_sparsity
from iobs.loop import LoopResult, run_iobs
from iobs.vision.fisher import FisherBlocks, empirical_fisher, get_flat, prunable_weights, set_flat
from iobs.vision.global_prune import keep_mask, newton_point, obs_saliency, obs_update
from iobs.vision.models import mean_ce

#: step sizes tried by the line search, as multiples of ``lr``
LINE_SEARCH = (1.0, 0.3, 0.1, 0.03, 0.01, 0.0)


def obs_projection(theta_plus: torch.Tensor, fisher: FisherBlocks, sparsity: float):
    """(mask, P(θ⁺)): keep the largest OBS saliencies under the global budget, exact OBS update."""
    mask = keep_mask(obs_saliency(theta_plus, fisher), sparsity)
    return mask, obs_update(theta_plus, fisher, mask)


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
    absolute_damping: bool = False,
    lr: float = 1.0,
    line_search: tuple[torch.Tensor, torch.Tensor] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    evaluate_dense: bool = True,
    on_iteration: Callable[[dict], None] | None = None,
    initial_fisher: FisherBlocks | None = None,
) -> LoopResult:
    """Run I-OBS on ``model`` in place (best iteration restored); ``calibration(t)`` returns (X, y).

    ``line_search`` = (X, y) held-out samples that choose the step size (default: the batch itself).
    ``initial_fisher``: the Fisher of ``calibration(1)`` at the starting weights with these block and damping
    settings, when the caller already has it (iteration 1 then builds none; e.g. WoodFisher's own Fisher).
    """
    sparsity = check_sparsity(sparsity)
    if line_search is not None and (len(line_search) != 2 or line_search[0].shape[0] < 1):
        raise ValueError("line_search must be an (X, y) pair with at least one sample")
    params = prunable_weights(model, include, exclude)
    d = sum(p.numel() for p in params.values())
    if initial_fisher is not None and initial_fisher.d != d:
        raise ValueError(f"initial_fisher covers {initial_fisher.d} weights, the prunable layers hold {d}")
    steps = _Steps(model, params, sparsity, (block_size, damping, absolute_damping), lr, line_search)
    steps.pending = [initial_fisher] if initial_fisher is not None else []  # for iteration 1's projection
    return run_iobs(
        model,
        iterations=iterations,
        calibration=calibration,
        project=steps.project,
        dense_step=steps.dense_step,
        evaluate=evaluate,
        select=select,
        mode=mode,
        evaluate_dense=evaluate_dense,
        on_iteration=on_iteration,
    )


class _Steps:
    """The two steps of one I-OBS iteration on the flat prunable weights: the line-searched Fisher-Newton
    step (1–2) and the OBS projection (3–4). The projection reuses the Fisher and the projected point of the
    dense step on the same batch; iteration 1's projection uses ``pending`` (a Fisher the caller had)."""

    def __init__(self, model, params, sparsity, fisher_args, lr, line_search):
        self.model, self.params, self.sparsity = model, params, sparsity
        self.fisher_args, self.lr, self.line_search = fisher_args, lr, line_search
        self.d = sum(p.numel() for p in params.values())
        self.state: dict = {}  # iteration, Fisher and projected point of the last dense step
        self.pending: list[FisherBlocks] = []

    def fisher(self, batch) -> FisherBlocks:
        X, y = batch
        return empirical_fisher(self.model, self.params, X, y, *self.fisher_args)

    def dense_step(self, m, batch, t):
        t0 = time.perf_counter()
        fisher = self.fisher(batch)
        theta = get_flat(self.params).to(fisher.A.dtype)
        direction = newton_point(theta, fisher, 1.0) - theta
        X, y = self.line_search if self.line_search is not None else batch
        tried, cands = {}, {}
        for f in LINE_SEARCH:
            eta = f * self.lr
            mask, theta_new = obs_projection(theta + eta * direction, fisher, self.sparsity)
            set_flat(self.params, theta_new)
            tried[eta], cands[eta] = mean_ce(m, X, y), (mask, theta_new)
        eta = min(tried, key=tried.get)
        theta_plus = theta + eta * direction
        set_flat(self.params, theta_plus)
        self.state.update(t=t, fisher=fisher, projected=cands[eta])
        return {
            "step": "fisher-newton",
            "lr": eta,
            "line_search": tried,
            "step_norm": float((theta_plus - theta).norm()),
            "seconds": time.perf_counter() - t0,
        }

    def project(self, m, batch, t):
        if self.state.get("t") == t:  # right after this iteration's dense step
            fisher, projected = self.state["fisher"], self.state["projected"]
        else:
            fisher, projected = (self.pending.pop() if self.pending else self.fisher(batch)), None
        theta_plus = get_flat(self.params).to(fisher.A.dtype)
        mask, theta = projected or obs_projection(theta_plus, fisher, self.sparsity)
        self.state.clear()
        set_flat(self.params, theta)
        err = fisher.quadratic(theta, theta_plus, use_grad=False) * 2.0
        return [{"name": "global", "numel": self.d, "kept": int(mask.sum()), "error": err}]
