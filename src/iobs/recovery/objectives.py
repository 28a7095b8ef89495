"""Objectives f(θ) with value, gradient and Hessian, all consistently scaled.

Common interface: ``.d``, ``.value(θ)``, ``.grad(θ)``, ``.hessian(θ)``, ``.to(device, dtype)``,
plus ``.is_quadratic`` (Hessian independent of θ). Optional capabilities are declared by class
attributes, never probed:

* ``has_lowrank_hessian``: ``.hessian_factor(θ)`` returns (B, c) with ∇²f(θ) = BᵀB + c·I (the solvers
  use it when B has fewer rows than columns);
* ``has_lipschitz``: ``.lipschitz()`` bounds λ_max(∇²f);
* ``has_batch_grad``: ``.n`` samples and ``.batch_grad(θ, rows)``, an unbiased mini-batch gradient;
* ``least_squares``: f = ½‖Aθ − y‖² with ``.A``, ``.y``, ``.residual(θ)`` and ``.columns()``.
"""

from __future__ import annotations

import torch

from iobs._validate import check_finite, check_int_range

__all__ = ["LeastSquares", "Logistic", "TorchObjective", "Objective", "DesignObjective"]


def _check_design(A, y, name_A="A", name_y="y"):
    if not torch.is_tensor(A):
        A = torch.as_tensor(A)
    if not torch.is_tensor(y):
        y = torch.as_tensor(y)
    if A.dim() != 2:
        raise ValueError(f"{name_A} must be a 2-D tensor (n, d), got shape {tuple(A.shape)}")
    if y.dim() != 1 or y.shape[0] != A.shape[0]:
        raise ValueError(
            f"{name_y} must have shape ({A.shape[0]},) to match {name_A} {tuple(A.shape)}, "
            f"got {tuple(y.shape)}"
        )
    if not A.is_floating_point():
        A = A.to(torch.float64)
    y = y.to(A.dtype)
    check_finite(name_A, A)
    check_finite(name_y, y)
    return A, y


