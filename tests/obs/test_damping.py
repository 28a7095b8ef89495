import logging

import pytest
import torch

from iobs.obs.damping import (
    cholesky_damped,
    damped_inverse,
    escalate,
    inverse_cholesky,
    upper_triangular_inverse,
)


def damped(H, percdamp):
    """Reference: H with dead diagonal entries set to 1, plus λI, λ = percdamp·mean(diag)."""
    Hd = H.clone()
    diag = torch.diagonal(Hd)
    diag[diag == 0] = 1
    lam = float(percdamp) * float(diag.mean())
    diag += lam
    return Hd, lam


def test_damping_adds_fraction_of_mean_diagonal_and_fixes_dead_inputs():
    H = torch.diag(torch.tensor([4.0, 0.0, 2.0], dtype=torch.float64))
    Hinv, lam = damped_inverse(H, 0.1)
    # dead entry set to 1 first, then λ = 0.1·mean(4, 1, 2)
    assert lam == pytest.approx(0.1 * 7 / 3)
    expected = 1 / (torch.tensor([4.0, 1.0, 2.0], dtype=torch.float64) + lam)
    torch.testing.assert_close(Hinv, torch.diag(expected))
    assert H[1, 1] == 0  # input untouched


def test_cholesky_damped_escalates_logged_and_names_the_matrix(caplog):
    H = torch.tensor([[1.0, 1.05], [1.05, 1.0]], dtype=torch.float64)  # eigenvalue -0.05
    with caplog.at_level(logging.WARNING, logger="iobs.obs.damping"):
        L, lam = cholesky_damped(H, 1e-3, name="F_b")
    assert lam == pytest.approx(0.1) and len(caplog.records) == 2
    assert all("F_b" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(L @ L.T, H + lam * torch.eye(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="F_b: Cholesky failed, not positive definite with damping=0.001"):
        cholesky_damped(H, 1e-3, name="F_b", max_escalations=0)


def test_cholesky_damped_from_zero_starts_at_a_fraction_of_the_scale_and_accept_rejects_at_zero():
    H = torch.ones(3, 3, dtype=torch.float64)  # rank 1
    L, lam = cholesky_damped(H, 0.0, name="H", scale=2.0)
    assert lam == pytest.approx(2e-6)
    L, lam = cholesky_damped(torch.eye(2, dtype=torch.float64), 0.0, name="I", accept=lambda L: False)
    assert lam == pytest.approx(1e-6)  # the λ = 0 factor was rejected, the damped one accepted


def test_escalate_raises_after_the_last_escalation():
    tried = []
    with pytest.raises(ValueError, match=r"M: Cholesky failed.*after 2 escalations"):
        escalate(lambda lam: tried.append(lam), 1.0, 1.0, name="M", max_escalations=2)
    assert tried == [1.0, 10.0, 100.0]


def test_inverse_cholesky_factors_the_damped_inverse():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(10, 5, generator=g, dtype=torch.float64)  # rank 5 < 10: singular H
    H = X @ X.T
    U, lam = inverse_cholesky(H, 0.01)
    Hd, lam2 = damped(H, 0.01)
    assert lam == pytest.approx(lam2)
    assert torch.equal(U, U.triu())
    torch.testing.assert_close(U.T @ U, torch.linalg.inv(Hd), rtol=1e-8, atol=1e-10)
    Hinv, _ = damped_inverse(H, 0.01)
    torch.testing.assert_close(Hinv, torch.linalg.inv(Hd), rtol=1e-8, atol=1e-10)


def test_escalates_damping_with_warnings(caplog):
    # an indefinite H: percdamp 1e-3 is not enough, 0.1 (two escalations x10) is
    H = torch.tensor([[1.0, 1.05], [1.05, 1.0]], dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="iobs.obs.damping"):
        U, lam = inverse_cholesky(H, 1e-3, name="layers.0.q_proj")
    assert lam == pytest.approx(0.1)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("layers.0.q_proj" in r.getMessage() for r in warnings)
    Hd = H + lam * torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(U.T @ U, torch.linalg.inv(Hd))


def test_zero_damping_escalates_from_a_small_fraction(caplog):
    H = torch.ones(3, 3, dtype=torch.float64)  # rank 1, exactly singular
    with caplog.at_level(logging.WARNING, logger="iobs.obs.damping"):
        U, lam = inverse_cholesky(H, 0.0)
    assert lam > 0 and len(caplog.records) >= 1
    assert torch.isfinite(U).all()


def test_fails_clearly_after_the_last_escalation():
    H = torch.tensor([[1.0, 100.0], [100.0, 1.0]], dtype=torch.float64)  # eigenvalue -99
    with pytest.raises(ValueError, match=r"blocks\.3\.fc1.*Cholesky.*escalations"):
        inverse_cholesky(H, 1e-3, name="blocks.3.fc1", max_escalations=2)


@pytest.mark.parametrize(
    "H, match",
    [
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "NaN/Inf"),
        (torch.tensor([[float("inf"), 0.0], [0.0, 1.0]]), "NaN/Inf"),
        (torch.ones(2, 3), "square"),
        (torch.diag(torch.tensor([1.0, -1.0])), "negative diagonal"),
    ],
)
def test_bad_hessians(H, match):
    with pytest.raises(ValueError, match=match):
        inverse_cholesky(H)


def test_bad_percdamp():
    with pytest.raises(ValueError, match="percdamp"):
        inverse_cholesky(torch.eye(2), -0.1)


@pytest.mark.parametrize("base", [1, 4, 256])
def test_upper_triangular_inverse(base):
    g = torch.Generator().manual_seed(1)
    R = torch.randn(37, 37, generator=g, dtype=torch.float64).triu() + 6 * torch.eye(37, dtype=torch.float64)
    Rinv = upper_triangular_inverse(R, base=base)
    assert torch.equal(Rinv, Rinv.triu())
    torch.testing.assert_close(R @ Rinv, torch.eye(37, dtype=torch.float64), rtol=0, atol=1e-12)


def test_inverse_cholesky_equals_the_cholesky_of_the_explicit_inverse_on_a_larger_matrix():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(300, 200, generator=g, dtype=torch.float64)
    H = X @ X.T
    U, lam = inverse_cholesky(H, 0.01)
    Hd, _ = damped(H, 0.01)
    expected = torch.linalg.cholesky(torch.linalg.inv(Hd), upper=True)
    torch.testing.assert_close(U, expected, rtol=1e-7, atol=1e-10)
