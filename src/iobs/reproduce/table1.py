"""Table 1 analog: a ViT at uniform sparsity, top-1 per I-OBS iteration (1 = SparseGPT).

The paper prunes DeiT-Tiny/Small/Base on ImageNet (q, k, v, proj, fc1, fc2 at 50 %, 1000 calibration images).
By default the project's own ViT (transformers ``ViTForImageClassification``, 28×28 Fashion-MNIST, cached) is
pruned; with ``--model`` (a ``save_pretrained`` folder or a hub id) and ``--images`` (root/<class>/<image>)
any ViT / DeiT-style Hugging Face classifier is pruned on its own images (:mod:`iobs.vision.hf`). Layers are
pruned one by one with SparseGPT (:func:`iobs.prune.walk.prune_module`) inside the I-OBS outer loop
(:func:`iobs.loop.run_iobs`): every iteration draws fresh calibration images, takes a dense step
(default: the layer-wise preconditioned Newton step) and re-projects. The dense model is row 0; the iteration
with the best validation accuracy is starred (selection never looks at the test images). Target: the
selected iteration beats iteration 1 on test top-1. Beside it (``--control``, on by default) the
fine-tuning control: SparseGPT, then the same T − 1 dense steps on the same images with the SparseGPT
mask held and no re-projection (masked Newton = the restricted Newton step on the kept weights), best
round by validation; the table gives its top-1 at every iteration and the difference I-OBS − control.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from iobs.config import add_arguments as add_config_arguments
from iobs.config import csv_list, from_args, option, to_dict
from iobs.prune.dense_step import DENSE_STEPS
from iobs.reproduce.output import history_plot, run_target
from iobs.utils import markdown_table


@dataclass
class Table1Config:
    """One Table 1 run (recorded in report.json); ``--quick`` caps the iterations at 5."""

    sparsity: float = option(0.5, "uniform sparsity of every pruned layer")
    iterations: int = option(10, "I-OBS iterations (1 = SparseGPT)")
    nsamples: int = option(1000, "calibration images per iteration")
    batch_size: int = option(128, "calibration batch size")
    dense_step: str = option("newton", choices=DENSE_STEPS)
    lr: float = option(0.03, "dense-step learning rate")
    damping: float = option(0.01, "Newton dense-step damping")
    ft_epochs: int = option(1, "fine-tuning dense step: passes over the batch")
    include: list[str] | None = option(None, "layers to prune: globs or re:REGEX", parse=csv_list)
    exclude: list[str] | None = option(None, "layers to keep dense: globs or re:REGEX", parse=csv_list)
    val_size: int = option(
        5000, "validation images used for selection (reference: the last N held out; --images: at most N)"
    )
    test_limit: int | None = option(
        None,
        "evaluate on N test images only (reference: the first N; --images: a seeded random N)",
        parse=int,
    )
    train_limit: int | None = option(None, "train the reference ViT on N images", parse=int)
    epochs: int | None = option(None, "override the reference training epochs", parse=int)
    dataset: str | None = option(None, "fashion-mnist (default) or mnist")
    cache_dir: str | None = option(None, "reference weights cache (default $IOBS_CACHE/vision)")
    model: str | None = option(None, "Hugging Face image classifier: save_pretrained folder or hub id")
    images: str | None = option(None, "image folder root/<class>/<image> (with --model)")
    val_fraction: float = option(0.2, "--images: share per class for validation")
    test_fraction: float = option(0.4, "--images: share per class for test")
    seed: int = option(0)
    device: str = option("auto")
    control: bool = option(True, "also the control: SparseGPT + the same dense steps with the mask held")
    quick: bool = option(False, "at most 5 iterations (about half the time)")
    out: str = option("runs/table1", "output folder")

    def __post_init__(self):
        from iobs._validate import check_sparsity

        self.sparsity = check_sparsity(self.sparsity, "--sparsity")
        if self.quick:
            # fewer iterations only: 2000-image val / test sets cannot resolve 0.1-0.4 point gains
            self.iterations = min(self.iterations, 5)
        for k in ("iterations", "nsamples", "batch_size", "val_size", "ft_epochs"):
            if getattr(self, k) < 1:
                raise ValueError(f"--{k.replace('_', '-')} must be >= 1, got {getattr(self, k)}")
        if self.images is not None and self.model is None:
            raise ValueError("--images needs --model (a Hugging Face image classifier folder or hub id)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, Table1Config)


def _reference_source(cfg: Table1Config, dev) -> dict:
    """The packaged ViT, its training images (calibration pool), held-out validation and test images."""
    from iobs.reproduce.reference import reference_splits
    from iobs.vision.models import VIT_PRUNABLE

    model, info, dataset, train, val, test = reference_splits("vit", cfg, dev, dataset=cfg.dataset)
    if cfg.nsamples > len(train):
        raise ValueError(f"--nsamples {cfg.nsamples} exceeds the {len(train)} training images")

    def images(idx):
        return train.X[idx], train.y[idx]

    return {
        "name": "vit",
        "title": f"ViT ({dataset})",
        "model": model,
        "pool": len(train),
        "images": images,
        "val": (val.X, val.y),
        "test": (test.X, test.y),
        "include": list(VIT_PRUNABLE),
        "info": {k: v for k, v in info.items() if k != "train_loss"},
        "dense_note": f"{'cached' if info.get('cached') else 'trained'} reference",
    }


def _sample(part, n: int, seed: int):
    """At most ``n`` items of ``part``: a seeded random choice, kept in the original order."""
    if n >= len(part):
        return part
    idx = torch.randperm(len(part), generator=torch.Generator().manual_seed(seed))[:n]
    return part.subset(sorted(idx.tolist()))


def _hf_source(cfg: Table1Config, dev) -> dict:
    """A Hugging Face classifier (``--model``) and an image folder (``--images``) split per class."""
    from iobs.vision.data import check_labels
    from iobs.vision.hf import PRUNABLE, load_classifier, pixel_values, read_image_folder, split_image_folder

    if cfg.images is None:
        raise ValueError("--model needs --images: a folder root/<class>/<image> to calibrate and evaluate on")
    model, processor = load_classifier(cfg.model, device=dev)
    mc = model.config
    folder = read_image_folder(cfg.images, getattr(mc, "label2id", None), mc.num_labels)
    calib, val, test = split_image_folder(folder, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    # the per-class split is ordered by class: caps take a seeded random subset, not the first classes
    val = _sample(val, cfg.val_size, cfg.seed)
    if cfg.test_limit:
        test = _sample(test, cfg.test_limit, cfg.seed + 1)
    if cfg.nsamples > len(calib):
        raise ValueError(
            f"--nsamples {cfg.nsamples} exceeds the {len(calib)} calibration images of --images "
            f"({len(folder)} images minus the validation and test shares)"
        )
    channels = getattr(mc, "num_channels", 3)

    def load(part):
        return pixel_values(processor, part.files, channels), check_labels(part.labels, mc.num_labels)

    def images(idx):
        part = calib.subset(idx.tolist())
        return load(part)

    return {
        "name": str(cfg.model),
        "title": f"{cfg.model} ({len(folder)} images, {len(folder.names)} classes)",
        "model": model,
        "pool": len(calib),
        "images": images,
        "val": load(val),
        "test": load(test),
        "include": list(PRUNABLE),
        "info": {
            "model": str(cfg.model),
            "images": str(cfg.images),
            "label_mapping": folder.mapping,
            "split": {"calibration": len(calib), "validation": len(val), "test": len(test)},
        },
        "dense_note": f"{cfg.model}",
    }


def _layers(model, include, exclude) -> dict:
    """The Linear / Conv2d layers to prune (at least one)."""
    from iobs.prune.layers import find_layers

    try:
        layers = find_layers(model, include, exclude)
    except ValueError as e:
        raise ValueError(f"--include/--exclude: {e}") from e
    if not layers:
        raise ValueError(
            f"no prunable layer left after --include {include} and --exclude {exclude}: at least one "
            "Linear / Conv2d layer must be selected"
        )
    return layers


def _layer_sparsity(model, include, exclude) -> dict[str, float]:
    from iobs.prune.layers import get_weight

    layers = _layers(model, include, exclude)
    return {n: float((get_weight(m) == 0).sum()) / get_weight(m).numel() for n, m in layers.items()}


def _iobs(model, cfg: Table1Config, src: dict, include, dev, control: bool = False):
    """I-OBS on ``model`` in place: iteration t draws ``nsamples`` fresh images (seed·1000 + t), takes the
    dense step and re-prunes every layer with SparseGPT; the best iteration by validation top-1 is kept.
    ``control``: iteration t > 1 takes the same dense step with iteration 1's mask held, no re-projection."""
    from iobs.loop import run_iobs
    from iobs.prune.dense_step import classification_loss, dense_step
    from iobs.prune.solve import LayerSolver
    from iobs.prune.walk import prune_module
    from iobs.vision.models import accuracy

    (vX, vy), (tX, ty) = src["val"], src["test"]
    step_kw = {"lr": cfg.lr}
    if cfg.dense_step == "newton":
        step_kw.update(damping=cfg.damping, include=include, exclude=cfg.exclude)
    elif cfg.dense_step == "finetune":
        step_kw["epochs"] = cfg.ft_epochs

    def calibration(t: int):
        idx = torch.randperm(src["pool"], generator=torch.Generator().manual_seed(cfg.seed * 1000 + t))
        X, y = src["images"](idx[: cfg.nsamples])
        b = cfg.batch_size
        return [(X[i : i + b].to(dev), y[i : i + b].to(dev)) for i in range(0, len(X), b)]

    def weights(m):
        return {n: layer.weight for n, layer in _layers(m, include, cfg.exclude).items()}

    held = {}  # the control's mask (iteration 1's)

    def project(m, batches, t):
        if control and t > 1:
            return [
                {"kept": int((W != 0).sum()), "numel": W.numel(), "error": 0.0} for W in weights(m).values()
            ]
        X, solver = [b[0] for b in batches], LayerSolver("sparsegpt", cfg.sparsity)
        return prune_module(m, X, solver, include=include, exclude=cfg.exclude, progress=False)

    def step(m, batches, t):
        extra = {"seed": t} if cfg.dense_step == "finetune" else {}
        if control and cfg.dense_step != "none":
            held.setdefault("masks", {n: W.detach() != 0 for n, W in weights(m).items()})
            extra |= {"masks": held["masks"], "pruned_scale": 0.0}
        return dense_step(cfg.dense_step, m, batches, classification_loss, **step_kw, **extra)

    def evaluate(m):
        return {"val_accuracy": accuracy(m, vX, vy), "accuracy": accuracy(m, tX, ty)}

    def show(entry):
        met, label = entry["metrics"], entry.get("label", entry["iteration"])
        top1 = f"test top-1 {100 * met['accuracy']:.2f}  val {100 * met['val_accuracy']:.2f}"
        print(f"[{src['name']}] {label}: {top1}", flush=True)

    kw = dict(calibration=calibration, project=project, dense_step=step, evaluate=evaluate, on_iteration=show)
    kw |= dict(weights=weights, label=_control_name) if control else dict(weights=weights)
    return run_iobs(model, iterations=cfg.iterations, select="val_accuracy", mode="max", **kw)


