"""The empirical Fisher of a classifier in blocks along the flattened prunable weights (WoodFisher's model).

For n per-sample gradients g_1..g_n of the loss (rows of G, shape (n, d)), the empirical Fisher is
F = (1/n) Σ g_i g_iᵀ = AᵀA with A = G/√n. Block b (a run of at most ``block_size`` consecutive weights of
one layer; blocks never cross layers) is damped, F_b = λ_b I + A_bᵀA_b, with
λ_b = damping · mean(diag A_bᵀA_b) (or ``damping`` itself when ``absolute_damping``).
Its inverse follows from the Woodbury identity,

    F_b⁻¹ = (1/λ_b) (I − A_bᵀ (λ_b I_n + A_b A_bᵀ)⁻¹ A_b),

so only an n×n system is factorised per block; diag(F_b⁻¹) = (1 − ℓ)/λ_b with leverages
ℓ_j = a_jᵀ (λ_b I_n + A_b A_bᵀ)⁻¹ a_j, and F_b⁻¹ v needs two products with A_b. WoodFisher applies the
identity one sample at a time (n rank-one updates); the batched form above gives the same matrix.
When n ≥ B (more gradients than weights in the block) the B×B matrix F_b itself is cheaper: it is formed
once and factorised (Cholesky), and every operation below uses it instead (the *dense* form of a block;
2400 gradients in blocks of 500: about 10× less work per saliency, product or OBS update).
The per-sample gradients come from ``torch.func`` (``vmap`` of ``grad`` over samples).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from iobs.obs.curvature import Curvature
from iobs.prune.layers import find_layers
from iobs.vision.data import check_labels

logger = logging.getLogger(__name__)


def prunable_weights(
    model: nn.Module, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> dict[str, nn.Parameter]:
    """``{"<layer>.weight": Parameter}`` of the prunable layers (Linear, Conv2d with groups = 1; depthwise
    and grouped convolutions skipped) selected by ``include``/``exclude``; an error when none is left."""
    layers = find_layers(model, include, exclude, default_exclude=False)
    if not layers:
        raise ValueError(
            f"no prunable layer (Linear, or Conv2d with groups=1) matches include={include} exclude={exclude}"
        )
    return {f"{name}.weight": m.weight for name, m in layers.items()}


def get_flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weights as one flat vector θ (concatenated in ``params`` order)."""
    return torch.cat([p.detach().reshape(-1) for p in params.values()])


@torch.no_grad()
def set_flat(params: dict[str, nn.Parameter], theta: torch.Tensor) -> None:
    """Write a flat vector back into the parameters (in place)."""
    i = 0
    for p in params.values():
        n = p.numel()
        p.copy_(theta[i : i + n].reshape(p.shape).to(p.dtype))
        i += n
    if i != theta.numel():
        raise ValueError(f"theta has {theta.numel()} entries, the parameters hold {i}")


