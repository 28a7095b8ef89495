"""Damping of a layer Hessian and the factorisations of its inverse that the OBS solvers use.

H = X Xᵀ (d_in × d_in) is positive semidefinite and often singular (few tokens, dead inputs).
The solvers work with the damped Hessian

    H_λ = H + λ I,   λ = percdamp · mean(diag H)            (SparseGPT's rule, percdamp = 0.01)

Dead inputs (H_jj == 0: input feature j is zero on every calibration token) are treated as SparseGPT
treats them: H_jj := 1 before damping, and the solvers zero W[:, j]. That costs nothing on the
calibration data (those inputs are always zero) and decouples j from every other input, so it
cannot disturb the other columns.

When the Cholesky factorisation of H_λ (or of its inverse) fails, λ is multiplied by 10 and the step
is logged at WARNING level, up to ``max_escalations`` times; after that a ValueError names the layer.
There is no silent fallback.
"""

from __future__ import annotations

import logging

import torch

from iobs._validate import check_finite

logger = logging.getLogger(__name__)

MAX_ESCALATIONS = 6


def dead_inputs(H: torch.Tensor) -> torch.Tensor:
    """Boolean mask of dead inputs: diag(H) == 0."""
    return torch.diagonal(H) == 0


def damped(H: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor, float]:
    """Return (H_λ, λ): a copy of H with dead diagonal entries set to 1, plus λ I, λ = percdamp·mean(diag)."""
    Hd = H.clone()
    diag = torch.diagonal(Hd)
    diag[diag == 0] = 1
    lam = float(percdamp) * float(diag.mean())
    diag += lam
    return Hd, lam


def _check_hessian(H: torch.Tensor, name: str, percdamp: float) -> None:
    if H.dim() != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"{name} must be a square (d_in, d_in) matrix, got shape {tuple(H.shape)}")
    check_finite(name, H)
    if not (percdamp >= 0 and percdamp < float("inf")):
        raise ValueError(f"percdamp must be a finite number >= 0, got {percdamp!r}")
    if bool((torch.diagonal(H) < 0).any()):
        raise ValueError(f"{name} has negative diagonal entries; it must be X Xᵀ (positive semidefinite)")


def _factor(H: torch.Tensor, percdamp: float, name: str, max_escalations: int, upper_of_inverse: bool):
    """Escalation loop shared by both factorisations: returns (Hinv or its upper Cholesky factor, λ)."""
    _check_hessian(H, name, percdamp)
    diag = torch.diagonal(H)
    dead = diag == 0
    scale = float(torch.where(dead, torch.ones_like(diag), diag).mean())
    lam = float(percdamp) * scale
    for attempt in range(max_escalations + 1):
        Hd = H.clone()
        dd = torch.diagonal(Hd)
        dd.masked_fill_(dead, 1)
        dd += lam
        out = None
        if upper_of_inverse:
            # Cholesky of the reversed matrix gives H_λ = R Rᵀ with R upper triangular, so
            # H_λ⁻¹ = R⁻ᵀ R⁻¹ = Uᵀ U with U = R⁻¹: the factor we need, without forming H_λ⁻¹.
            Lr, info = torch.linalg.cholesky_ex(Hd.flip(0, 1))
            del Hd
            if int(info) == 0:
                out = upper_triangular_inverse(Lr.flip(0, 1))
        else:
            L, info = torch.linalg.cholesky_ex(Hd)
            del Hd
            if int(info) == 0:
                out = torch.cholesky_inverse(L)
        # positive finite pivots imply a finite factor; checking the diagonal is enough
        if out is not None and bool(torch.isfinite(torch.diagonal(out)).all()):
            return out, lam
        if attempt == max_escalations:
            break
        new = lam * 10 if lam > 0 else 1e-6 * scale
        logger.warning(
            "%s: Cholesky failed at damping %.3g (%.3g x mean diag); retrying with %.3g",
            name,
            lam,
            lam / scale,
            new,
        )
        lam = new
    raise ValueError(
        f"{name}: Cholesky of the damped Hessian failed even at damping {lam:.3g} "
        f"({lam / scale:.3g} x mean(diag H)) after {max_escalations} escalations (x10 each); "
        f"the Hessian is not positive semidefinite or is badly scaled (increase percdamp or check the inputs)"
    )


def upper_triangular_inverse(R: torch.Tensor, base: int = 256) -> torch.Tensor:
    """R⁻¹ for upper-triangular R by 2×2 block recursion, [A B; 0 C]⁻¹ = [A⁻¹ −A⁻¹BC⁻¹; 0 C⁻¹]:
    d³/3 flops, almost all in matrix products (faster than a triangular solve against I)."""
    n = R.shape[0]
    if n <= base:
        eye = torch.eye(n, dtype=R.dtype, device=R.device)
        return torch.linalg.solve_triangular(R, eye, upper=True)
    h = n // 2
    Ainv = upper_triangular_inverse(R[:h, :h], base)
    Cinv = upper_triangular_inverse(R[h:, h:], base)
    out = torch.zeros_like(R)
    out[:h, :h] = Ainv
    out[h:, h:] = Cinv
    out[:h, h:] = -(Ainv @ R[:h, h:]) @ Cinv
    return out


def inverse_cholesky(
    H: torch.Tensor, percdamp: float = 0.01, *, name: str = "H", max_escalations: int = MAX_ESCALATIONS
) -> tuple[torch.Tensor, float]:
    """Upper-triangular U with Uᵀ U = H_λ⁻¹ (SparseGPT's Hinv), and the λ actually used.

    Row i of U (columns ≥ i) is the first row of (H_λ restricted to inputs i..)⁻¹ divided by the square
    root of its first entry: exactly what sequential column-by-column OBS needs. Computed as R⁻¹ from
    H_λ = R Rᵀ (Cholesky of the reversed matrix), 2/3·d³ flops, without forming H_λ⁻¹.
    """
    return _factor(H, percdamp, name, max_escalations, upper_of_inverse=True)


def damped_inverse(
    H: torch.Tensor, percdamp: float = 0.01, *, name: str = "H", max_escalations: int = MAX_ESCALATIONS
) -> tuple[torch.Tensor, float]:
    """H_λ⁻¹ through Cholesky (with the same escalation), and the λ actually used."""
    return _factor(H, percdamp, name, max_escalations, upper_of_inverse=False)
