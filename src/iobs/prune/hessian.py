"""Layer Hessians from calibration inputs, accumulated by forward hooks: H = X Xᵀ = Σ_tokens x xᵀ.

X has one column per token (Linear / GPT-2 Conv1D: every position of every sample) or per output
position of a convolution (Conv2d: the unfolded input patch, ordered like weight.reshape(out, -1)).
Streaming: each call adds its xᵀx and drops the activations; nothing but H (d_in × d_in) and the
token count is kept. The sum is unscaled (no 2/n), so the layer error is tr((W − Ŵ) H (W − Ŵ)ᵀ).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from iobs.prune.layers import in_features


def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The module's input as rows of X: (tokens, d_in), columns ordered like :func:`get_weight`'s W."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError(f"grouped convolutions (groups={module.groups}) have one Hessian per group")
        if x.dim() == 3:  # unbatched (C, H, W)
            x = x.unsqueeze(0)
        padding = module.padding
        if isinstance(padding, str) or module.padding_mode != "zeros":
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
            padding = 0
        cols = F.unfold(
            x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride
        )
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (B * L, C * kh * kw)
    return x.reshape(-1, x.shape[-1])


class HessianAccumulator:
    """Running H = Σ x xᵀ for one layer (``dtype``: float32 by default, float64 for float64 inputs)."""

    def __init__(self, module: nn.Module, dtype: torch.dtype | None = None, device=None, name: str = "layer"):
        self.module = module
        self.name = name
        d = in_features(module)
        w = module.weight
        self.dtype = dtype or (torch.float64 if w.dtype == torch.float64 else torch.float32)
        self.H = torch.zeros(d, d, dtype=self.dtype, device=device or w.device)
        self.tokens = 0

    def add(self, x: torch.Tensor, shared: _LastProduct | None = None) -> None:
        """H += Xᵀ X for this call's input; ``shared`` reuses Xᵀ X when the previous hooked layer got the very
        same input tensor (q/k/v, gate/up), so sibling layers cost one product."""
        conv = isinstance(self.module, nn.Conv2d)
        if shared is not None and not conv and shared.matches(x, self.H):
            self.H.add_(shared.XtX)
            self.tokens += shared.tokens
            return
        X = layer_inputs(self.module, x.detach()).to(self.H.device, self.dtype)
        if not bool(torch.isfinite(X).all()):
            raise ValueError(
                f"inputs of {self.name} contain NaN/Inf: the model produced non-finite activations before "
                "it (check for NaN/Inf weights or an overflowing dtype)"
            )
        if shared is not None and not conv:
            shared.store(x, X.t() @ X, X.shape[0])
            self.H.add_(shared.XtX)
        else:
            self.H.addmm_(X.t(), X)
        self.tokens += X.shape[0]

    def hook(self, module, args, output=None):
        self.add(args[0])


class _LastProduct:
    """Xᵀ X of the most recent hooked input (held with the input itself, so identity is meaningful)."""

    def __init__(self):
        self.x = self.XtX = None
        self.tokens = 0

    def matches(self, x, H) -> bool:
        return x is self.x and self.XtX.shape == H.shape and self.XtX.dtype == H.dtype

    def store(self, x, XtX, tokens) -> None:
        self.x, self.XtX, self.tokens = x, XtX, tokens


@contextlib.contextmanager
def accumulate_hessians(
    layers: dict[str, nn.Module],
    dtype: torch.dtype | None = None,
    reduce: Callable[[dict[str, HessianAccumulator]], None] | None = None,
) -> Iterator[dict[str, HessianAccumulator]]:
    """Forward pre-hooks that add every call's input to its layer's H; removed on exit. Layers fed the same
    input tensor (e.g. q/k/v) share one Xᵀ X per call. ``reduce(acc)`` runs after the hooks are removed
    (on a normal exit only): e.g. H = Σ_ranks H_r over torch.distributed processes."""
    acc = {name: HessianAccumulator(m, dtype, name=name) for name, m in layers.items()}
    shared = _LastProduct()
    handles = [
        m.register_forward_pre_hook(lambda mod, args, a=acc[name]: a.add(args[0], shared))
        for name, m in layers.items()
    ]
    try:
        yield acc
    finally:
        for h in handles:
            h.remove()
        shared.store(None, None, 0)
    if reduce is not None:
        reduce(acc)