def _control_name(t: int) -> str:
    return "SparseGPT" if t == 1 else f"SparseGPT + masked step ({t - 1})"


def experiment(cfg: Table1Config) -> dict:
    """The dense row and one record per I-OBS iteration, the loop, the pruned layers' sparsities."""
    from iobs.utils import resolve_device

    dev = resolve_device(cfg.device)
    src = _hf_source(cfg, dev) if cfg.model is not None else _reference_source(cfg, dev)
    include = cfg.include or src["include"]
    _layers(src["model"], include, cfg.exclude)
    pruned = copy.deepcopy(src["model"])
    res = _iobs(pruned, cfg, src, include, dev)
    records = []
    for h in res.history:
        t, met = h["iteration"], h["metrics"]
        rec = {"model": src["name"], "method": "iobs", "sparsity": cfg.sparsity, "iteration": t}
        rec |= {"method": "dense", "sparsity": 0.0, "iteration": None} if t == 0 else {}
        rec |= {"accuracy": met["accuracy"], "val_accuracy": met["val_accuracy"], "selected": t == res.best}
        records.append(rec)
    out = {k: src[k] for k in ("name", "title", "info", "dense_note")} | {"records": records}
    out |= {"loop": res.to_dict(), "layer_sparsity": _layer_sparsity(pruned, include, cfg.exclude)}
    if cfg.control:
        out["control"] = _iobs(copy.deepcopy(src["model"]), cfg, src, include, dev, control=True).to_dict()
    return out | {"n_val": len(src["val"][1]), "n_test": len(src["test"][1])}


