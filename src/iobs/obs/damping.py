"""The one damping policy: Cholesky of H + λI, escalating λ when it fails, logged, never silent.

Every factorisation of a damped curvature matrix in the package goes through :func:`escalate`: it tries
the factorisation at λ; when that fails, λ is multiplied by 10 (from λ = 0: set to 1e-6 · scale) and the
step is logged, up to ``max_escalations`` times; after that a ValueError names the matrix. The starting λ
is each caller's own rule (kept as it was):

* layer Hessians (SparseGPT, OBC): H = X Xᵀ (d_in × d_in), λ = percdamp · mean(diag H) (percdamp = 0.01);
  dead inputs (H_jj == 0: input j is zero on every calibration token) are treated as SparseGPT treats
  them: H_jj := 1 before damping, and the solvers zero W[:, j] (free on the calibration data, and it
  decouples j from every other input);
* recovery solvers: a fixed λ given by the user (no escalation: an error), or "auto" (λ = 0 when H is
  numerically positive definite, else 1e-6 · mean(diag H));
* Fisher blocks and the Newton dense step: λ = damping · mean(diag), absolute when that mean is 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from iobs._validate import check_finite

logger = logging.getLogger(__name__)

MAX_ESCALATIONS = 6
#: first λ tried after λ = 0 fails, as a fraction of the matrix scale
FIRST_DAMPING = 1e-6


def escalate(
    attempt: Callable[[float], torch.Tensor | None],
    lam: float,
    scale: float,
    *,
    name: str,
    max_escalations: int = MAX_ESCALATIONS,
    level: int = logging.WARNING,
    hint: str = "the matrix is not positive semidefinite or is badly scaled",
):
    """Run ``attempt(λ)`` (a factor, or None when the factorisation failed) with escalating λ; return
    (factor, λ used). ``scale`` (e.g. mean(diag H)) sets the first λ after 0 and the logged ratios."""
    for step in range(max_escalations + 1):
        out = attempt(lam)
        if out is not None:
            return out, lam
        if step == max_escalations:
            break
        new = lam * 10 if lam > 0 else FIRST_DAMPING * scale
        logger.log(
            level,
            "%s: Cholesky failed at damping %.3g (%.3g x scale); retrying with %.3g",
            name,
            lam,
            lam / scale,
            new,
        )
        lam = new
    after = f" after {max_escalations} escalations (x10 each)" if max_escalations else ""
    raise ValueError(
        f"{name}: Cholesky failed, not positive definite with damping={lam:.3g} ({lam / scale:.3g} x scale)"
        f"{after}; {hint}"
    )


def cholesky_damped(M: torch.Tensor, lam: float, *, name: str, scale=None, accept=None, **policy):
    """Lower Cholesky factor of M + λI under the policy (λ = 0: M itself); returns (L, λ used).
    ``scale`` defaults to mean(diag M); ``accept(L)`` may reject the factor of M itself (λ = 0) that
    succeeded but is numerically singular; ``policy``: max_escalations, level, hint of ``escalate``."""
    if scale is None:
        scale = max(float(M.diagonal().mean()), 1e-300) if M.numel() else 1.0

    def attempt(lam):
        A = M if lam == 0 else M + lam * torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
        L, info = torch.linalg.cholesky_ex(A)
        return L if int(info) == 0 and (accept is None or lam > 0 or accept(L)) else None

    return escalate(attempt, lam, scale, name=name, **policy)


def cholesky_or_raise(M: torch.Tensor, name: str = "H") -> torch.Tensor:
    """Lower Cholesky factor of (a batch of) already damped SPD matrices, or a ValueError naming ``name``
    (the policy with no escalation: the caller chose the damping)."""
    L, info = torch.linalg.cholesky_ex(M)
    if bool((info != 0).any()):
        raise ValueError(
            f"{name} is not positive definite (Cholesky failed); use damping > 0 or a support with fewer "
            "entries than the rank of the Hessian"
        )
    return L


def check_hessian(H: torch.Tensor, name: str, percdamp: float) -> None:
    """A square, finite H with a non-negative diagonal and a finite percdamp >= 0, or a ValueError."""
    if H.dim() != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"{name} must be a square (d_in, d_in) matrix, got shape {tuple(H.shape)}")
    check_finite(name, H)
    if not (percdamp >= 0 and percdamp < float("inf")):
        raise ValueError(f"percdamp must be a finite number >= 0, got {percdamp!r}")
    if bool((torch.diagonal(H) < 0).any()):
        raise ValueError(f"{name} has negative diagonal entries; it must be X Xᵀ (positive semidefinite)")


def fill_dead(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a copy of H with each dead input's diagonal entry set to 1, the dead mask): an input that is never
    active has H_jj = 0, so its weights cost nothing to zero (the solvers zero them)."""
    dead = torch.diagonal(H) == 0
    Hd = H.clone()
    Hd.diagonal().masked_fill_(dead, 1)
    return Hd, dead


def _factor(H: torch.Tensor, percdamp: float, name: str, max_escalations: int, upper_of_inverse: bool):
    """Layer-Hessian factorisation under the policy: returns (Hinv or its upper Cholesky factor, λ)."""
    check_hessian(H, name, percdamp)
    H0, dead = fill_dead(H)
    diag = torch.diagonal(H)  # mean over a contiguous copy: the reduction order λ has always had
    scale = float(torch.where(dead, torch.ones_like(diag), diag).mean())

    def attempt(lam):
        Hd = H0.clone()
        torch.diagonal(Hd).add_(lam)
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
        return out if out is not None and bool(torch.isfinite(torch.diagonal(out)).all()) else None

    hint = (
        "the Hessian is not positive semidefinite or is badly scaled (increase percdamp or check the inputs)"
    )
    return escalate(
        attempt, float(percdamp) * scale, scale, name=name, max_escalations=max_escalations, hint=hint
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
