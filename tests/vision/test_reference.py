"""Reference networks: layouts, labels, deterministic training and the weight cache."""

from __future__ import annotations

import pytest
import torch

from iobs.vision.data import check_labels, load_split
from iobs.vision.fisher import prunable_weights
from iobs.vision.models import VIT_PRUNABLE, build_model
from iobs.vision.train import Recipe, reference_model


def test_layouts_and_prunable_layers():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    mlp = build_model("mlpnet")
    assert mlp(x).shape == (2, 10)
    assert [p.numel() for p in prunable_weights(mlp).values()] == [784 * 40, 40 * 20, 20 * 10]
    cnn = build_model("mobilenet").eval()
    assert cnn(x).shape == (2, 10)
    names = list(prunable_weights(cnn))
    convs = [m for m in cnn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(names) == 1 + 4 + 1  # stem, 4 pointwise, fc: the 4 depthwise convolutions are skipped
    assert sum(m.groups > 1 for m in convs) == 4
    vit = build_model("vit").eval()
    assert vit(x).logits.shape == (2, 10)
    vit_names = list(prunable_weights(vit, include=list(VIT_PRUNABLE)))
    assert len(vit_names) == 6 * vit.config.num_hidden_layers
    assert not any("classifier" in n or "patch" in n for n in vit_names)


def test_check_labels():
    assert check_labels(torch.tensor([0, 9]), 10).tolist() == [0, 9]
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\).*\[0, 10\]"):
        check_labels(torch.tensor([0, 10]), 10)
    with pytest.raises(ValueError, match="integer"):
        check_labels(torch.tensor([0.0, 1.0]), 10)
    with pytest.raises(ValueError, match="split"):
        load_split("mnist", "dev")
    with pytest.raises(ValueError, match="dataset"):
        load_split("cifar", "train")


def test_training_is_deterministic_and_cached(tmp_path):
    recipe = Recipe("mlpnet", "mnist", epochs=1, lr=1e-3, train_limit=256, val_size=1000)
    a, info_a = reference_model("mlpnet", recipe, cache_dir=tmp_path)
    assert not info_a["cached"] and 0.0 <= info_a["test_accuracy"] <= 1.0
    assert len(list(tmp_path.glob("*.safetensors"))) == 1 and not list(tmp_path.glob(".*tmp*"))
    b, info_b = reference_model("mlpnet", recipe, cache_dir=tmp_path)
    assert info_b["cached"] and info_b["test_accuracy"] == info_a["test_accuracy"]
    c, _ = reference_model("mlpnet", recipe, cache_dir=tmp_path / "fresh", use_cache=False)
    for (n, p), q, r in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(p, q) and torch.equal(p, r), n
    with pytest.raises(ValueError, match="model"):
        reference_model("resnet")
