"""Solving one layer from its Hessian: the layer-solver choice and the per-layer record of a walk."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from iobs.prune.layers import get_weight, set_weight

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerSolver:
    """How every layer of a walk is pruned: :func:`iobs.obs.layer.prune_layer` with ``method`` and
    exactly one of ``sparsity`` (fraction per layer, per row with ``per_row``) or ``pattern`` (N:M);
    ``blocksize`` and ``percdamp`` (λ = percdamp · mean(diag H)) go to the solver; ``refit`` re-fits the
    kept weights exactly on the mask afterwards; ``warm`` is the warm start of ``mask-search``;
    ``layer_sparsity`` ((name, fraction), ...) replaces ``sparsity`` layer by layer (a non-uniform
    allocation, iobs.prune.allocation: every layer the solver sees must be named). Checked per layer
    by the solver, whose errors name the layer."""

    method: str = "sparsegpt"
    sparsity: float | None = 0.5
    pattern: str | None = None
    per_row: bool = False
    blocksize: int = 128
    percdamp: float = 0.01
    refit: bool = False
    warm: str = "sparsegpt"
    layer_sparsity: tuple[tuple[str, float], ...] | None = None

    def __call__(self, W: torch.Tensor, H: torch.Tensor, name: str):
        from iobs.obs.layer import prune_layer

        kw = dict(per_row=self.per_row, blocksize=self.blocksize, percdamp=self.percdamp, refit=self.refit)
        if self.method == "mask-search":
            kw["search"] = {"warm": self.warm}
        return prune_layer(W, H, self.method, self.sparsity_of(name), self.pattern, name=name, **kw)

    def sparsity_of(self, name: str) -> float | None:
        """The fraction pruned in layer ``name``: its ``layer_sparsity`` entry, else ``sparsity``."""
        if self.layer_sparsity is None:
            return self.sparsity
        for n, s in self.layer_sparsity:
            if n == name:
                return s
        raise ValueError(f"layer {name} has no entry in layer_sparsity (the allocation covers other layers)")


DEFAULT_SOLVER = LayerSolver()  # SparseGPT at 50 %


def solve_layer(name: str, module: nn.Module, H: torch.Tensor, tokens: int, solver: LayerSolver) -> dict:
    """Prune ``module`` in place from its Hessian; return its record (error = tr((W−Ŵ) H (W−Ŵ)ᵀ))."""
    if tokens == 0:
        raise ValueError(f"layer {name} received no input during the calibration forward pass; exclude it")
    W = get_weight(module).to(H.dtype).clone(memory_format=torch.contiguous_format)
    dense = float(torch.einsum("ij,jk,ik->", W, H, W))  # ‖W X‖², for the relative error
    t0 = time.perf_counter()
    # the solver gets its own copy: a solver that updates its input in place must not touch W
    try:
        res = solver(W.clone(), H, name)
    except ValueError as e:
        if name in str(e):
            raise
        raise ValueError(f"layer {name} (W {tuple(W.shape)}): {e}") from e
    seconds = time.perf_counter() - t0
    mask = res.mask.to(W.device)
    set_weight(module, res.W.to(W.device, H.dtype) * mask)  # exact zeros off the support
    stored = get_weight(module)
    n = mask.numel()
    kept = int(mask.sum())
    return {
        "name": name,
        "shape": list(W.shape),
        "numel": n,
        "kept": kept,
        "sparsity": 1.0 - kept / n,
        "zeros": float((stored == 0).sum()) / n,
        "error": float(res.error),
        "rel_error": float(res.error) / dense if dense > 0 else 0.0,
        "damping": float(res.damping) if res.damping is not None else None,
        "seconds": seconds,
        "tokens": tokens,
    }


def solve_group(layers: dict[str, nn.Module], acc: dict, solver: LayerSolver, extra: dict) -> list[dict]:
    """Solve every layer of a group from its accumulated H (freed after use); ``extra`` joins each record."""
    records = []
    for name, module in layers.items():
        a = acc[name]
        rec = solve_layer(name, module, a.H, a.tokens, solver)
        rec.update(extra)
        records.append(rec)
        a.H = None  # free before the next layer
        log.debug("pruned %s: sparsity %.4f error %.4g", name, rec["sparsity"], rec["error"])
    return records
