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

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from iobs.obs.projection import cholesky_or_raise
from iobs.prune.layers import find_layers
from iobs.vision.data import check_labels


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

    Block b is held in Woodbury form (``Fb[b]`` None, ``Kchol[b]`` = chol(λ_b I_n + A_b A_bᵀ)) when n < B,
    else in dense form (``Fb[b]`` = F_b, ``Kchol[b]`` = chol(F_b)).
    """

    A: torch.Tensor  # (n, d) = G / √n
    grad: torch.Tensor  # (d,) mean per-sample gradient
    blocks: list[tuple[int, int]]
    lam: torch.Tensor  # (n_blocks,)
    Kchol: list[torch.Tensor]  # Cholesky factors (see the class docstring)
    Fb: list[torch.Tensor | None]  # explicit F_b for dense blocks, None for Woodbury blocks
    _inv_diag: torch.Tensor | None = field(default=None, repr=False)

    @property
    def d(self) -> int:
        return self.A.shape[1]

    @property
    def n(self) -> int:
        return self.A.shape[0]

    def inv_diag(self) -> torch.Tensor:
        """diag(F⁻¹): (1 − ℓ)/λ_b blockwise (Woodbury) or diag(F_b⁻¹) (dense); computed once."""
        if self._inv_diag is None:
            out = torch.empty(self.d, dtype=self.A.dtype, device=self.A.device)
            for (s, e), lam, L, Fb in zip(self.blocks, self.lam, self.Kchol, self.Fb):
                if Fb is not None:
                    out[s:e] = torch.cholesky_inverse(L).diagonal()
                    continue
                Ab = self.A[:, s:e]
                lev = (Ab * torch.cholesky_solve(Ab, L)).sum(0)
                out[s:e] = (1.0 - lev).clamp_min(torch.finfo(self.A.dtype).eps) / lam
            self._inv_diag = out
        return self._inv_diag

    def inv_mv(self, v: torch.Tensor) -> torch.Tensor:
        """F⁻¹ v blockwise: (v − A_bᵀ K⁻¹ A_b v)/λ_b (Woodbury) or a Cholesky solve with F_b (dense)."""
        out = torch.empty_like(v)
        for (s, e), lam, L, Fb in zip(self.blocks, self.lam, self.Kchol, self.Fb):
            if Fb is not None:
                out[s:e] = torch.cholesky_solve(v[s:e, None], L).squeeze(1)
                continue
            Ab = self.A[:, s:e]
            out[s:e] = (v[s:e] - Ab.T @ torch.cholesky_solve((Ab @ v[s:e])[:, None], L).squeeze(1)) / lam
        return out

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        """F v blockwise: λ_b v + A_bᵀ (A_b v), or F_b v (dense)."""
        out = torch.empty_like(v)
        for (s, e), lam, Fb in zip(self.blocks, self.lam, self.Fb):
            if Fb is not None:
                out[s:e] = Fb @ v[s:e]
                continue
            Ab = self.A[:, s:e]
            out[s:e] = lam * v[s:e] + Ab.T @ (Ab @ v[s:e])
        return out

    def column(self, i: int, b: int) -> torch.Tensor:
        """Column i of F inside its block b (entries s..e of F e_i)."""
        s, e = self.blocks[b]
        if self.Fb[b] is not None:
            return self.Fb[b][:, i - s].clone()
        col = self.A[:, s:e].T @ self.A[:, i]
        col[i - s] += self.lam[b]
        return col

    def block_of(self) -> torch.Tensor:
        """(d,) index of the block holding each weight."""
        idx = torch.empty(self.d, dtype=torch.long, device=self.A.device)
        for b, (s, e) in enumerate(self.blocks):
            idx[s:e] = b
        return idx

    def dense_block(self, b: int) -> torch.Tensor:
        """F_b as an explicit matrix."""
        if self.Fb[b] is not None:
            return self.Fb[b]
        s, e = self.blocks[b]
        Ab = self.A[:, s:e]
        return self.lam[b] * torch.eye(e - s, dtype=Ab.dtype, device=Ab.device) + Ab.T @ Ab

    def inverse_block(self, b: int) -> torch.Tensor:
        """F_b⁻¹ explicitly (Woodbury identity, or the Cholesky factor of a dense block)."""
        if self.Fb[b] is not None:
            inv = torch.cholesky_inverse(self.Kchol[b])
            return 0.5 * (inv + inv.T)
        s, e = self.blocks[b]
        return woodbury_inverse(self.A[:, s:e], float(self.lam[b]), L=self.Kchol[b])

    def quadratic(self, theta: torch.Tensor, theta0: torch.Tensor, use_grad: bool = True) -> float:
        """Local model of the loss change: gᵀδ + ½ δᵀFδ with δ = θ − θ₀."""
        delta = theta - theta0
        val = 0.5 * float(delta @ self.mv(delta))
        return val + float(self.grad @ delta) if use_grad else val


def woodbury_inverse(A: torch.Tensor, lam: float, L: torch.Tensor | None = None) -> torch.Tensor:
    """(λI + AᵀA)⁻¹ = (1/λ)(I − Aᵀ(λI_n + AAᵀ)⁻¹A) for A (n, B), λ > 0."""
    if not lam > 0:
        raise ValueError(f"damping λ must be > 0 for the Woodbury inverse, got {lam}")
    n, B = A.shape
    if L is None:
        L = cholesky_or_raise(lam * torch.eye(n, dtype=A.dtype, device=A.device) + A @ A.T, "λI + AAᵀ")
    Hinv = (torch.eye(B, dtype=A.dtype, device=A.device) - A.T @ torch.cholesky_solve(A, L)) / lam
    return 0.5 * (Hinv + Hinv.T)


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
    smaller per block, n ≥ B → dense (None, the default). All three represent the same matrix.
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
    n = G.shape[0]
    A = G / math.sqrt(n)
    eye = None
    lams, chols, Fbs = [], [], []
    for s, e in blocks:
        Ab = A[:, s:e]
        mean_diag = float((Ab * Ab).sum()) / (e - s)
        lam = damping if absolute_damping else damping * mean_diag
        if lam <= 0:  # a block whose gradients are all zero (dead units): fall back to absolute damping
            lam = damping
        lams.append(lam)
        if (n >= e - s) if dense is None else dense:
            Fb = Ab.T @ Ab
            Fb.diagonal().add_(lam)
            Fbs.append(Fb)
            chols.append(cholesky_or_raise(Fb, "F_b = λI + A_bᵀA_b"))
        else:
            Fbs.append(None)
            eye = torch.eye(n, dtype=A.dtype, device=A.device) if eye is None else eye
            chols.append(cholesky_or_raise(lam * eye + Ab @ Ab.T, "λI + A_b A_bᵀ"))
    return FisherBlocks(
        A=A,
        grad=G.mean(0),
        blocks=blocks,
        lam=torch.tensor(lams, dtype=A.dtype, device=A.device),
        Kchol=chols,
        Fb=Fbs,
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
