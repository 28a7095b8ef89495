"""Deterministic training of the reference networks, cached in the user cache dir.

``reference_model(name)`` trains (fixed seed, fixed data order, fixed recipe) or loads the cached weights
from ``$IOBS_CACHE/vision/<name>-<key>.safetensors`` (default ``~/.cache/iobs``; written atomically). The
key hashes the whole recipe, so changing any setting trains a new model instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from iobs.vision.data import Split, check_labels, load_split
from iobs.vision.models import MODELS, accuracy, build_model, logits

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    """Everything that determines the trained weights."""

    model: str
    dataset: str
    epochs: int
    lr: float
    batch_size: int = 128
    weight_decay: float = 0.0
    seed: int = 0
    train_limit: int | None = None
    val_size: int = 5000
    model_kwargs: dict = field(default_factory=dict)

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


RECIPES = {
    "mlpnet": Recipe("mlpnet", "mnist", epochs=12, lr=2e-3),
    "vit": Recipe("vit", "fashion-mnist", epochs=10, lr=2e-3, weight_decay=0.05),
    "mobilenet": Recipe("mobilenet", "fashion-mnist", epochs=3, lr=3e-3),
}


def train(model: nn.Module, data: Split, recipe: Recipe, device=None) -> list[float]:
    """AdamW with a cosine learning-rate schedule, shuffled by a generator seeded with ``recipe.seed``."""
    check_labels(data.y, data.num_classes, "training labels")
    dev = torch.device(device or "cpu")
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    n = len(data)
    steps = recipe.epochs * math.ceil(n / recipe.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    gen = torch.Generator().manual_seed(recipe.seed)
    losses = []
    for _ in range(recipe.epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, recipe.batch_size):
            idx = perm[i : i + recipe.batch_size]
            loss = nn.functional.cross_entropy(logits(model, data.X[idx].to(dev)), data.y[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / n)
    model.eval()
    return losses


def _paths(recipe: Recipe, cache_dir=None) -> tuple[Path, Path]:
    from iobs.models.cache import cache_dir as default_cache

    root = Path(cache_dir) if cache_dir is not None else default_cache("vision")
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{recipe.model}-{recipe.dataset}-{recipe.key()}"
    return root / f"{stem}.safetensors", root / f"{stem}.json"


def reference_model(
    name: str, recipe: Recipe | None = None, *, cache_dir=None, use_cache: bool = True, device=None
) -> tuple[nn.Module, dict]:
    """(trained model in eval mode, info with the recipe, test accuracy and training time).

    Loads the cached weights when present (``use_cache``), otherwise trains and caches them atomically.
    """
    from safetensors.torch import load_model, save_model

    from iobs.utils import atomic_write_json

    if name not in MODELS:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
    recipe = recipe or RECIPES[name]
    if recipe.model != name:
        raise ValueError(f"recipe is for model {recipe.model!r}, not {name!r}")
    weights, meta = _paths(recipe, cache_dir)
    torch.manual_seed(recipe.seed)
    model = build_model(name, **recipe.model_kwargs)
    if use_cache and weights.exists() and meta.exists():
        load_model(model, str(weights))
        model.eval()
        info = json.loads(meta.read_text())
        info["cached"] = True
        return model.to(device or "cpu"), info
    t0 = time.perf_counter()
    data = load_split(recipe.dataset, "train", val_size=recipe.val_size, limit=recipe.train_limit)
    losses = train(model, data, recipe, device)
    seconds = time.perf_counter() - t0
    test = load_split(recipe.dataset, "test")
    info = {
        "recipe": asdict(recipe),
        "key": recipe.key(),
        "train_loss": losses,
        "train_seconds": seconds,
        "test_accuracy": accuracy(model, test.X, test.y),
        "torch_threads": torch.get_num_threads(),
        "cached": False,
    }
    if use_cache:
        tmp = weights.with_name(f".{weights.name}.tmp{os.getpid()}")
        save_model(model.cpu(), str(tmp))
        os.replace(tmp, weights)
        atomic_write_json(meta, {k: v for k, v in info.items() if k != "cached"})
    log.info(
        "trained %s on %s in %.0f s: test accuracy %.4f", name, recipe.dataset, seconds, info["test_accuracy"]
    )
    return model.to(device or "cpu"), info
