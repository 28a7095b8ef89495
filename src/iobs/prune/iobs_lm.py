"""I-OBS for causal language models: :func:`iobs.prune.outer_loop.run_iobs` wired to the decoder walk.

Iteration t draws ``nsamples`` fresh windows of the calibration split (seed + t − 1, so iteration 1 uses
exactly the one-shot run's windows), takes the dense step with next-token cross-entropy on them, re-prunes
every decoder block with the layer solver and scores perplexity on the validation corpora. The best
iteration by ``select`` (default: perplexity on the first validation corpus) is restored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from iobs.prune.dense_step import DENSE_STEPS, lm_loss
from iobs.prune.dense_step import dense_step as take_dense_step
from iobs.prune.outer_loop import LoopResult, run_iobs
from iobs.prune.sequential import prune_decoder
from iobs.utils import resolve_device


def calibration_stream(tokenizer, calib: str, vocab_size: int) -> Callable[[int, int, int], torch.Tensor]:
    """``draw(nsamples, seqlen, seed)`` of windows from ``calib`` (tokenized once); "random" = uniform ids."""
    if calib == "random":
        from iobs.models.tiny import random_ids

        return lambda n, L, seed: random_ids(n, L, vocab=vocab_size, seed=seed)
    from iobs.data.calibration import CALIB_SOURCES, encode, sample_windows
    from iobs.data.text import load_text

    name = CALIB_SOURCES.get(calib, calib)
    ids = encode(tokenizer, load_text(name))
    return lambda n, L, seed: sample_windows(ids, n, L, seed, what=f"calibration text {name!r}")


def check_disjoint(calib: str, validation: Sequence[str]) -> None:
    """Validation must not be drawn from the calibration text (the loop selects on it)."""
    from iobs.data.calibration import CALIB_SOURCES

    name = CALIB_SOURCES.get(calib, calib)
    for v in validation:
        if v in (calib, name):
            raise ValueError(
                f"validation corpus {v!r} is the calibration source {calib!r}: choose a held-out split "
                "(e.g. calib='wiki' with validation 'wiki-val')"
            )


def iobs_prune_lm(
    model: nn.Module,
    tokenizer,
    *,
    method: str = "sparsegpt",
    sparsity: float | None = 0.5,
    pattern: str | None = None,
    iterations: int = 3,
    dense_step: str = "finetune",
    lr: float = 1e-5,
    damping: float = 0.01,
    epochs: int = 1,
    calib: str = "wiki",
    nsamples: int = 32,
    seqlen: int = 512,
    seed: int = 0,
    validation: Sequence[str] = ("wiki-val",),
    val_seqlen: int | None = None,
    val_max_windows: int | None = None,
    select: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    device=None,
    progress: bool = True,
    state_dir=None,
    state_key: str = "",
    on_iteration: Callable[[dict], None] | None = None,
    evaluate_dense: bool = True,
    on_records: Callable[[int, list[dict]], None] | None = None,
    **layer_kwargs,
) -> LoopResult:
    """Prune ``model`` in place with I-OBS (T iterations of dense step + layer-wise projection).

    Metrics are named ``ppl:<corpus>``; ``select`` defaults to the first validation corpus.
    """
    from iobs.eval.perplexity import perplexity

    if dense_step not in DENSE_STEPS:
        raise ValueError(f"dense_step must be one of {', '.join(DENSE_STEPS)}, got {dense_step!r}")
    if not validation:
        raise ValueError("validation must name at least one corpus to select the best iteration on")
    check_disjoint(calib, validation)
    draw = calibration_stream(tokenizer, calib, model.get_input_embeddings().num_embeddings)
    val_ids = {}
    for v in validation:
        if v == "random":
            val_ids[v] = draw(8, val_seqlen or seqlen, 10**9 + 7)
        else:
            val_ids[v] = v

    iteration = [0]

    def calibration(t: int) -> torch.Tensor:
        iteration[0] = t
        return draw(nsamples, seqlen, seed + t - 1)

    def project(m: nn.Module, ids: torch.Tensor) -> list[dict]:
        records = prune_decoder(
            m,
            ids,
            method,
            sparsity,
            pattern,
            include=include,
            exclude=exclude,
            progress=progress,
            device=device,
            **layer_kwargs,
        )
        if on_records is not None:
            on_records(iteration[0], records)
        return records

    def step(m: nn.Module, ids: torch.Tensor, t: int) -> dict:
        home = next(m.parameters()).device
        dev = resolve_device(device) if device is not None else home
        m.to(dev)
        batches = list(ids.split(1))
        if dense_step == "newton":
            kw = {"lr": lr, "damping": damping, "include": include, "exclude": exclude}
        elif dense_step == "finetune":
            kw = {"lr": lr, "epochs": epochs, "seed": seed + t}
        else:
            kw = {}
        try:
            return take_dense_step(dense_step, m, batches, lm_loss, **kw)
        finally:
            m.to(home)

    def evaluate(m: nn.Module) -> dict:
        return {
            f"ppl:{v}": perplexity(
                m,
                tokenizer,
                data=ids,
                seqlen=val_seqlen or seqlen,
                max_windows=val_max_windows,
                device=device,
                progress=progress,
            )["ppl"]
            for v, ids in val_ids.items()
        }

    return run_iobs(
        model,
        iterations=iterations,
        calibration=calibration,
        project=project,
        dense_step=None if dense_step == "none" else step,
        evaluate=evaluate,
        select=select or f"ppl:{validation[0]}",
        state_dir=state_dir,
        state_key=state_key,
        on_iteration=on_iteration,
        evaluate_dense=evaluate_dense,
    )
