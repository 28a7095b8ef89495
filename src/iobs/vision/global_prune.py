"""Global one-shot pruning of a flat weight vector θ₀ under the block-diagonal empirical-Fisher model
q(θ) = gᵀ(θ − θ₀) + ½ (θ − θ₀)ᵀ F (θ − θ₀)  (F, g from :mod:`iobs.vision.fisher`).

One budget for the whole network: exactly floor(s·d) weights pruned over all prunable layers together.

* ``global_magnitude`` — prune the smallest |θ₀|, no update.
* ``woodfisher`` — WoodFisher: prune the smallest saliencies ρ_i = θ_i² / (2 [F⁻¹]_ii), then the joint
  OBS update of the kept weights on that support (per block, the exact minimiser of q with θ_S = 0;
  :func:`iobs.obs.projection.obs_project_lowrank` in the n×n Woodbury form).
* ``cbs`` — Combinatorial Brain Surgeon (Yu et al., ICML 2022) = CBS-S then CBS-U. CBS-S chooses the pruned
  set S by the loss change of removing the weights *without* an update, J(S) = ½ pᵀFp − gᵀp with
  p = θ₀ on S and 0 elsewhere: its off-diagonal terms F_ij θ_i θ_j reward pruning weights that cancel one
  another, which a per-weight saliency ignores. J is minimised by local search from the WoodFisher selection:
  at every step the exact ΔJ of swapping a pruned weight back in and a kept weight out is evaluated for the
  ``candidates`` × ``candidates`` most promising pairs (ranked by their single-move ΔJ) and the best
  improving swap is applied, until none improves or ``max_swaps`` is reached. CBS-U is the OBS update on the
  final support (the closed form of the constrained quadratic, which CBS's own update approximates).
  Simplifications (stated): the swap neighbourhood is restricted to the candidate window, CBS's scaling
  of the λ‖δ‖² term is our Fisher damping, and a final check keeps the starting selection if the swaps did
  not lower q after the update, so CBS is never worse than its start on the quadratic model.

I-OBS with the same Fisher blocks lives in :mod:`iobs.vision.iobs_global`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from iobs._validate import check_sparsity, n_pruned
from iobs.obs.masks import keep_top
from iobs.obs.projection import project
from iobs.vision.fisher import FisherBlocks

METHODS = ("magnitude", "woodfisher", "cbs")


@dataclass
class GlobalResult:
    """New flat weights (exact zeros off ``mask``), the mask (True = kept) and q(θ) of the result."""

    theta: torch.Tensor
    mask: torch.Tensor
    method: str
    objective: float | None = None
    info: dict = field(default_factory=dict)


def n_kept(d: int, sparsity: float) -> int:
    return d - n_pruned(check_sparsity(sparsity), d)


def keep_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the d − floor(s·d) largest scores (all pruned when that is 0)."""
    return keep_top(score, n_kept(score.numel(), sparsity))


def global_magnitude(theta0: torch.Tensor, sparsity: float) -> GlobalResult:
    mask = keep_mask(theta0.abs(), sparsity)
    return GlobalResult(theta0 * mask, mask, "magnitude")


def obs_saliency(theta: torch.Tensor, fisher: FisherBlocks) -> torch.Tensor:
    """WoodFisher / OBS saliency θ_i² / (2 [F⁻¹]_ii): the rise of ½δᵀFδ when removing i alone."""
    return theta * theta / (2.0 * fisher.inv_diag())


def obs_update(theta_plus: torch.Tensor, fisher: FisherBlocks, mask: torch.Tensor) -> torch.Tensor:
    """argmin_{supp θ ⊆ mask} (θ − θ⁺)ᵀ F (θ − θ⁺), block by block (exact OBS update; a dense block solves
    with F_b restricted to the support, a Woodbury block with its n×n low-rank form)."""
    out = torch.zeros_like(theta_plus)
    for (s, e), op in zip(fisher.blocks, fisher.ops):
        m = mask[s:e]
        if bool(m.all()):
            out[s:e] = theta_plus[s:e]
        elif bool(m.any()):
            out[s:e] = project(theta_plus[s:e], op, m)
    return out * mask


def newton_point(theta: torch.Tensor, fisher: FisherBlocks, lr: float = 1.0) -> torch.Tensor:
    """θ − lr · F⁻¹ g (the minimiser of the local model when lr = 1)."""
    return theta - lr * fisher.inv_mv(fisher.grad.to(theta))


def woodfisher(
    theta0: torch.Tensor, fisher: FisherBlocks, sparsity: float, use_grad: bool = False
) -> GlobalResult:
    """Global WoodFisher (WoodTaylor with ``use_grad``): saliency at the (Newton) point, joint OBS update."""
    theta_plus = newton_point(theta0, fisher) if use_grad else theta0
    mask = keep_mask(obs_saliency(theta_plus, fisher), sparsity)
    theta = obs_update(theta_plus, fisher, mask)
    return GlobalResult(theta, mask, "woodfisher", fisher.quadratic(theta, theta0, use_grad))


