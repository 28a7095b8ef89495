"""The generic walk (any nn.Module: MLPs, CNNs, ViTs) and the hooks the walks share.

Layers are grouped by shared input in execution order; for each group the model is re-run on all
calibration batches up to that group (stopping the forward there), so each group's H comes from inputs
through all previously pruned layers. Cost: about G/2 full forward passes per batch for G groups
(quadratic in depth; fine for small models). The walk modifies the model in place and returns one record
per layer; the I-OBS outer loop calls it again after its dense step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from iobs.prune.hessian import accumulate_hessians
from iobs.prune.layers import find_layers
from iobs.prune.solve import DEFAULT_SOLVER, LayerSolver, solve_group
from iobs.utils import resolve_device


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the needed inputs are captured."""


def execution_groups(run: Callable[[], object], layers: dict[str, nn.Module]) -> tuple[list[list[str]], bool]:
    """Run once and group ``layers`` by the input tensor they receive, in order of first call.

    Returns (groups, single_call); ``single_call`` is False when some layer runs more than once per
    forward (weight sharing), in which case a forward must not be stopped early. Layers that never run
    are an error (they would get no Hessian).
    """
    seen: list[tuple[str, torch.Tensor]] = []  # holds the inputs alive, so identity is meaningful
    calls: dict[str, int] = dict.fromkeys(layers, 0)

    def make(name):
        def hook(module, args):
            calls[name] += 1
            if calls[name] == 1:
                seen.append((name, args[0]))

        return hook

    handles = [m.register_forward_pre_hook(make(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    missing = [n for n, c in calls.items() if c == 0]
    if missing:
        raise ValueError(f"layers {missing} are not called in the forward pass; exclude them")
    groups: list[list[str]] = []
    group_inputs: list[torch.Tensor] = []
    for name, x in seen:
        for g, gx in zip(groups, group_inputs):
            if x is gx:
                g.append(name)
                break
        else:
            groups.append([name])
            group_inputs.append(x)
    return groups, all(c == 1 for c in calls.values())


class StopAfter:
    """Context: a forward hook on ``module`` that ends the forward pass after it ran (if enabled)."""

    def __init__(self, module: nn.Module | None):
        self.module = module
        self.handle = None

    def __enter__(self):
        if self.module is not None:

            def hook(module, args, output):
                raise StopForward

            self.handle = self.module.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()
        return False


def call_until_stopped(fn: Callable[[], object]):
    try:
        return fn()
    except StopForward:
        return None


def forward(model: nn.Module, batch):
    """``model(batch)`` for a tensor, ``model(*batch)`` for a tuple/list, ``model(**batch)`` for a dict."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def to_device(batch, device):
    """``batch`` (a tensor, or a dict / tuple / list of them) on ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def prune_module(
    model: nn.Module,
    calib_batches: Sequence,
    solver: LayerSolver = DEFAULT_SOLVER,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    skip_grouped: bool = True,
    progress: bool = True,
    device=None,
    callback: Callable[[int, list[dict]], None] | None = None,
) -> list[dict]:
    """Prune the Linear / Conv1D / Conv2d layers of any module in forward order, in place.

    ``calib_batches``: a non-empty sequence of model inputs (a tensor, a tuple of positional inputs or a
    dict of keyword inputs). Layers that receive the same input tensor form a group and share one pass;
    each group's H comes from re-running the model (stopped after the group) with every earlier group
    already pruned. ``callback(g, records)`` runs after group g. Returns one record per layer.
    """
    batches = list(calib_batches) if calib_batches is not None else []
    if not batches:
        raise ValueError("calib_batches is empty: pass at least one calibration batch")
    dev = resolve_device(device)
    layers = find_layers(model, include, exclude, skip_grouped=skip_grouped)
    if not layers:
        raise ValueError(f"no prunable layer matches include={include} exclude={exclude}")
    was_training = model.training
    model.eval()
    home = next(model.parameters()).device
    model.to(dev)
    try:
        batches = [to_device(b, dev) for b in batches]
        return _walk_groups(model, batches, layers, solver, progress, callback)
    finally:
        model.to(home)
        model.train(was_training)


@torch.no_grad()
def _walk_groups(model, batches, layers, solver, progress, callback) -> list[dict]:
    """Group by group: H from a forward pass stopped after the group, then solve the group."""
    from tqdm.auto import tqdm

    groups, single = execution_groups(lambda: forward(model, batches[0]), layers)
    records: list[dict] = []
    for gi, group in enumerate(tqdm(groups, desc="pruning layers", disable=not progress, leave=False)):
        sub = {n: layers[n] for n in group}
        t0 = time.perf_counter()
        with accumulate_hessians(sub) as acc:
            for b in batches:  # group[-1] is the group's last layer to run
                with StopAfter(sub[group[-1]] if single else None):
                    call_until_stopped(lambda b=b: forward(model, b))
        extra = {"block": gi, "group": gi, "hessian_seconds": (time.perf_counter() - t0) / len(group)}
        recs = solve_group(sub, acc, solver, extra)
        records += recs
        if callback is not None:
            callback(gi, recs)
    return records
