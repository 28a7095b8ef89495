"""The curvature operator in both forms against the dense formula."""

import logging

import pytest
import torch

from iobs.obs.curvature import Curvature
from iobs.obs.projection import obs_project, project

F64 = torch.float64


def _factor(m, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)


@pytest.mark.parametrize("m, d", [(4, 9), (12, 9)])
@pytest.mark.parametrize("dense", [None, True, False])
def test_both_forms_equal_the_dense_formula(m, d, dense):
    B, v = _factor(m, d)
    lam = 0.3
    H = B.T @ B + lam * torch.eye(d, dtype=F64)
    op = Curvature.from_factor(B, lam, dense=dense)
    assert op.lowrank_form == ((m < d) if dense is None else not dense)
    assert op.d == d and op.lam == lam
    torch.testing.assert_close(op.to_dense(), H)
    torch.testing.assert_close(op.mv(v), H @ v)
    torch.testing.assert_close(op.solve(v), torch.linalg.solve(H, v))
    torch.testing.assert_close(op.inverse(), torch.linalg.inv(H))
    torch.testing.assert_close(op.inv_diag(), torch.linalg.inv(H).diagonal())
    torch.testing.assert_close(op.column(3), H[:, 3])
    mask = torch.arange(d) % 3 != 0
    torch.testing.assert_close(project(v, op, mask), obs_project(v, H, mask))


def test_solve_range_is_the_push_through_form_at_tiny_damping():
    B, _ = _factor(3, 8, seed=1)
    c = torch.randn(3, dtype=F64)
    op = Curvature.lowrank(B, 0.0, 1e-12)
    K = B @ B.T + 1e-12 * torch.eye(3, dtype=F64)
    torch.testing.assert_close(op.solve_range(c), B.T @ torch.linalg.solve(K, c))


def test_lowrank_without_damping_escalates_logged_or_fails_clearly(caplog):
    B, _ = _factor(3, 8, seed=2)
    with caplog.at_level(logging.INFO, logger="iobs.obs.damping"):
        op = Curvature.lowrank(B, 0.0, 0.0, name="H_test", level=logging.INFO)
    assert op.lam == pytest.approx(1e-6 * float((B * B).sum()) / 8) and op.mu == op.lam
    assert any("H_test" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="H_test: Cholesky failed, not positive definite with damping=0"):
        Curvature.lowrank(B, 0.0, 0.0, name="H_test", max_escalations=0)
    assert Curvature.lowrank(B, 0.5).mu == 0.5  # c > 0: no damping needed


def test_dense_keeps_the_given_damping():
    B, _ = _factor(10, 4, seed=3)
    op = Curvature.dense(B.T @ B, 0.25)
    torch.testing.assert_close(op.H, B.T @ B + 0.25 * torch.eye(4, dtype=F64))
    torch.testing.assert_close(op.L @ op.L.T, op.H)
