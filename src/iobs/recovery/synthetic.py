"""Problem classes of the recovery suite: y = Aθ* + noise with a chosen amplitude law, design and SNR.

- amplitudes of the k non-zeros (random support, random signs): ``gaussian`` N(0, 1), ``rademacher``
  ±1, ``uniform`` |θ*_j| ~ U[1, 2], ``powerlaw`` |θ*_(j)| = j^(−1) (j = 1..k, the j-th largest);
- designs (columns of unit expected norm): ``gaussian`` A_ij ~ N(0, 1/n); ``ar0.5``/``ar0.8``/``ar0.9``
  rows ~ N(0, Σ/n) with Σ_ij = ρ^|i−j| (AR(1)-correlated columns); ``dct`` n random rows of the
  orthonormal d×d DCT-II scaled by √(d/n);
- noise: ``snr_db=None`` noiseless, else σ = RMS(Aθ*)·10^(−snr/20).

:func:`logistic_problem`: labels y_i ~ Bernoulli(σ(a_iᵀθ* + b)) with a Gaussian or AR(1) design.
Every draw comes from one ``torch.Generator`` seeded by ``seed`` (float64, CPU).
"""

from __future__ import annotations

import math

import torch

from iobs._validate import check_int_range, check_k
from iobs.recovery.problems import RecoveryProblem

__all__ = ["AMPLITUDES", "DESIGNS", "make_problem", "logistic_problem", "design_matrix"]

AMPLITUDES = ("gaussian", "rademacher", "uniform", "powerlaw")
DESIGNS = ("gaussian", "ar0.5", "ar0.8", "ar0.9", "dct")


def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def _amplitudes(kind: str, k: int, gen) -> torch.Tensor:
    sign = torch.where(torch.rand(k, generator=gen) < 0.5, -1.0, 1.0).double()
    if kind == "gaussian":
        return torch.randn(k, generator=gen, dtype=torch.float64)
    if kind == "rademacher":
        return sign
    if kind == "uniform":
        return sign * (1.0 + torch.rand(k, generator=gen, dtype=torch.float64))
    return sign / torch.arange(1, k + 1, dtype=torch.float64)


def _ar1(n: int, d: int, rho: float, gen) -> torch.Tensor:
    """Rows with Σ_ij = ρ^|i−j|: x_1 = z_1, x_j = ρ x_{j−1} + √(1−ρ²) z_j."""
    Z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    X = torch.empty_like(Z)
    X[:, 0] = Z[:, 0]
    c = math.sqrt(1.0 - rho * rho)
    for j in range(1, d):
        X[:, j] = rho * X[:, j - 1] + c * Z[:, j]
    return X


def _partial_dct(n: int, d: int, gen) -> torch.Tensor:
    """n random rows of the orthonormal DCT-II matrix C_ij = s_i cos(π(2j+1)i/(2d)), times √(d/n)."""
    rows = torch.randperm(d, generator=gen)[:n].double()
    j = torch.arange(d, dtype=torch.float64)
    C = torch.cos(math.pi * (2 * j[None, :] + 1) * rows[:, None] / (2 * d))
    scale = torch.where(rows == 0, math.sqrt(1.0 / d), math.sqrt(2.0 / d))
    return C * scale[:, None] * math.sqrt(d / n)


def design_matrix(design: str, n: int, d: int, gen) -> torch.Tensor:
    """The n×d design of the named class (columns of unit expected norm)."""
    _choice("design", design, DESIGNS)
    if design == "dct":
        if n > d:
            raise ValueError(f"design='dct' takes n <= d rows of the d×d DCT, got n={n} > d={d}")
        return _partial_dct(n, d, gen)
    if design == "gaussian":
        return torch.randn(n, d, generator=gen, dtype=torch.float64) / math.sqrt(n)
    return _ar1(n, d, float(design[2:]), gen) / math.sqrt(n)


def _sparse(d, k, amplitude, gen):
    theta = torch.zeros(d, dtype=torch.float64)
    theta[torch.randperm(d, generator=gen)[:k]] = _amplitudes(amplitude, k, gen)
    return theta


def make_problem(n, d, k, amplitude="gaussian", design="gaussian", snr_db=None, seed=0) -> RecoveryProblem:
    """One instance of the class (amplitude, design, snr_db) with n rows, d unknowns, k non-zeros."""
    n, d = check_int_range("n", n, 1, 10**7), check_int_range("d", d, 1, 10**7)
    k = check_k(k, d)
    _choice("amplitude", amplitude, AMPLITUDES)
    seed = check_int_range("seed", seed, 0, 2**63 - 1)
    gen = torch.Generator().manual_seed(seed)
    A = design_matrix(design, n, d, gen)
    theta = _sparse(d, k, amplitude, gen)
    y = A @ theta
    sigma = 0.0
    if snr_db is not None:
        sigma = float(y.norm()) / math.sqrt(n) * 10 ** (-float(snr_db) / 20)
        y = y + sigma * torch.randn(n, generator=gen, dtype=torch.float64)
    meta = {"amplitude": amplitude, "design": design, "snr_db": snr_db}
    return RecoveryProblem(A, y, theta, k, f"{amplitude}/{design}", seed, sigma, meta)


def logistic_problem(n, d, k, rho=0.0, scale=2.0, intercept=0.0, seed=0):
    """(X, labels in {0, 1}, w*): X rows ~ N(0, Σ), Σ_ij = ρ^|i−j| (ρ = 0: i.i.d.), w* with k entries
    of magnitude ``scale``·U[1, 2] and random signs; y_i ~ Bernoulli(σ(x_iᵀw* + b))."""
    n, d = check_int_range("n", n, 1, 10**7), check_int_range("d", d, 1, 10**7)
    k = check_k(k, d)
    gen = torch.Generator().manual_seed(check_int_range("seed", seed, 0, 2**63 - 1))
    X = _ar1(n, d, rho, gen) if rho > 0 else torch.randn(n, d, generator=gen, dtype=torch.float64)
    w = scale * _sparse(d, k, "uniform", gen)
    p = torch.sigmoid(X @ w + intercept)
    y = (torch.rand(n, generator=gen, dtype=torch.float64) < p).double()
    return X, y, w