class Objective:
    """Base class: subclasses define value/grad/hessian for θ of shape (d,)."""

    d: int
    is_quadratic = False
    has_lowrank_hessian = False
    has_lipschitz = False
    has_batch_grad = False
    least_squares = False

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def grad(self, theta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def hessian(self, theta: torch.Tensor) -> torch.Tensor:
        """BᵀB + cI from the low-rank factor (objectives without one define their own)."""
        B, c = self.hessian_factor(theta)
        return B.T @ B + c * torch.eye(self.d, dtype=B.dtype, device=B.device)

    def hessian_factor(self, theta: torch.Tensor):
        raise NotImplementedError(f"{type(self).__name__} declares no low-rank Hessian factor")

    def to(self, device=None, dtype=None) -> Objective:
        return self

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _check_theta(self, theta: torch.Tensor) -> torch.Tensor:
        if theta.shape != (self.d,):
            raise ValueError(f"theta must have shape ({self.d},), got {tuple(theta.shape)}")
        return theta


class DesignObjective(Objective):
    """An objective on a data matrix ``A`` (n, d): its dtype and device are A's, and ``to`` rebuilds it
    around the moved A (``_with(A)``)."""

    A: torch.Tensor

    @property
    def dtype(self):
        return self.A.dtype

    @property
    def device(self):
        return self.A.device

    def to(self, device=None, dtype=None) -> DesignObjective:
        A = self.A.to(device=device or self.A.device, dtype=dtype or self.A.dtype)
        return self if A is self.A else self._with(A)

    def _with(self, A: torch.Tensor) -> DesignObjective:
        raise NotImplementedError


class LeastSquares(DesignObjective):
    """f(θ) = ½‖Aθ − y‖²,  ∇f = Aᵀ(Aθ − y),  ∇²f = AᵀA  (no 1/n: gradient and Hessian agree)."""

    is_quadratic = True
    has_lowrank_hessian = has_lipschitz = has_batch_grad = least_squares = True

    def __init__(self, A, y):
        self.A, self.y = _check_design(A, y)
        self.n, self.d = self.A.shape
        self._columns = None

    def _with(self, A) -> LeastSquares:
        return LeastSquares(A, self.y.to(A))

    def residual(self, theta):
        """Aθ − y; the last one is remembered (value and grad at the same θ share it)."""
        if theta.is_inference():  # no version counter to tell an in-place change: no memo
            return self._product(self._check_theta(theta)) - self.y
        last = getattr(self, "_last", None)
        if last is not None and last[0] is theta and last[1] == theta._version:
            return last[2]
        r = self._product(self._check_theta(theta)) - self.y
        self._last = (theta, theta._version, r)
        return r

    def _product(self, theta):
        """Aθ, from the columns of the support only when θ is sparse (the solvers' iterates)."""
        if self.d >= 64 and self._columns is not None:
            nz = theta.nonzero().squeeze(1)
            if 4 * nz.numel() <= self.d:
                return self._columns[0][nz].T @ theta[nz]
        return self.A @ theta

    def value(self, theta):
        r = self.residual(theta)
        return 0.5 * (r @ r)

    def grad(self, theta):
        return self.A.T @ self.residual(theta)

    def hessian(self, theta=None):
        return self.A.T @ self.A

    def hessian_factor(self, theta=None):
        return self.A, 0.0

    def columns(self):
        """(Aᵀ contiguous, squared column norms = diag AᵀA), computed once and kept."""
        if self._columns is None:
            self._columns = (self.A.T.contiguous(), torch.linalg.vector_norm(self.A, dim=0).square_())
        return self._columns

    def batch_grad(self, theta, rows):
        """Unbiased mini-batch estimate of ∇f: (n/|B|) A_Bᵀ(A_B θ − y_B)."""
        AB = self.A[rows]
        return (self.n / len(rows)) * (AB.T @ (AB @ theta - self.y[rows]))

    def lipschitz(self) -> float:
        """λ_max(AᵀA) = σ_max(A)²."""
        return float(torch.linalg.matrix_norm(self.A, ord=2)) ** 2


class Logistic(DesignObjective):
    """Binary logistic regression, MEAN loss over the n samples, labels in {0, 1}:

    f(θ) = (1/n) Σ_i [log(1 + exp(a_iᵀθ)) − y_i a_iᵀθ] + (l2/2)‖θ‖²,
    ∇f = Aᵀ(σ(Aθ) − y)/n + l2 θ,   ∇²f = Aᵀ diag(σ(1 − σ)) A / n + l2 I.
    """

    has_lowrank_hessian = has_lipschitz = has_batch_grad = True

    def __init__(self, A, y, l2: float = 0.0):
        self.A, self.y = _check_design(A, y)
        if not bool(((self.y == 0) | (self.y == 1)).all()):
            raise ValueError("y must contain binary labels in {0, 1}")
        l2 = float(l2)
        if not l2 >= 0.0 or l2 == float("inf"):
            raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
        self.l2 = l2
        self.n, self.d = self.A.shape

    def _with(self, A) -> Logistic:
        return Logistic(A, self.y.to(A), self.l2)

    def value(self, theta):
        z = self.A @ self._check_theta(theta)
        return (torch.nn.functional.softplus(z) - self.y * z).mean() + 0.5 * self.l2 * (theta @ theta)

    def grad(self, theta):
        p = torch.sigmoid(self.A @ self._check_theta(theta))
        return self.A.T @ (p - self.y) / self.n + self.l2 * theta

    def hessian_factor(self, theta):
        p = torch.sigmoid(self.A @ self._check_theta(theta))
        return self.A * torch.sqrt(p * (1 - p) / self.n)[:, None], self.l2

    def batch_grad(self, theta, rows):
        AB = self.A[rows]
        p = torch.sigmoid(AB @ theta)
        return AB.T @ (p - self.y[rows]) / len(rows) + self.l2 * theta

    def lipschitz(self) -> float:
        """Upper bound σ_max(A)²/(4n) + l2 on λ_max(∇²f)."""
        return float(torch.linalg.matrix_norm(self.A, ord=2)) ** 2 / (4 * self.n) + self.l2


class TorchObjective(Objective):
    """A user objective ``fn(θ) -> scalar tensor``; gradient and Hessian by autograd."""

    def __init__(self, fn, d: int, dtype: torch.dtype = torch.float64, device=None, quadratic: bool = False):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.d = check_int_range("d", d, 1, 2**31)
        self._dtype = dtype
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self.is_quadratic = bool(quadratic)

    @property
    def dtype(self):
        return self._dtype

    @property
    def device(self):
        return self._device

    def to(self, device=None, dtype=None) -> TorchObjective:
        return TorchObjective(
            self.fn, self.d, dtype or self._dtype, device or self._device, self.is_quadratic
        )

    def value(self, theta):
        v = self.fn(self._check_theta(theta))
        if not torch.is_tensor(v) or v.numel() != 1:
            raise ValueError("fn must return a scalar tensor")
        return v.reshape(())

    def grad(self, theta):
        with torch.enable_grad():
            t = self._check_theta(theta).detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.value(t), t)
        return g

    def hessian(self, theta):
        """Exact Hessian by double backward (vectorised over rows when d > 64)."""
        H = torch.autograd.functional.hessian(
            lambda t: self.value(t), self._check_theta(theta).detach(), vectorize=self.d > 64
        )
        return 0.5 * (H + H.T)
