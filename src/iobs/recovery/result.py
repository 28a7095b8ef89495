"""What every recovery solver returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RecoveryResult:
    """θ, its support, the iteration count and a per-iteration history.

    ``history[t]`` (t = 0 is the start point) is a dict with ``iteration``, ``objective`` f(θ_t),
    ``distance`` ‖θ_t − θ*‖ (None without θ*), ``rel_distance`` ‖θ_t − θ*‖/‖θ*‖ (None without θ* or
    when θ* = 0), ``support_changes`` |supp θ_t Δ supp θ_{t−1}| and ``time`` (seconds since the start).
    ``damping`` is the λ actually added to the Hessian (0.0 when none was needed or used).
    ``solver="auto"`` fills ``chosen`` (the schedule whose θ is returned, e.g.
    ``"restricted-iobs(select=gradient, expand=20)"``) and ``runs`` (one dict per schedule it ran:
    ``label``, ``objective``, ``n_iter``, ``converged``, ``time``); its ``n_iter`` is their total and
    ``history`` that of the chosen run. Other solvers leave ``chosen`` = ``solver`` and ``runs`` empty.
    """

    theta: torch.Tensor
    mask: torch.Tensor
    n_iter: int
    converged: bool
    history: list[dict] = field(default_factory=list)
    damping: float = 0.0
    solver: str = ""
    options: dict = field(default_factory=dict)
    chosen: str = ""
    runs: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.chosen = self.chosen or self.solver

    @property
    def objective(self) -> float:
        return self.history[-1]["objective"] if self.history else float("nan")

    def iterations_to(self, rel_tol: float) -> int | None:
        """First iteration whose relative distance to θ* is below ``rel_tol`` (None if never / no θ*)."""
        for h in self.history:
            if h["rel_distance"] is not None and h["rel_distance"] < rel_tol:
                return h["iteration"]
        return None
