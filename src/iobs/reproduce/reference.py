"""The project's reference vision nets (trained once, cached) and their splits, as Tables 1 and 5 use them."""

from __future__ import annotations

from dataclasses import replace


def reference_splits(name: str, cfg, device, dataset: str | None = None):
    """(model, info, dataset, train, val, test) of the reference ``name`` under ``cfg.train_limit``,
    ``cfg.epochs`` (and ``dataset``): val = the last ``cfg.val_size`` held-out images, test = the first
    ``cfg.test_limit``. ``--val-size`` picks from the reference's held-out images (it never retrains), so it
    is checked before anything is trained or loaded."""
    from iobs.vision.data import load_split
    from iobs.vision.train import RECIPES, reference_model

    recipe = RECIPES[name]
    if cfg.val_size > recipe.val_size:
        raise ValueError(
            f"--val-size must be in [1, {recipe.val_size}] (the reference's held-out images), "
            f"got {cfg.val_size}"
        )
    for key, value in (("train_limit", cfg.train_limit), ("epochs", cfg.epochs), ("dataset", dataset)):
        if value:
            recipe = replace(recipe, **{key: value})
    model, info = reference_model(name, recipe, cache_dir=cfg.cache_dir, device=device)
    train = load_split(recipe.dataset, "train", val_size=recipe.val_size)
    val = load_split(recipe.dataset, "val", val_size=recipe.val_size)
    val = val.subset(slice(len(val) - cfg.val_size, None))
    test = load_split(recipe.dataset, "test", limit=cfg.test_limit)
    return model, info, recipe.dataset, train, val, test
