"""The generic walk (prune_module) on tiny MLPs and CNNs: exact sparsity, errors from actual inputs."""

import copy

import pytest
import torch
from torch import nn

from iobs.obs.layer import prune_layer
from iobs.prune.hessian import layer_inputs
from iobs.prune.layers import find_layers, get_weight
from iobs.prune.solve import LayerSolver
from iobs.prune.walk import prune_module

D = torch.float64


def actual_inputs(model, module, batches) -> torch.Tensor:
    xs = []
    h = module.register_forward_pre_hook(lambda m, a: xs.append(layer_inputs(m, a[0].detach())))
    with torch.no_grad():
        for b in batches:
            model(b)
    h.remove()
    return torch.cat(xs)


def check_errors_against_actual_inputs(dense, model, records, batches):
    """The generic walk is fully sequential: every layer's H comes from its inputs in the final model."""
    layers, dense_layers = find_layers(model), find_layers(dense)
    for r in records:
        X = actual_inputs(model, layers[r["name"]], batches)
        W, W_hat = get_weight(dense_layers[r["name"]]), get_weight(layers[r["name"]])
        assert r["error"] == pytest.approx(float(((X @ (W - W_hat).t()) ** 2).sum()), rel=1e-8), r["name"]
        res = prune_layer(W, X.t() @ X, "sparsegpt", 0.5)
        torch.testing.assert_close(W_hat, res.W, rtol=1e-9, atol=1e-12)


def test_mlp_walk():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)).to(D)
    batches = [torch.randn(6, 8, dtype=D) for _ in range(3)]
    model = copy.deepcopy(dense)
    records = prune_module(model, batches, LayerSolver("sparsegpt", 0.5), progress=False)
    assert [r["name"] for r in records] == ["0", "2", "4"]
    for name, m in find_layers(model).items():
        assert int((m.weight == 0).sum()) == m.weight.numel() // 2, name
    assert all(r["tokens"] == 18 for r in records)
    check_errors_against_actual_inputs(dense, model, records, batches)


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise: skipped
        self.pw = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.pw(self.dw(x)))
        return self.head(x.mean((2, 3)))


def test_cnn_walk_skips_depthwise_and_uses_unfolded_inputs():
    torch.manual_seed(1)
    dense = TinyCNN().to(D)
    batches = [torch.randn(2, 3, 6, 6, dtype=D) for _ in range(2)]
    model = copy.deepcopy(dense)
    records = prune_module(model, batches, LayerSolver("sparsegpt", 0.5), progress=False)
    assert [r["name"] for r in records] == ["stem", "pw", "head"]
    assert records[0]["shape"] == [8, 27] and records[0]["tokens"] == 2 * 2 * 36
    assert torch.equal(model.dw.weight, dense.dw.weight)
    for r in records:
        W = get_weight(find_layers(model)[r["name"]])
        assert int((W == 0).sum()) == W.numel() // 2
    check_errors_against_actual_inputs(dense, model, records, batches)


class Branchy(nn.Module):
    """fa and fb share one input (one group); shared is called twice per forward (weight sharing)."""

    def __init__(self):
        super().__init__()
        self.fc0, self.fa, self.fb, self.shared, self.unused = (nn.Linear(8, 8) for _ in range(5))

    def forward(self, x):
        h = torch.relu(self.fc0(x))
        h = self.fa(h) * torch.sigmoid(self.fb(h))
        return self.shared(torch.tanh(self.shared(h)))


def test_groups_weight_sharing_and_unused_layers():
    torch.manual_seed(2)
    batches = [torch.randn(5, 8, dtype=D) for _ in range(2)]
    with pytest.raises(ValueError, match="not called"):
        prune_module(Branchy().to(D), batches, LayerSolver("wanda", 0.5), progress=False)
    model = Branchy().to(D)
    records = prune_module(
        model, batches, LayerSolver("wanda", None, "2:4"), exclude=["unused"], progress=False
    )
    assert [(r["name"], r["group"]) for r in records] == [("fc0", 0), ("fa", 1), ("fb", 1), ("shared", 2)]
    shared = next(r for r in records if r["name"] == "shared")
    assert shared["tokens"] == 2 * 5 * 2  # both calls feed its Hessian


def test_generic_bad_input():
    net = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="empty"):
        prune_module(net, [], progress=False)
    with pytest.raises(ValueError, match="matches no prunable"):
        prune_module(net, [torch.randn(2, 4)], include=["*.fc"], progress=False)
    with pytest.raises(ValueError, match="divisible"):
        prune_module(
            nn.Sequential(nn.Linear(6, 4)),
            [torch.randn(2, 6)],
            LayerSolver(sparsity=None, pattern="2:4"),
            progress=False,
        )
