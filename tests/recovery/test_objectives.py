"""Objectives: gradients and Hessians against autograd and finite differences; input validation."""

import pytest
import torch

from iobs.recovery.objectives import LeastSquares, Logistic, TorchObjective

F64 = torch.float64


def data(n=7, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64), torch.randn(n, generator=g, dtype=F64), g


def autograd_derivatives(obj, theta):
    f = lambda t: obj.value(t)
    return torch.autograd.functional.jacobian(f, theta), torch.autograd.functional.hessian(f, theta)


def finite_difference_grad(obj, theta, h=1e-6):
    e = torch.eye(len(theta), dtype=F64)
    return torch.stack(
        [(obj.value(theta + h * e[i]) - obj.value(theta - h * e[i])) / (2 * h) for i in range(len(theta))]
    )


def test_least_squares_derivatives_consistent():
    A, y, g = data()
    obj = LeastSquares(A, y)
    theta = torch.randn(5, generator=g, dtype=F64)
    assert float(obj.value(theta)) == pytest.approx(0.5 * float(((A @ theta - y) ** 2).sum()))
    grad, hess = autograd_derivatives(obj, theta)
    torch.testing.assert_close(obj.grad(theta), grad)
    torch.testing.assert_close(obj.hessian(theta), hess)
    torch.testing.assert_close(obj.grad(theta), finite_difference_grad(obj, theta), rtol=1e-6, atol=1e-6)
    B, c = obj.hessian_factor(theta)
    torch.testing.assert_close(B.T @ B + c * torch.eye(5, dtype=F64), hess)
    assert obj.lipschitz() == pytest.approx(float(torch.linalg.eigvalsh(hess)[-1]), rel=1e-10)
    # the gradient is not an MSE gradient: a Newton step with this Hessian lands on the LS solution
    newton = theta - torch.linalg.solve(obj.hessian(theta), obj.grad(theta))
    torch.testing.assert_close(newton, torch.linalg.lstsq(A, y[:, None]).solution.squeeze(1))


@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_logistic_derivatives_consistent(l2):
    A, _, g = data(n=20, d=4, seed=1)
    y = (torch.rand(20, generator=g) < 0.5).to(F64)
    obj = Logistic(A, y, l2=l2)
    theta = torch.randn(4, generator=g, dtype=F64)
    grad, hess = autograd_derivatives(obj, theta)
    torch.testing.assert_close(obj.grad(theta), grad)
    torch.testing.assert_close(obj.hessian(theta), hess)
    torch.testing.assert_close(obj.grad(theta), finite_difference_grad(obj, theta), rtol=1e-6, atol=1e-7)
    # mean loss: log 2 at θ = 0
    assert float(obj.value(torch.zeros(4, dtype=F64))) == pytest.approx(float(torch.log(torch.tensor(2.0))))
    assert obj.lipschitz() >= float(torch.linalg.eigvalsh(hess)[-1]) - 1e-12
    rows = torch.arange(20)
    torch.testing.assert_close(obj.batch_grad(theta, rows), obj.grad(theta))


def test_least_squares_batch_grad_is_unbiased_scaling():
    A, y, g = data(n=6, d=3)
    obj = LeastSquares(A, y)
    theta = torch.randn(3, generator=g, dtype=F64)
    torch.testing.assert_close(obj.batch_grad(theta, torch.arange(6)), obj.grad(theta))
    halves = [obj.batch_grad(theta, torch.arange(3)), obj.batch_grad(theta, torch.arange(3, 6))]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, obj.grad(theta))


def test_torch_objective_matches_closed_form():
    A, y, g = data()
    obj = TorchObjective(lambda t: 0.5 * ((A @ t - y) ** 2).sum(), d=5)
    ref = LeastSquares(A, y)
    theta = torch.randn(5, generator=g, dtype=F64)
    torch.testing.assert_close(obj.value(theta), ref.value(theta))
    torch.testing.assert_close(obj.grad(theta), ref.grad(theta))
    torch.testing.assert_close(obj.hessian(theta), ref.hessian(theta))
    assert not obj.has_lowrank_hessian and ref.has_lowrank_hessian and ref.least_squares


def test_objective_validation():
    A, y, _ = data()
    with pytest.raises(ValueError, match="y must have shape \\(7,\\)"):
        LeastSquares(A, y[:5])
    with pytest.raises(ValueError, match="A must be a 2-D"):
        LeastSquares(y, y)
    bad = A.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="A contains 1 NaN/Inf"):
        LeastSquares(bad, y)
    bad_y = y.clone()
    bad_y[2] = float("inf")
    with pytest.raises(ValueError, match="y contains 1 NaN/Inf"):
        LeastSquares(A, bad_y)
    with pytest.raises(ValueError, match="binary labels"):
        Logistic(A, y)
    with pytest.raises(ValueError, match="l2 must be"):
        Logistic(A, (y > 0).to(F64), l2=-1.0)
    with pytest.raises(TypeError, match="fn must be callable"):
        TorchObjective(3, d=2)
    with pytest.raises(ValueError, match="d must be"):
        TorchObjective(lambda t: t.sum(), d=0)
    with pytest.raises(ValueError, match="theta must have shape \\(5,\\)"):
        LeastSquares(A, y).value(torch.zeros(4, dtype=F64))


def test_to_changes_dtype():
    A, y, _ = data()
    obj = LeastSquares(A, y).to(dtype=torch.float32)
    assert obj.A.dtype == torch.float32 and obj.y.dtype == torch.float32


def test_least_squares_residual_memo_sees_in_place_changes():
    A, y, g = data()
    obj = LeastSquares(A, y)
    theta = torch.randn(5, generator=g, dtype=F64)
    f0 = float(obj.value(theta))
    theta.add_(1.0)
    assert float(obj.value(theta)) == pytest.approx(0.5 * float(((A @ theta - y) ** 2).sum()))
    assert float(obj.value(theta)) != pytest.approx(f0)
    with torch.inference_mode():
        t = theta.clone()
        torch.testing.assert_close(obj.grad(t), A.T @ (A @ t - y))


def test_least_squares_sparse_product_path():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(30, 100, generator=g, dtype=F64)
    y = torch.randn(30, generator=g, dtype=F64)
    obj = LeastSquares(A, y)
    At, col2 = obj.columns()
    torch.testing.assert_close(At, A.T)
    torch.testing.assert_close(col2, (A * A).sum(0))
    theta = torch.zeros(100, dtype=F64)
    theta[[3, 50, 97]] = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    torch.testing.assert_close(obj.residual(theta), A @ theta - y)
    dense = torch.randn(100, generator=g, dtype=F64)
    torch.testing.assert_close(obj.residual(dense), A @ dense - y)
