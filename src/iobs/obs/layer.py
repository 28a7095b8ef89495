"""One entry point for pruning a linear layer: ``prune_layer(W, H, method, sparsity | pattern)``.

W is (d_out, d_in) with rows = outputs; H = X Xᵀ summed over calibration tokens (no scaling), X of
shape (d_in, N). Every method takes the same H (Wanda uses ‖X_j‖₂ = sqrt(H_jj); magnitude uses H only
for the reported error). The reported error is the layer reconstruction error

    ‖W X − Ŵ X‖_F² = tr((W − Ŵ) H (W − Ŵ)ᵀ)

with the undamped H. Work is done in float32, or float64 when W is float64 (H is cast to match);
Ŵ is returned in W's dtype and on W's device (the device of W decides where the work runs).

Budgets are exact for every method: ``sparsity`` s prunes floor(s·d_out·d_in) weights per layer, or
floor(s·d_in) in every row with ``per_row``; ``pattern`` N:M keeps exactly N of every M consecutive
inputs in each row. Where the weights compete: magnitude over the whole matrix; SparseGPT over each
block of columns (budget split over blocks, see iobs.obs.sparsegpt); Wanda and OBC within each row
(the per-layer budget split as floor(P/d_out) or one more per row, see iobs.obs.scores). ``mask``
is the pruning decision; Ŵ is 0 wherever the mask is False, and may also be 0 where the weight was
already 0 or its input is dead (H_jj = 0, zeroed by SparseGPT and OBC at no cost).

Speed: SparseGPT runs a short loop of small kernels per input column. On a CPU shared with other jobs,
OpenMP threads make every such kernel wait for all threads; with 2 threads on 2 busy cores it was
3-27x slower than with ``torch.set_num_threads(1)`` (benchmarks/results/layer_solver_speed.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from iobs._validate import check_finite, check_int_range, check_sparsity, parse_nm

METHODS = ("sparsegpt", "obc", "wanda", "magnitude", "mask-search", "alps")


@dataclass
class LayerResult:
    """Pruned weights, mask (True = kept), ‖(W−Ŵ)X‖², absolute damping λ used (0 if none), timing."""

    W: torch.Tensor
    mask: torch.Tensor
    error: float
    damping: float
    method: str
    seconds: float

    @property
    def sparsity(self) -> float:
        """Fraction of weights the mask prunes."""
        return 1.0 - float(self.mask.sum()) / self.mask.numel()


def layer_error(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    """tr((W − Ŵ) H (W − Ŵ)ᵀ) = ‖(W − Ŵ) X‖_F² for H = X Xᵀ."""
    D = (W - W_hat).to(H.dtype)
    return float(((D @ H) * D).sum())


def _work_dtype(W: torch.Tensor) -> torch.dtype:
    return torch.float64 if W.dtype == torch.float64 else torch.float32


def _check_args(W, H, method, sparsity, pattern, blocksize, percdamp):
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    for nm_, t in (("W", W), ("H", H)):
        if not torch.is_tensor(t):
            raise TypeError(f"{nm_} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{nm_} must be a floating-point tensor, got dtype {t.dtype}")
    if W.dim() != 2:
        raise ValueError(f"W must be a 2-D (d_out, d_in) matrix, got shape {tuple(W.shape)}")
    d_in = W.shape[1]
    if tuple(H.shape) != (d_in, d_in):
        raise ValueError(
            f"H must have shape (d_in, d_in) = ({d_in}, {d_in}) for W of shape "
            f"{tuple(W.shape)}, got {tuple(H.shape)}"
        )
    if (sparsity is None) == (pattern is None):
        raise ValueError(
            "give exactly one of sparsity (a fraction in [0, 1)) or pattern (e.g. '2:4'), "
            f"got sparsity={sparsity!r}, pattern={pattern!r}"
        )
    nm = None
    if pattern is not None:
        nm = parse_nm(pattern)
        if d_in % nm[1]:
            raise ValueError(
                f"pattern {nm[0]}:{nm[1]} needs the row length (d_in) divisible by M={nm[1]}, got d_in={d_in}"
            )
    else:
        sparsity = check_sparsity(sparsity)
    check_int_range("blocksize", blocksize, 1, 1 << 30)
    try:
        percdamp = float(percdamp)
    except (TypeError, ValueError):
        raise TypeError(f"percdamp must be a number >= 0, got {percdamp!r}") from None
    if not (0 <= percdamp < float("inf")):
        raise ValueError(f"percdamp must be a finite number >= 0, got {percdamp!r}")
    check_finite("W", W)
    check_finite("H", H)
    return sparsity, nm, percdamp


def prune_layer(
    W: torch.Tensor,
    H: torch.Tensor,
    method: str = "sparsegpt",
    sparsity: float | None = None,
    pattern: str | tuple[int, int] | None = None,
    *,
    per_row: bool = False,
    blocksize: int = 128,
    percdamp: float = 0.01,
    refit: bool = False,
    search: dict | None = None,
    name: str = "H",
) -> LayerResult:
    """Prune one layer. Exactly one of ``sparsity`` (fraction pruned, floor(s·n) weights per layer, or per
    row with ``per_row``) and ``pattern`` (N:M, keep N of every M consecutive inputs) must be given.

    ``blocksize`` and ``percdamp`` (λ = percdamp·mean(diag H)) apply to sparsegpt and obc (and the
    damping of mask-search, alps and the re-fit); ``name`` labels the layer in damping warnings and
    errors. ``refit``: afterwards, re-fit every row's kept weights exactly on the mask
    (:func:`iobs.obs.refit.refit`). ``mask-search`` = SparseGPT, then I-OBS mask search
    (:func:`iobs.obs.mask_search.mask_search`; ``search`` = its keyword options, e.g. add, iters);
    ``alps`` = :func:`iobs.obs.alps.alps` (``search`` = its options).
    """
    sparsity, nm, percdamp = _check_args(W, H, method, sparsity, pattern, blocksize, percdamp)
    opts = dict(per_row=per_row, blocksize=blocksize, percdamp=percdamp, name=name, search=search or {})
    with torch.no_grad():
        res = _prune(W.detach(), H.detach(), method, sparsity, nm, **opts)
        return _refit(W.detach(), H.detach(), res, percdamp, name) if refit else res


def _refit(W, H, res: LayerResult, percdamp, name) -> LayerResult:
    from iobs.obs.refit import refit

    t0 = time.perf_counter()
    dtype = _work_dtype(W)
    Wf, Hf = W.to(dtype), H.to(device=W.device, dtype=dtype)
    W_hat = refit(Wf, Hf, res.mask, percdamp=percdamp, W0=res.W.to(dtype), name=name)
    res.W, res.error = W_hat.to(W.dtype), layer_error(Wf, W_hat, Hf)
    res.method, res.seconds = res.method + "+refit", res.seconds + time.perf_counter() - t0
    return res


def _solve(Wf, Hf, method, sparsity, nm, per_row, blocksize, percdamp, name, search):
    """(Ŵ, mask, λ) of one method on the work-dtype W and H."""
    if method == "mask-search":
        from iobs.obs.mask_search import WARM_STARTS, mask_search

        search = dict(search)
        warm = search.pop("warm", "sparsegpt")
        if warm not in WARM_STARTS:
            raise ValueError(f"mask-search warm start must be one of {', '.join(WARM_STARTS)}, got {warm!r}")
        W0, mask, lam = _solve(Wf, Hf, warm, sparsity, nm, per_row, blocksize, percdamp, name, {})
        W_hat, mask, _ = mask_search(Wf, Hf, mask, nm, W0=W0, percdamp=percdamp, name=name, **search)
        return W_hat, mask, lam
    if method == "sparsegpt":
        from iobs.obs.sparsegpt import sparsegpt

        return sparsegpt(
            Wf, Hf, sparsity, nm, per_row=per_row, blocksize=blocksize, percdamp=percdamp, name=name
        )
    if method == "alps":
        from iobs.obs.alps import alps

        W_hat, mask, info = alps(
            Wf, Hf, sparsity, nm, per_row=per_row, percdamp=percdamp, name=name, **search
        )
        return W_hat, mask, info["damping"]
    if method == "obc":
        from iobs.obs.obc import obc

        return obc(Wf, Hf, sparsity, nm, per_row=per_row, percdamp=percdamp, name=name)
    from iobs.obs.scores import magnitude_mask, wanda_mask

    if method == "wanda":
        mask = wanda_mask(Wf, Hf, sparsity, nm, per_row=per_row)
    else:
        mask = magnitude_mask(Wf, sparsity, nm, per_row=per_row)
    return Wf * mask, mask, 0.0


def _prune(W, H, method, sparsity, nm, per_row, blocksize, percdamp, name, search) -> LayerResult:
    t0 = time.perf_counter()
    dtype = _work_dtype(W)
    Wf = W.to(dtype)
    Hf = H.to(device=W.device, dtype=dtype)
    lam = 0.0
    if nm is None and sparsity == 0.0:
        W_hat, mask = Wf.clone(), torch.ones_like(Wf, dtype=torch.bool)
    else:
        W_hat, mask, lam = _solve(Wf, Hf, method, sparsity, nm, per_row, blocksize, percdamp, name, search)
    error = layer_error(Wf, W_hat, Hf)
    if W.is_cuda:
        torch.cuda.synchronize(W.device)
    return LayerResult(
        W=W_hat.to(W.dtype),
        mask=mask,
        error=error,
        damping=lam,
        method=method,
        seconds=time.perf_counter() - t0,
    )
