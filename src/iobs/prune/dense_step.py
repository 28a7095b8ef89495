"""Dense steps of the I-OBS outer loop: move the current (sparse) weights toward lower task loss, no mask.

* ``newton``: per prunable layer W⁺ = W − η·G·(H̄ + λI)⁻¹ with G = ∂L/∂W of the mean task loss over the
  calibration batches and H̄ = XXᵀ / tokens from the same forward passes (the layer-wise Gauss-Newton
  preconditioner of paper.md §4); λ = damping · mean(diag H̄). Only prunable layers move.
* ``finetune``: a few optimiser steps (Adam or SGD) on the calibration batches with all weights free.
* ``none``: nothing; the loop then only re-projects.

Both steps take ``masks`` ({layer name: bool mask of layer.weight, True = kept}) and ``pruned_scale``
s: the movement of the coordinates outside the mask is multiplied by s. s = 1 is the plain dense step;
s > 1 moves pruned weights further (more chance to be re-selected); s = 0 is the masked step of the
fine-tuning control: ``finetune`` zeroes the pruned coordinates' gradients before clipping and re-masks
the weights after every optimiser step, ``newton`` takes the restricted Newton step on the kept set,
row by row Ŵ_Q = W_Q − η·G_Q ((H̄ + λI)_QQ)⁻¹ (:func:`iobs.obs.refit.refit` of the Newton point onto
the mask, exact when W is already 0 off the mask). No pruned weight becomes non-zero.

Every step returns a small dict (loss before/after where measured, seconds) for the loop's history.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from iobs.prune.hessian import accumulate_hessians
from iobs.prune.layers import find_layers, get_weight, set_weight
from iobs.prune.walk import to_device as _to

LossFn = Callable[[nn.Module, object], torch.Tensor]
DENSE_STEPS = ("newton", "finetune", "none")


def lm_loss(model: nn.Module, batch) -> torch.Tensor:
    """Next-token cross-entropy of a causal LM on a (B, L) or (L,) tensor of token ids."""
    ids = batch["input_ids"] if isinstance(batch, dict) else batch
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    return model(input_ids=ids, labels=ids).loss


def classification_loss(model: nn.Module, batch) -> torch.Tensor:
    """Cross-entropy of a classifier on a batch ``(x, y)``; accepts outputs with a ``.logits`` field."""
    x, y = batch
    out = model(x)
    return F.cross_entropy(getattr(out, "logits", out), y)


def _check_lr(lr) -> float:
    lr = float(lr)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0, got {lr}")
    return lr


def newton_step(
    model: nn.Module,
    batches: Sequence,
    loss_fn: LossFn,
    *,
    lr: float = 0.01,
    damping: float = 0.01,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    group=None,
    masks: dict[str, torch.Tensor] | None = None,
    pruned_scale: float = 1.0,
) -> dict:
    """W⁺ = W − lr · G (H̄ + λI)⁻¹ for every prunable layer; λ = damping · mean(diag H̄) (absolute when that
    mean is 0), escalated by the damping policy of :mod:`iobs.obs.damping` when the Cholesky fails.
    ``group`` (:class:`iobs.prune.distributed.Group`): each rank takes its shard of the batches; G, H and
    the loss are summed over the ranks (the same step up to float summation order).
    ``masks`` / ``pruned_scale``: see the module docstring (0 = restricted Newton step on the mask)."""
    from iobs.obs.damping import cholesky_damped

    lr = _check_lr(lr)
    if not math.isfinite(damping) or damping <= 0:
        raise ValueError(f"damping must be a finite number > 0, got {damping}")
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    layers = find_layers(model, include, exclude)
    if not layers:
        raise ValueError(f"no prunable layer matches include={include} exclude={exclude}")
    masks = _check_masks(masks, pruned_scale, dict(model.named_modules()))
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    total = 0.0
    mine = batches if group is None else batches[group.shard(len(batches))]
    with accumulate_hessians(layers, reduce=group and group.all_reduce_hessians) as acc:
        for b in mine:
            loss = loss_fn(model, _to(b, device)) / len(batches)
            loss.backward()
            total += float(loss.detach())
    if group is not None:
        total = group.all_reduce_grads([m.weight for m in layers.values()], total)
    steps = {}
    for name, layer in layers.items():
        grad = layer.weight.grad
        if grad is None:  # layer not reached by the loss
            continue
        G = _as_matrix(layer, grad).to(acc[name].H.dtype)
        Hbar = acc[name].H / max(acc[name].tokens, 1)
        scale = float(Hbar.diagonal().mean()) or 1.0  # a layer whose inputs are all zero: absolute damping
        L, _ = cholesky_damped(Hbar, damping * scale, name=f"H̄ of {name}", scale=scale)
        step = torch.cholesky_solve(G.t(), L).t()  # G (H̄ + λI)⁻¹  (H̄ symmetric)
        W = get_weight(layer)
        mask = masks.get(name)
        if mask is not None:
            mask = _as_matrix(layer, mask.to(W.dtype)) > 0
        set_weight(layer, _newton_update(W, step, lr, Hbar, damping, mask, pruned_scale, name))
        steps[name] = float(step.norm())
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {
        "step": "newton",
        "loss_before": total,
        "lr": lr,
        "damping": damping,
        "layers": len(steps),
        "masked": bool(masks) and pruned_scale == 0,
        "pruned_scale": pruned_scale,
        "seconds": time.perf_counter() - t0,
    }


def _newton_update(W, step, lr, Hbar, damping, mask, pruned_scale, name) -> torch.Tensor:
    """W − lr·step, with the movement off ``mask`` scaled by ``pruned_scale`` (0: restricted Newton)."""
    W_plus = W - lr * step.to(W.dtype)
    if mask is None or pruned_scale == 1:
        return W_plus
    if pruned_scale == 0:
        from iobs.obs.refit import refit

        Wf = W_plus.to(Hbar.dtype)
        W_hat = refit(Wf, Hbar, mask, percdamp=damping, W0=Wf * mask, name=f"H̄ of {name}")
        return (W_hat * mask).to(W.dtype)
    return torch.where(mask, W_plus, W - pruned_scale * lr * step.to(W.dtype))


def _check_masks(masks, pruned_scale, modules: dict) -> dict:
    """``masks`` validated against the model's modules; required unless ``pruned_scale`` is 1."""
    if isinstance(pruned_scale, bool) or not isinstance(pruned_scale, (int, float)):
        raise ValueError(f"pruned_scale must be a number >= 0, got {pruned_scale!r}")
    if not math.isfinite(pruned_scale) or pruned_scale < 0:
        raise ValueError(f"pruned_scale must be a finite number >= 0, got {pruned_scale!r}")
    if pruned_scale != 1 and not masks:
        raise ValueError(f"pruned_scale={pruned_scale} needs masks (which weights are pruned), got none")
    for name, mask in (masks or {}).items():
        weight = getattr(modules.get(name), "weight", None)
        if weight is None or mask.dtype != torch.bool or mask.shape != weight.shape:
            raise ValueError(f"masks[{name!r}] must be a boolean tensor shaped like that layer's weight")
    return masks or {}