def selection_objective(
    theta0: torch.Tensor, fisher: FisherBlocks, mask: torch.Tensor, use_grad: bool
) -> float:
    """CBS-S objective J = ½ pᵀFp − gᵀp, p = θ₀ on the pruned set (loss change of zeroing, no update)."""
    p = theta0 * (~mask)
    val = 0.5 * float(p @ fisher.mv(p))
    return val - float(fisher.grad @ p) if use_grad else val


def cbs(
    theta0: torch.Tensor,
    fisher: FisherBlocks,
    sparsity: float,
    *,
    use_grad: bool = False,
    start: str = "woodfisher",
    candidates: int = 64,
    max_swaps: int = 500,
) -> GlobalResult:
    """Combinatorial Brain Surgeon: swap local search on J (CBS-S) from ``start``, then OBS update (CBS-U)."""
    if start not in ("woodfisher", "magnitude"):
        raise ValueError(f"start must be 'woodfisher' or 'magnitude', got {start!r}")
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"candidates must be an integer >= 1, got {candidates!r}")
    if isinstance(max_swaps, bool) or not isinstance(max_swaps, int) or max_swaps < 0:
        raise ValueError(f"max_swaps must be an integer >= 0, got {max_swaps!r}")
    th = theta0.to(fisher.A.dtype)
    score = th.abs() if start == "magnitude" else obs_saliency(th, fisher)
    mask0 = keep_mask(score, sparsity)
    mask, history = _cbs_swaps(th, fisher, mask0, use_grad, candidates, max_swaps)
    theta_plus = newton_point(th, fisher) if use_grad else th
    theta = obs_update(theta_plus, fisher, mask)
    q = fisher.quadratic(theta, th, use_grad)
    theta_start = obs_update(theta_plus, fisher, mask0)
    q_start = fisher.quadratic(theta_start, th, use_grad)
    kept_start = q_start < q
    if kept_start:
        theta, mask, q = theta_start, mask0, q_start
    info = {
        "swaps": len(history) - 1,
        "selection_objective": history,
        "start_objective": q_start,
        "kept_start_selection": bool(kept_start),
    }
    return GlobalResult(theta, mask, "cbs", q, info)


def _cbs_swaps(th, fisher: FisherBlocks, mask0, use_grad: bool, candidates: int, max_swaps: int):
    """CBS-S: best improving (un-prune i, prune j) swaps on J among the candidate window; returns the
    final mask and J after each swap (J of ``mask0`` first)."""
    mask = mask0.clone()
    g = fisher.grad.to(th) if use_grad else torch.zeros_like(th)
    block = fisher.block_of()
    Fdiag = (fisher.A * fisher.A).sum(0) + fisher.lam[block]
    u = fisher.mv(th * (~mask))  # F p
    J = selection_objective(th, fisher, mask, use_grad)
    history = [J]
    half_sq = 0.5 * th * th * Fdiag
    inf = torch.tensor(float("inf"), dtype=th.dtype, device=th.device)
    n_prune, n_keep = int((~mask).sum()), int(mask.sum())
    while len(history) - 1 < max_swaps and n_prune > 0 and n_keep > 0:
        rem = torch.where(~mask, -th * u + half_sq + g * th, inf)  # ΔJ of un-pruning i alone
        add = torch.where(mask, th * u + half_sq - g * th, inf)  # ΔJ of pruning j alone
        ci = torch.topk(rem, min(candidates, n_prune), largest=False).indices
        cj = torch.topk(add, min(candidates, n_keep), largest=False).indices
        same = block[ci][:, None] == block[cj][None, :]
        Fij = (fisher.A[:, ci].T @ fisher.A[:, cj]) * same
        delta = rem[ci][:, None] + add[cj][None, :] - th[ci][:, None] * th[cj][None, :] * Fij
        best = int(delta.argmin())
        d_best = float(delta.reshape(-1)[best])
        if not d_best < -1e-12 * max(1.0, abs(J)):
            break
        i, j = int(ci[best // len(cj)]), int(cj[best % len(cj)])
        for k, sign in ((i, -1.0), (j, 1.0)):
            s, e = fisher.blocks[int(block[k])]
            u[s:e] += sign * th[k] * fisher.column(k, int(block[k]))
        mask[i], mask[j] = True, False
        J += d_best
        history.append(J)
    return mask, history


def prune_global(
    method: str, theta0: torch.Tensor, fisher: FisherBlocks | None, sparsity: float, **kwargs
) -> GlobalResult:
    """Dispatch by name: ``magnitude`` | ``woodfisher`` | ``cbs``."""
    check_sparsity(sparsity)
    if method == "magnitude":
        return global_magnitude(theta0, sparsity)
    if fisher is None:
        raise ValueError(f"method {method!r} needs the Fisher blocks (fisher=None given)")
    if method == "woodfisher":
        return woodfisher(theta0.to(fisher.A.dtype), fisher, sparsity, **kwargs)
    if method == "cbs":
        return cbs(theta0, fisher, sparsity, **kwargs)
    raise ValueError(
        f"method must be one of {', '.join(METHODS)} (or 'iobs' via iobs_global), got {method!r}"
    )
