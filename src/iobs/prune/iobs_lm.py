"""I-OBS for causal language models: :func:`iobs.loop.run_iobs` wired to the decoder walk, and its control.

Iteration t takes the calibration stream's batch t (iteration 1 = exactly the one-shot run's windows,
later iterations the next windows of the same source), takes the dense step with next-token
cross-entropy on them, re-prunes every decoder block with the layer solver (at the schedule's target
of iteration t when one is given) and scores perplexity on the validation corpora. The best iteration
by ``select`` (default: perplexity on the first validation corpus) is restored.

The fine-tuning control (:func:`finetune_prune_lm`, ``finetune_after`` = N) is the same loop with
T = N + 1: iteration 1 prunes one-shot with ``method``; round r = iteration r + 1 takes I-OBS's dense
step of iteration r + 1 (same windows batch(r+1), seed, optimiser, lr, clipping, epochs, number of
steps) with the one-shot mask held fixed (``pruned_scale`` 0: no pruned weight becomes non-zero) and no
re-projection. Same tokens and dense steps as I-OBS(N+1); I-OBS additionally re-projects N times.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from iobs.data.calibration import CalibrationStream, random_ids
from iobs.loop import LoopResult, run_iobs
from iobs.prune.config import PruneConfig
from iobs.prune.decoder import find_blocks, prune_decoder
from iobs.prune.dense_step import dense_step, lm_loss
from iobs.prune.layers import find_layers
from iobs.utils import resolve_device

RANDOM_VALIDATION = (8, 10**9 + 7)  # validation corpus "random": 8 windows of uniform ids, this seed


def decoder_layers(model: nn.Module, include=None, exclude=None) -> dict[str, nn.Module]:
    """The prunable layers inside the decoder blocks (those the walk prunes), by full dotted name."""
    path, _ = find_blocks(model)
    return {n: m for n, m in find_layers(model, include, exclude).items() if n.startswith(path + ".")}


class _LMSteps:
    """The loop's callbacks for a causal LM and ``config`` (I-OBS, or the control when ``control``)."""

    def __init__(self, tokenizer, config: PruneConfig, vocab, progress: bool, on_records, control, solver):
        self.tokenizer, self.config = tokenizer, config
        self.progress, self.on_records, self.control = progress, on_records, control
        self.solver = solver  # None: config.solver(t) (the schedule's target at t)
        self.mask: dict[str, torch.Tensor] | None = None  # the control's fixed mask
        n, seed = RANDOM_VALIDATION
        self.validation = {
            v: random_ids(n, config.seqlen, vocab, seed) if v == "random" else v for v in config.validation
        }

    def project(self, m: nn.Module, ids: torch.Tensor, t: int) -> list[dict]:
        c = self.config
        if self.control and t > 1:
            records = _held_records(self.weights(m))
        else:
            records = prune_decoder(
                m,
                ids,
                c.solver(t) if self.solver is None else self.solver,
                include=c.include,
                exclude=c.exclude,
                sequential=c.sequential,
                progress=self.progress,
                device=c.device,
            )
        if self.on_records is not None:
            self.on_records(t, records)
        return records

    def weights(self, m: nn.Module) -> dict[str, torch.Tensor]:
        return {
            n: layer.weight
            for n, layer in decoder_layers(m, self.config.include, self.config.exclude).items()
        }

    def dense_step(self, m: nn.Module, ids: torch.Tensor, t: int) -> dict:
        c = self.config
        kw = {}
        if self.control:
            if self.mask is None:  # iteration 1's mask (after a resume: the saved weights' non-zeros)
                self.mask = {n: W.detach() != 0 for n, W in self.weights(m).items()}
            kw = {"masks": self.mask, "pruned_scale": 0.0}
        elif c.pruned_scale != 1:
            kw = {
                "masks": {n: W.detach() != 0 for n, W in self.weights(m).items()},
                "pruned_scale": c.pruned_scale,
            }
        if c.dense_step == "newton":
            kw |= {"lr": c.lr, "damping": c.damping, "include": c.include, "exclude": c.exclude}
        elif c.dense_step == "finetune":
            kw |= {"lr": c.lr, "epochs": c.epochs, "seed": c.seed + t}
        else:
            kw = {}
        home = next(m.parameters()).device
        m.to(resolve_device(c.device))
        try:
            return dense_step(c.dense_step, m, list(ids.split(1)), lm_loss, **kw)
        finally:
            m.to(home)

    @torch.no_grad()
    def loss(self, m: nn.Module, ids: torch.Tensor) -> float:
        """Mean next-token loss on the first ``diag_windows`` windows of the batch (diagnostics)."""
        dev, home = resolve_device(self.config.device), next(m.parameters()).device
        m.to(dev)
        try:
            rows = ids[: self.config.diag_windows]
            return sum(float(lm_loss(m, r.to(dev))) for r in rows) / len(rows)
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