def per_sample_grads(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    chunk: int = 256,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """G (n, d): row i = ∇_θ CE(model(x_i), y_i) over the flattened ``params``, model in eval mode."""
    from torch.func import functional_call, grad, vmap

    if X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise ValueError(
            f"X and y must hold the same positive number of samples, got {X.shape[0]} and {y.shape[0]}"
        )
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    names = list(params)
    fixed = {k: v.detach() for k, v in model.named_parameters() if k not in params}
    fixed.update({k: v for k, v in model.named_buffers()})
    with torch.no_grad():
        probe = model(X[:1].to(dev))
    n_classes = getattr(probe, "logits", probe).shape[-1]
    y = check_labels(y, n_classes, "y")

    def loss(theta: dict, x, t):
        out = functional_call(model, {**fixed, **theta}, (x.unsqueeze(0),))
        out = getattr(out, "logits", out)
        return nn.functional.cross_entropy(out, t.unsqueeze(0))

    g = vmap(grad(loss), in_dims=(None, 0, 0))
    theta = {k: params[k].detach() for k in names}
    rows = []
    for i in range(0, X.shape[0], chunk):
        out = g(theta, X[i : i + chunk].to(dev), y[i : i + chunk].to(dev))
        rows.append(torch.cat([out[k].reshape(out[k].shape[0], -1) for k in names], 1).to(dtype))
    model.train(was)
    return torch.cat(rows)


def make_blocks(sizes: Sequence[int], block_size: int) -> list[tuple[int, int]]:
    """(start, end) ranges over the flat vector: each layer of ``sizes`` cut into runs of ``block_size``
    (the last run of a layer may be shorter)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be an integer >= 1, got {block_size!r}")
    if block_size > sum(sizes):
        raise ValueError(
            f"block_size={block_size} exceeds the {sum(sizes)} prunable weights; use at most {sum(sizes)} "
            "(one block per layer needs block_size >= the largest layer)"
        )
    blocks, start = [], 0
    for n in sizes:
        for b in range(0, n, block_size):
            blocks.append((start + b, start + min(n, b + block_size)))
        start += n
    return blocks


@dataclass
class FisherBlocks:
    """A block-diagonal damped empirical Fisher F = diag(λ_b I + A_bᵀA_b) and the mean gradient.

    Block b is the curvature operator ``ops[b]`` (:class:`iobs.obs.curvature.Curvature`): low-rank
    (Woodbury, n×n Cholesky) when n < B, else dense (B×B Cholesky).
    """

    A: torch.Tensor  # (n, d) = G / √n
    grad: torch.Tensor  # (d,) mean per-sample gradient
    blocks: list[tuple[int, int]]
    lam: torch.Tensor  # (n_blocks,)
    ops: list[Curvature]
    _inv_diag: torch.Tensor | None = field(default=None, repr=False)

    @property
    def d(self) -> int:
        return self.A.shape[1]

    def _blockwise(self, fn, v: torch.Tensor | None = None) -> torch.Tensor:
        like = self.A[0] if v is None else v
        out = torch.empty_like(like)
        for (s, e), op in zip(self.blocks, self.ops):
            out[s:e] = fn(op) if v is None else fn(op, v[s:e])
        return out

    def inv_diag(self) -> torch.Tensor:
        """diag(F⁻¹): (1 − ℓ)/λ_b blockwise (Woodbury) or diag(F_b⁻¹) (dense); computed once."""
        if self._inv_diag is None:
            self._inv_diag = self._blockwise(Curvature.inv_diag)
        return self._inv_diag

    def inv_mv(self, v: torch.Tensor) -> torch.Tensor:
        """F⁻¹ v blockwise: (v − A_bᵀ K⁻¹ A_b v)/λ_b (Woodbury) or a Cholesky solve with F_b (dense)."""
        return self._blockwise(Curvature.solve, v)

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        """F v blockwise: λ_b v + A_bᵀ (A_b v), or F_b v (dense)."""
        return self._blockwise(Curvature.mv, v)

    def column(self, i: int, b: int) -> torch.Tensor:
        """Column i of F inside its block b (entries s..e of F e_i)."""
        return self.ops[b].column(i - self.blocks[b][0])

    def block_of(self) -> torch.Tensor:
        """(d,) index of the block holding each weight."""
        idx = torch.empty(self.d, dtype=torch.long, device=self.A.device)
        for b, (s, e) in enumerate(self.blocks):
            idx[s:e] = b
        return idx

    def quadratic(self, theta: torch.Tensor, theta0: torch.Tensor, use_grad: bool = True) -> float:
        """Local model of the loss change: gᵀδ + ½ δᵀFδ with δ = θ − θ₀."""
        delta = theta - theta0
        val = 0.5 * float(delta @ self.mv(delta))
        return val + float(self.grad @ delta) if use_grad else val


def fisher_from_grads(
    G: torch.Tensor,
    sizes: Sequence[int],
    block_size: int,
    damping: float = 1e-3,
    absolute_damping: bool = False,
    dense: bool | None = None,
) -> FisherBlocks:
    """Blocks of the damped empirical Fisher from per-sample gradients G (n, d); see the module docstring.

    ``dense``: hold every block as the explicit B×B F_b (True), in Woodbury form (False), or whichever is
    smaller per block, n ≥ B → dense (None, the default). All three represent the same matrix. A block
    whose Cholesky fails gets more damping by the policy of :mod:`iobs.obs.damping` (logged).
    """
    if G.dim() != 2 or G.shape[0] < 1:
        raise ValueError(
            f"G must be a (n, d) matrix of per-sample gradients with n >= 1, got {tuple(G.shape)}"
        )
    if sum(sizes) != G.shape[1]:
        raise ValueError(f"layer sizes sum to {sum(sizes)} but G has {G.shape[1]} columns")
    if not (isinstance(damping, (int, float)) and math.isfinite(damping) and damping > 0):
        raise ValueError(f"damping must be a finite number > 0, got {damping!r}")
    blocks = make_blocks(sizes, block_size)
    A = G / math.sqrt(G.shape[0])
    ops = []
    for s, e in blocks:
        Ab = A[:, s:e]
        mean_diag = float((Ab * Ab).sum()) / (e - s)
        lam = damping if absolute_damping else damping * mean_diag
        if lam <= 0:
            logger.info("Fisher block %d:%d has zero gradients: absolute damping %.3g", s, e, damping)
            lam = damping
        name = f"Fisher block {s}:{e}"
        ops.append(Curvature.from_factor(Ab, lam, dense=dense, name=name, scale=mean_diag or 1.0))
    return FisherBlocks(
        A=A,
        grad=G.mean(0),
        blocks=blocks,
        lam=torch.tensor([op.lam for op in ops], dtype=A.dtype, device=A.device),
        ops=ops,
    )


def empirical_fisher(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    X: torch.Tensor,
    y: torch.Tensor,
    block_size: int,
    damping: float = 1e-3,
    absolute_damping: bool = False,
    dtype: torch.dtype = torch.float64,
) -> FisherBlocks:
    """Per-sample gradients of ``model`` on (X, y), then :func:`fisher_from_grads`."""
    make_blocks([p.numel() for p in params.values()], block_size)  # validate before the expensive part
    G = per_sample_grads(model, params, X, y, dtype=dtype)
    return fisher_from_grads(G, [p.numel() for p in params.values()], block_size, damping, absolute_damping)
