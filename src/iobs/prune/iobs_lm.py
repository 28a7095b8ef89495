"""I-OBS for causal language models: :func:`iobs.loop.run_iobs` wired to the decoder walk.

Iteration t takes the calibration stream's batch t (iteration 1 = exactly the one-shot run's windows,
later iterations the next windows of the same source), takes the dense step with next-token
cross-entropy on them, re-prunes every decoder block with the layer solver and scores perplexity on the
validation corpora. The best iteration by ``select`` (default: perplexity on the first validation
corpus) is restored.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from iobs.data.calibration import CalibrationStream, random_ids
from iobs.loop import LoopResult, run_iobs
from iobs.prune.config import PruneConfig
from iobs.prune.decoder import prune_decoder
from iobs.prune.dense_step import dense_step, lm_loss
from iobs.utils import resolve_device

RANDOM_VALIDATION = (8, 10**9 + 7)  # validation corpus "random": 8 windows of uniform ids, this seed


class _LMSteps:
    """The loop's callbacks for a causal LM and ``config`` (method="iobs")."""

    def __init__(self, tokenizer, config: PruneConfig, vocab: int, progress: bool, on_records, solver=None):
        self.tokenizer, self.config = tokenizer, config
        self.progress, self.on_records = progress, on_records
        self.solver = config.solver() if solver is None else solver
        n, seed = RANDOM_VALIDATION
        self.validation = {
            v: random_ids(n, config.seqlen, vocab, seed) if v == "random" else v for v in config.validation
        }

    def project(self, m: nn.Module, ids: torch.Tensor, t: int) -> list[dict]:
        c = self.config
        records = prune_decoder(
            m,
            ids,
            self.solver,
            include=c.include,
            exclude=c.exclude,
            sequential=c.sequential,
            progress=self.progress,
            device=c.device,
        )
        if self.on_records is not None:
            self.on_records(t, records)
        return records

    def dense_step(self, m: nn.Module, ids: torch.Tensor, t: int) -> dict:
        c = self.config
        home = next(m.parameters()).device
        m.to(resolve_device(c.device))
        if c.dense_step == "newton":
            kw = {"lr": c.lr, "damping": c.damping, "include": c.include, "exclude": c.exclude}
        elif c.dense_step == "finetune":
            kw = {"lr": c.lr, "epochs": c.epochs, "seed": c.seed + t}
        else:
            kw = {}
        try:
            return dense_step(c.dense_step, m, list(ids.split(1)), lm_loss, **kw)
        finally:
            m.to(home)

    def evaluate(self, m: nn.Module) -> dict:
        from iobs.eval.perplexity import perplexity

        c = self.config
        return {
            f"ppl:{v}": perplexity(
                m, self.tokenizer, data, c.seqlen, c.val_max_windows, device=c.device, progress=self.progress
            )["ppl"]
            for v, data in self.validation.items()
        }


def iobs_prune_lm(
    model: nn.Module,
    tokenizer,
    config: PruneConfig,
    *,
    stream: CalibrationStream | None = None,
    select: str | None = None,
    progress: bool = True,
    state_dir=None,
    state_key: str = "",
    on_iteration: Callable[[dict], None] | None = None,
    evaluate_dense: bool = True,
    on_records: Callable[[int, list[dict]], None] | None = None,
    solver=None,
) -> LoopResult:
    """Prune ``model`` in place with I-OBS as ``config`` (method="iobs") says: ``config.iterations`` of
    dense step + layer-wise projection with ``config.layer_solver``.

    ``stream``: the calibration windows (default: built from ``config``; pass the one-shot run's stream to
    share it). Metrics are named ``ppl:<corpus>``; ``select`` defaults to the first validation corpus.
    ``on_records(t, records)`` sees iteration t's per-layer records. ``solver``: the layer solver of every
    projection (default ``config.solver()``; the API passes one with a non-uniform allocation's map).
    """
    if config.method != "iobs":
        raise ValueError(f"iobs_prune_lm needs a config with method='iobs', got method={config.method!r}")
    config.validate()
    vocab = model.get_input_embeddings().num_embeddings
    if stream is None:
        stream = CalibrationStream(
            tokenizer, config.calib, config.nsamples, config.seqlen, config.seed, vocab
        )
    steps = _LMSteps(tokenizer, config, vocab, progress, on_records, solver)
    return run_iobs(
        model,
        iterations=config.iterations,
        calibration=stream.batch,
        project=steps.project,
        dense_step=None if config.dense_step == "none" else steps.dense_step,
        evaluate=steps.evaluate,
        select=select or f"ppl:{config.validation[0]}",
        state_dir=state_dir,
        state_key=state_key,
        on_iteration=on_iteration,
        evaluate_dense=evaluate_dense,
    )
