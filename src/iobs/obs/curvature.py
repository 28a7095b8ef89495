"""The one curvature operator: an SPD matrix H (d × d) held densely or as H = BᵀB + μI.

* dense form: H explicit, L = chol(H);
* low-rank form (B of shape (m, d), m < d): L = chol(K), K = μI_m + BBᵀ, and by the Woodbury and
  push-through identities every operation costs m×m work:

      H⁻¹v = (v − Bᵀ K⁻¹ B v)/μ,   H⁻¹Bᵀc = Bᵀ K⁻¹ c  (no 1/μ),   diag H⁻¹ = (1 − ℓ)/μ,  ℓ_j = b_jᵀ K⁻¹ b_j.

:meth:`Curvature.from_factor` picks the form (low-rank while m < d); the damping λ added to make H
positive definite follows the one policy of :mod:`iobs.obs.damping` (escalation logged, never silent).
Used by the recovery solvers, the OBS projection and the Fisher blocks.
"""

from __future__ import annotations

import torch

from iobs.obs.damping import cholesky_damped, escalate


class Curvature:
    """H_λ = H + λI in dense or low-rank form (see the module docstring); ``lam`` is the λ added."""

    def __init__(self, L, *, H=None, B=None, mu: float = 0.0, lam: float = 0.0):
        self.L, self.H, self.B, self.mu, self.lam = L, H, B, mu, lam

    @classmethod
    def dense(cls, H: torch.Tensor, lam: float = 0.0, *, name: str = "H", **policy) -> Curvature:
        """H + λI with λ escalated by the damping policy (``policy``: see ``cholesky_damped``)."""
        L, lam = cholesky_damped(H, lam, name=name, **policy)
        eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        return cls(L, H=H + lam * eye, lam=lam)

    @classmethod
    def lowrank(
        cls,
        B: torch.Tensor,
        c: float = 0.0,
        lam: float = 0.0,
        *,
        name: str = "μI + BBᵀ",
        scale=None,
        **policy,
    ) -> Curvature:
        """BᵀB + (c + λ)I, λ escalated by the damping policy while μ = c + λ ≤ 0 or chol(K) fails
        (``policy``: max_escalations, level, hint of ``escalate``)."""
        m, d = B.shape
        eye = torch.eye(m, dtype=B.dtype, device=B.device)

        def attempt(lam):
            mu = c + lam
            if mu <= 0:  # rank BᵀB ≤ m < d: singular without damping
                return None
            L, info = torch.linalg.cholesky_ex(mu * eye + B @ B.T)
            return L if int(info) == 0 else None

        if scale is None:
            scale = max(float((B * B).sum()) / d, 1e-300)
        L, lam = escalate(attempt, lam, scale, name=name, **policy)
        return cls(L, B=B, mu=c + lam, lam=lam)

    @classmethod
    def from_factor(cls, B: torch.Tensor, lam: float, *, dense: bool | None = None, **policy) -> Curvature:
        """BᵀB + λI in the cheaper form: dense when m ≥ d (or ``dense``), else low-rank."""
        if (B.shape[0] >= B.shape[1]) if dense is None else dense:
            return cls.dense(B.T @ B, lam, **policy)
        return cls.lowrank(B, 0.0, lam, **policy)

    @property
    def lowrank_form(self) -> bool:
        return self.H is None

    @property
    def d(self) -> int:
        return self.B.shape[1] if self.H is None else self.H.shape[0]

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        """H v."""
        if self.H is not None:
            return self.H @ v
        return self.mu * v + self.B.T @ (self.B @ v)

    def solve(self, v: torch.Tensor) -> torch.Tensor:
        """H⁻¹ v."""
        if self.H is not None:
            return torch.cholesky_solve(v[:, None], self.L).squeeze(1)
        B = self.B
        return (v - B.T @ torch.cholesky_solve((B @ v)[:, None], self.L).squeeze(1)) / self.mu

    def solve_range(self, c: torch.Tensor) -> torch.Tensor:
        """H⁻¹ Bᵀ c = Bᵀ K⁻¹ c (low-rank form; exact at any μ > 0, no 1/μ)."""
        return self.B.T @ torch.cholesky_solve(c[:, None], self.L).squeeze(1)

    def inv_diag(self) -> torch.Tensor:
        """diag(H⁻¹)."""
        if self.H is not None:
            return torch.cholesky_inverse(self.L).diagonal()
        lev = (self.B * torch.cholesky_solve(self.B, self.L)).sum(0)
        return (1.0 - lev).clamp_min(torch.finfo(self.B.dtype).eps) / self.mu

    def inverse(self) -> torch.Tensor:
        """H⁻¹ explicitly (symmetrised)."""
        if self.H is not None:
            inv = torch.cholesky_inverse(self.L)
        else:
            eye = torch.eye(self.d, dtype=self.B.dtype, device=self.B.device)
            inv = (eye - self.B.T @ torch.cholesky_solve(self.B, self.L)) / self.mu
        return 0.5 * (inv + inv.T)

    def to_dense(self) -> torch.Tensor:
        """H as an explicit matrix."""
        if self.H is not None:
            return self.H
        return self.B.T @ self.B + self.mu * torch.eye(self.d, dtype=self.B.dtype, device=self.B.device)

    def column(self, j: int) -> torch.Tensor:
        """H e_j (a new tensor)."""
        if self.H is not None:
            return self.H[:, j].clone()
        col = self.B.T @ self.B[:, j]
        col[j] += self.mu
        return col