def _as_matrix(layer: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (shaped like layer.weight) in the (d_out, d_in) layout of :func:`get_weight`."""
    saved = layer.weight
    try:
        layer.weight = nn.Parameter(tensor.detach(), requires_grad=False)
        return get_weight(layer).clone()
    finally:
        layer.weight = saved


def finetune_step(
    model: nn.Module,
    batches: Sequence,
    loss_fn: LossFn,
    *,
    lr: float = 1e-5,
    epochs: int = 1,
    optimizer: str = "adam",
    max_grad_norm: float | None = 1.0,
    seed: int = 0,
    group=None,
    masks: dict[str, torch.Tensor] | None = None,
    pruned_scale: float = 1.0,
) -> dict:
    """``epochs`` passes over the batches, one optimiser step per batch (order shuffled with ``seed``).
    ``group``: data-parallel, one step per R consecutive batches of the order (rank r takes the r-th), on
    the mean gradient (DistributedDataParallel's semantics: R times fewer steps of R times the batch).
    ``masks`` / ``pruned_scale``: see the module docstring (0 = masked fine-tuning)."""
    lr = _check_lr(lr)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    modules = dict(model.named_modules())
    masked = [(modules[n].weight, m) for n, m in _check_masks(masks, pruned_scale, modules).items()]
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()  # deterministic: no dropout; the step is a plain optimisation of the task loss
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(batches), generator=gen).tolist()
        for i in order if group is None else _steps(order, group):
            opt.zero_grad(set_to_none=True)
            loss = _dp_loss(model, batches, i, loss_fn, device, group, params)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"fine-tuning loss became {float(loss.detach())} at lr={lr}")
            if group is None:
                loss.backward()
            if pruned_scale == 0:  # masked fine-tuning: the pruned coordinates get no gradient
                for p, m in masked:
                    if p.grad is not None:
                        p.grad.mul_(m)
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            _masked_step(opt, masked, pruned_scale)
            losses.append(float(loss.detach()))
    opt.zero_grad(set_to_none=True)
    del opt
    model.train(was_training)
    return {
        "step": "finetune",
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "steps": len(losses),
        "lr": lr,
        "epochs": epochs,
        "optimizer": optimizer,
        "masked": bool(masked) and pruned_scale == 0,
        "pruned_scale": pruned_scale,
        "seconds": time.perf_counter() - t0,
    }


def _steps(order: list[int], group) -> list[list[int]]:
    """The data-parallel steps: consecutive groups of R batch indices (the last one may be shorter)."""
    return [order[k : k + group.world] for k in range(0, len(order), group.world)]


def _dp_loss(model, batches, i, loss_fn, device, group, params) -> torch.Tensor:
    """One step's loss: batch ``i`` (one process), or the mean over step ``i``'s batches, each rank
    back-propagating its own and the gradients summed (then the loss is the summed value, detached)."""
    if group is None:
        return loss_fn(model, _to(batches[i], device))
    value = 0.0
    if group.rank < len(i):
        loss = loss_fn(model, _to(batches[i[group.rank]], device)) / len(i)
        loss.backward()
        value = float(loss.detach())
    return torch.tensor(group.all_reduce_grads(params, value))


@torch.no_grad()
def _masked_step(opt, masked: list, pruned_scale: float) -> None:
    """``opt.step()``; off each mask the update is scaled by ``pruned_scale`` (0: weights re-masked)."""
    if not masked or pruned_scale == 1:
        opt.step()
        return
    if pruned_scale == 0:
        opt.step()
        for p, m in masked:
            p.mul_(m)
        return
    old = [p.detach().clone() for p, _ in masked]
    opt.step()
    for (p, m), p0 in zip(masked, old):
        p.copy_(torch.where(m, p, torch.lerp(p0, p, pruned_scale)))


def dense_step(name: str, model: nn.Module, batches: Sequence, loss_fn: LossFn, **kwargs) -> dict:
    """Dispatch by name: ``newton`` | ``finetune`` | ``none``; inside a torch.distributed group of several
    processes the step is data-parallel (:mod:`iobs.prune.distributed`)."""
    from iobs.prune.distributed import active

    if name in ("newton", "finetune"):
        kwargs.setdefault("group", active())
    if name == "newton":
        return newton_step(model, batches, loss_fn, **kwargs)
    if name == "finetune":
        return finetune_step(model, batches, loss_fn, **kwargs)
    if name == "none":
        return {"step": "none", "seconds": 0.0}
    raise ValueError(f"dense_step must be one of {', '.join(DENSE_STEPS)}, got {name!r}")