def _held_records(weights: dict[str, torch.Tensor]) -> list[dict]:
    """The control's records after a masked round: the mask is held, nothing is re-projected (error 0)."""
    out = []
    for name, W in weights.items():
        kept = int((W != 0).sum())
        out.append(
            {"name": name, "numel": W.numel(), "kept": kept, "sparsity": 1 - kept / W.numel(), "error": 0.0}
        )
    return out


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
    projection (default ``config.solver(t)``; the API passes one with a non-uniform allocation's map).
    """
    if config.method != "iobs":
        raise ValueError(f"iobs_prune_lm needs a config with method='iobs', got method={config.method!r}")
    kw = dict(stream=stream, select=select, progress=progress, state_dir=state_dir, state_key=state_key)
    kw |= dict(on_iteration=on_iteration, evaluate_dense=evaluate_dense, on_records=on_records, solver=solver)
    return _run(model, tokenizer, config, False, **kw)


def finetune_prune_lm(model: nn.Module, tokenizer, config: PruneConfig, **kw) -> LoopResult:
    """The fine-tuning control (module docstring): one-shot ``config.method``, then
    ``config.finetune_after`` rounds of the masked dense step; the best round by ``select`` is restored.
    Keywords as :func:`iobs_prune_lm`; history entries are labelled ``<method>+FT(r)``."""
    if config.method == "iobs" or not config.finetune_after:
        raise ValueError(
            "finetune_prune_lm needs a one-shot method with finetune_after >= 1, got "
            f"method={config.method!r}, finetune_after={config.finetune_after!r}"
        )
    return _run(model, tokenizer, config, True, **kw)


def _run(
    model,
    tokenizer,
    config,
    control: bool,
    *,
    stream=None,
    select=None,
    progress=True,
    state_dir=None,
    state_key="",
    on_iteration=None,
    evaluate_dense=True,
    on_records=None,
    solver=None,
) -> LoopResult:
    config.validate()
    vocab = model.get_input_embeddings().num_embeddings
    if stream is None:
        stream = CalibrationStream(
            tokenizer, config.calib, config.nsamples, config.seqlen, config.seed, vocab
        )
    steps = _LMSteps(tokenizer, config, vocab, progress, on_records, control, solver)
    if control:
        iterations, select_from = config.finetune_after + 1, 1
        label = lambda t: config.method if t == 1 else f"{config.method}+FT({t - 1})"
    else:
        iterations, select_from, label = config.iterations, config.select_from(), (lambda t: f"I-OBS({t})")
    return run_iobs(
        model,
        iterations=iterations,
        calibration=stream.batch,
        project=steps.project,
        dense_step=None if config.dense_step == "none" else steps.dense_step,
        evaluate=steps.evaluate,
        select=select or f"ppl:{config.validation[0]}",
        state_dir=state_dir,
        state_key=state_key,
        on_iteration=on_iteration,
        evaluate_dense=evaluate_dense,
        weights=steps.weights,
        loss=steps.loss if config.diag_windows else None,
        select_from=select_from,
        label=label,
    )
