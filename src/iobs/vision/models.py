"""The reference networks: MLPNet (784-40-20-10, CBS's MNIST setting), a small ViT (transformers'
``ViTForImageClassification`` built from a config, 28×28 inputs) and a MobileNetV1-style CNN of
depthwise-separable blocks. ``build_model(name)`` returns an untrained network in a fixed layout;
``logits(model, x)`` unwraps Hugging Face outputs.
"""

from __future__ import annotations

import torch
from torch import nn

MODELS = ("mlpnet", "vit", "mobilenet")


class MLPNet(nn.Module):
    """784-40-20-10 with ReLU (CBS / WoodFisher's MNIST MLP); accepts (N, 1, 28, 28) or (N, 784)."""

    def __init__(self, sizes=(784, 40, 20, 10)):
        super().__init__()
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.fc2 = nn.Linear(sizes[1], sizes[2])
        self.fc3 = nn.Linear(sizes[2], sizes[3])

    def forward(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _dw_separable(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """MobileNetV1 block: 3×3 depthwise conv (groups = c_in) + BN + ReLU, 1×1 pointwise conv + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU(),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class MobileNetSmall(nn.Module):
    """MobileNetV1 layout scaled to 28×28 grey images: a 3×3 stem, depthwise-separable blocks, pool, fc."""

    def __init__(self, widths=(16, 32, 64, 128, 128), strides=(1, 2, 2, 1), num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        self.blocks = nn.Sequential(
            *[_dw_separable(widths[i], widths[i + 1], s) for i, s in enumerate(strides)]
        )
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))


def vit_config(**overrides):
    """A small ViT for 28×28 grey images: patch 7 (16 patches + CLS), hidden 64, 3 layers, 4 heads."""
    from transformers import ViTConfig

    cfg = dict(
        image_size=28,
        patch_size=7,
        num_channels=1,
        hidden_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=10,
    )
    cfg.update(overrides)
    return ViTConfig(**cfg)


def build_model(name: str, **kwargs) -> nn.Module:
    """An untrained reference network (initialised from the current torch seed)."""
    if name == "mlpnet":
        return MLPNet(**kwargs)
    if name == "mobilenet":
        return MobileNetSmall(**kwargs)
    if name == "vit":
        from transformers import ViTForImageClassification

        return ViTForImageClassification(vit_config(**kwargs))
    raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")


# Every Linear inside the ViT's transformer blocks = attention q, k, v, output projection and the MLP's
# fc1, fc2 (Table 1's layers); the patch stem and the head stay dense. Matches transformers 4.x
# (vit.encoder.layer.N.attention.attention.query, ...) and 5.x (vit.layers.N.attention.q_proj, ...) names.
VIT_PRUNABLE = (r"re:(encoder\.layer|layers)\.\d+\.",)


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return getattr(out, "logits", out)


@torch.no_grad()
def correct(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Boolean vector (CPU): argmax of ``model`` (eval mode) equals ``y``, per sample."""
    from iobs.vision.data import check_labels

    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    hits = []
    for i in range(0, X.shape[0], batch_size):
        out = logits(model, X[i : i + batch_size].to(dev))
        if i == 0:
            check_labels(y, out.shape[-1], "y")
        hits.append(out.argmax(-1).cpu() == y[i : i + batch_size].cpu())
    model.train(was)
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy (fraction) of ``model`` in eval mode."""
    return int(correct(model, X, y, batch_size).sum()) / max(1, X.shape[0])


@torch.no_grad()
def mean_ce(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Mean cross-entropy of ``model`` in eval mode."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    total = 0.0
    for i in range(0, X.shape[0], batch_size):
        out = logits(model, X[i : i + batch_size].to(dev))
        total += float(nn.functional.cross_entropy(out, y[i : i + batch_size].to(dev), reduction="sum"))
    model.train(was)
    return total / max(1, X.shape[0])