def _row_name(iteration: int | None) -> str:
    if iteration is None:
        return "dense"
    return "SparseGPT = I-OBS(1)" if iteration == 1 else f"I-OBS({iteration})"


def _step_text(cfg: Table1Config) -> str:
    text = f"dense step {cfg.dense_step}"
    if cfg.dense_step == "newton":
        return text + f" (lr {cfg.lr:g}, damping {cfg.damping:g})"
    if cfg.dense_step == "finetune":
        return text + f" (lr {cfg.lr:g}, {cfg.ft_epochs} epoch(s))"
    return text


def render(result: dict, cfg: Table1Config, seconds: float, env: dict) -> dict:
    """results.json (the records), table.md (with the target verdict), table1.png, report.json."""
    records, best = result["records"], result["loop"]["best_iteration"]
    acc = {r["iteration"]: 100 * r["accuracy"] for r in records}
    rows = [
        {
            "row": _row_name(r["iteration"]),
            "test top-1": 100 * r["accuracy"],
            "val top-1": 100 * r["val_accuracy"],
        }
        | {"best": "*" if r["selected"] else ""}
        for r in records
    ]
    control = _control_rows(result.get("control"), rows, best)
    s = f"{100 * cfg.sparsity:g}%"
    md = (
        f"# Table 1 analog: {result['title']}, {s} uniform sparsity on attention and MLP Linear layers\n\n"
        f"Dense test top-1 {acc[None]:.2f}% ({result['dense_note']}). {len(result['layer_sparsity'])} pruned "
        f"layers, {cfg.nsamples} calibration images per iteration, {_step_text(cfg)}; best iteration (*) "
        f"chosen on validation ({result['n_val']} images), test on {result['n_test']} images.\n\n"
        + markdown_table(rows, floatfmt=".2f")
        + f"\nTarget (best iteration {best} beats iteration 1 on test top-1: {acc[best]:.2f} vs "
        f"{acc[1]:.2f}): {'PASS' if acc[best] > acc[1] else 'MISS'}\n" + control
    )
    title = f"{result['name']}: top-1 per I-OBS iteration ({s} sparsity)"
    report = {"config": to_dict(cfg), "reference": result["info"], "loop": result["loop"]}
    if "control" in result:
        report["control"] = result["control"]
    report |= {"layer_sparsity": result["layer_sparsity"], "seconds": seconds, "environment": env}
    loop = result["loop"] | ({"control": result["control"]} if "control" in result else {})
    plot = history_plot(loop, ["accuracy", "val_accuracy"], title)
    return {"results.json": records, "table.md": md, "table1.png": plot, "report.json": report}


def _control_rows(control: dict | None, rows: list[dict], best: int) -> str:
    """Adds the control's top-1 at each iteration to ``rows``; the verdict line I-OBS − control."""
    if control is None:
        return ""
    hist = {h["iteration"]: h for h in control["history"] if h["iteration"] >= 1}
    for row, t in zip(rows[1:], sorted(hist)):
        row["control test top-1"] = 100 * hist[t]["metrics"]["accuracy"]
        row["control best"] = "*" if t == control["best_iteration"] else ""
    c = 100 * hist[control["best_iteration"]]["metrics"]["accuracy"]
    i = rows[best]["test top-1"]
    return (
        f"\nControl (SparseGPT, then the same dense steps on the same images with the mask held; best round "
        f"{control['best_iteration'] - 1} by validation): test top-1 {c:.2f}; I-OBS − control = {i - c:+.2f} "
        "points.\n"
    )


def run(args) -> int:
    cfg = from_args(Table1Config, args)
    files = run_target(cfg, experiment, render)
    print(files["table.md"])
    print(f"wrote {', '.join(str(Path(cfg.out) / name) for name in list(files)[:3])}")
    return 0
