"""Everything that knows about torch.nn.Module: layer discovery, Hessians, model walks, I-OBS for LMs.

One-shot pruning::

    from iobs.prune import PruneConfig, prune
    report = prune(PruneConfig(model="smollm2-135m", method="sparsegpt", sparsity=0.5, out="pruned"))

or the walks themselves on a model already in memory, with a :class:`LayerSolver`:
``prune_decoder(model, calib_ids, LayerSolver("sparsegpt", 0.5))`` for Hugging Face causal LMs,
``prune_module(model, calib_batches, solver)`` for any module.
"""

from iobs.prune.api import prune, prune_model
from iobs.prune.checkpoint import save_checkpoint
from iobs.prune.config import PruneConfig
from iobs.prune.decoder import prune_decoder
from iobs.prune.layers import find_layers, get_weight, set_weight
from iobs.prune.solve import LayerSolver
from iobs.prune.walk import prune_module

__all__ = [
    "LayerSolver",
    "PruneConfig",
    "find_layers",
    "get_weight",
    "prune",
    "prune_decoder",
    "prune_model",
    "prune_module",
    "save_checkpoint",
    "set_weight",
]
