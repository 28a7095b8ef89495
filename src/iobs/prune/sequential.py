"""Compatibility for iobs.reproduce.table1 until the merge: the walks live in iobs.prune.decoder (decoder
capture and walk), iobs.prune.walk (any nn.Module) and iobs.prune.solve (the layer solve)."""

from __future__ import annotations

from iobs.prune import walk
from iobs.prune.solve import LayerSolver


def prune_module(model, calib_batches, method="sparsegpt", sparsity=0.5, pattern=None, **kwargs):
    """:func:`iobs.prune.walk.prune_module` with ``LayerSolver(method, sparsity, pattern)``."""
    return walk.prune_module(model, calib_batches, LayerSolver(method, sparsity, pattern), **kwargs)
