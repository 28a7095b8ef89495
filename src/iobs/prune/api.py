"""``prune(config)``: load a causal LM, draw calibration ids, walk it, evaluate, save; return the report."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from iobs.prune.checkpoint import check_output_dir, peak_memory, save_checkpoint, state_dir_for
from iobs.prune.config import PruneConfig
from iobs.prune.report import summarize
from iobs.prune.sequential import prune_decoder
from iobs.utils import atomic_write_json, environment, resolve_device

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def load(name: str, dtype: torch.dtype):
    """(model, tokenizer) for a tiny test model (``tiny-llama`` ...) or anything that
    :func:`iobs.models.load_model` knows (named offline assets, local folders, Hugging Face ids)."""
    if name.startswith("tiny-"):
        from iobs.models.tiny import load_tiny

        return load_tiny(name, dtype=dtype)
    from iobs.models import load_model

    return load_model(name, device="cpu", dtype=dtype)


def calibration_ids(config: PruneConfig, tokenizer, vocab_size: int) -> torch.Tensor:
    """(nsamples, seqlen) ids: ``calib="random"`` draws uniform ids (tokenizer-free), anything else goes to
    :func:`iobs.data.calibration.calibration_batch`."""
    if config.calib == "random":
        from iobs.models.tiny import random_ids

        return random_ids(config.nsamples, config.seqlen, vocab=vocab_size, seed=config.seed)
    from iobs.data.calibration import calibration_batch

    return calibration_batch(
        tokenizer, source=config.calib, nsamples=config.nsamples, seqlen=config.seqlen, seed=config.seed
    )


def evaluate(model, tokenizer, config: PruneConfig, device, progress: bool = False) -> dict:
    """Perplexity on each of ``config.eval`` (the same windows for the dense and the pruned model); the
    model visits ``device`` for the evaluation and returns to where it was."""
    from iobs.eval.perplexity import perplexity

    home = next(model.parameters()).device
    model.to(device)
    out = {}
    try:
        for data in config.eval:
            out[data] = perplexity(
                model,
                tokenizer,
                data=data,
                seqlen=config.eval_seqlen or config.seqlen,
                max_windows=config.eval_max_windows,
                device=device,
                progress=progress,
            )
    finally:
        model.to(home)
    return out


def _iobs(model, tokenizer, config: PruneConfig, device, progress: bool, state_dir):
    """method="iobs": the loop over ``config.layer_solver``; returns (best iteration records, loop)."""
    from iobs.prune.iobs_lm import iobs_prune_lm

    records: dict[int, list[dict]] = {}
    res = iobs_prune_lm(
        model,
        tokenizer,
        method=config.layer_solver,
        sparsity=config.sparsity,
        pattern=config.pattern,
        iterations=config.iterations,
        dense_step=config.dense_step,
        lr=config.lr,
        damping=config.damping,
        epochs=config.epochs,
        calib=config.calib,
        nsamples=config.nsamples,
        seqlen=config.seqlen,
        seed=config.seed,
        validation=config.validation,
        val_max_windows=config.val_max_windows,
        include=config.include,
        exclude=config.exclude,
        device=device,
        progress=progress,
        state_dir=state_dir,
        state_key=f"{config.key()}:{config.model}",
        on_records=records.__setitem__,
        **config.layer_kwargs(),
    )
    return records.get(res.best) or records[max(records)], res


def prune(config: PruneConfig, progress: bool = True, callback=None) -> dict:
    """Run the whole pipeline for ``config``; returns the report (also written to ``out/report.json``)."""
    return prune_model(config, progress, callback)[2]


def prune_model(config: PruneConfig, progress: bool = True, callback=None):
    """:func:`prune`, returning (pruned model, tokenizer, report).

    With ``config.out`` set, finished blocks are persisted in ``OUT.state-<key>`` and a rerun of the
    same configuration resumes after the last finished block; the state folder is removed once the
    checkpoint is saved. ``callback(i, records)`` is passed to the walk (runs after each block).
    """
    config.validate()
    t_start = time.perf_counter()
    out = check_output_dir(config.out, config.overwrite) if config.out else None
    dev = resolve_device(config.device)
    timings = {}

    t0 = time.perf_counter()
    model, tokenizer = load(config.model, DTYPES[config.dtype])
    timings["load_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    vocab = model.get_input_embeddings().num_embeddings
    ids = calibration_ids(config, tokenizer, vocab)
    if ids.dim() != 2 or ids.shape[0] < 1 or ids.shape[1] < config.seqlen:
        raise ValueError(
            f"calibration source {config.calib!r} gave ids of shape {tuple(ids.shape)}; need "
            f"nsamples={config.nsamples} sequences of seqlen={config.seqlen} tokens"
        )
    timings["calibration_s"] = time.perf_counter() - t0

    dense_evals = {}
    if config.eval and config.eval_dense:
        t0 = time.perf_counter()
        dense_evals = evaluate(model, tokenizer, config, dev, progress)
        timings["eval_dense_s"] = time.perf_counter() - t0

    state_dir, resumed = None, 0
    if out is not None:
        state_dir = state_dir_for(out, config.key())
        manifest = state_dir / "state.json"
        if not config.resume and state_dir.exists():
            import shutil

            shutil.rmtree(state_dir)
        elif manifest.exists():
            resumed = int(json.loads(manifest.read_text()).get("blocks_done", 0))

    t0 = time.perf_counter()
    loop = None
    if config.method == "iobs":
        records, loop = _iobs(model, tokenizer, config, dev, progress, state_dir)
    else:
        records = prune_decoder(
            model,
            ids,
            config.method,
            config.sparsity,
            config.pattern,
            include=config.include,
            exclude=config.exclude,
            sequential=config.sequential,
            progress=progress,
            device=dev,
            state_dir=state_dir,
            state_key=f"{config.key()}:{config.model}",
            callback=callback,
            **config.layer_kwargs(),
        )
    timings["prune_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    evals = evaluate(model, tokenizer, config, dev, progress) if config.eval else {}
    timings["eval_s"] = time.perf_counter() - t0

    report = {
        "config": config.to_dict(),
        "key": config.key(),
        "seed": config.seed,
        "environment": environment(),
        "model": {
            "name": config.model,
            "class": type(model).__name__,
            "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": config.dtype,
        },
        "calibration": {
            "source": config.calib,
            "nsamples": int(ids.shape[0]),
            "seqlen": int(ids.shape[1]),
            "tokens": int(ids.numel()),
        },
        "device": str(dev),
        "resumed_blocks": resumed,
        "summary": summarize(records),
        "eval": evals,
        "eval_dense": dense_evals,
        "layers": records,
        "timings": timings,
    }
    if loop is not None:
        report["iobs"] = loop.to_dict()
    if out is not None:
        t0 = time.perf_counter()
        report["timings"]["total_s"] = time.perf_counter() - t_start  # before saving; save_s added below
        report["memory"] = peak_memory()
        save_checkpoint(model, tokenizer, out, report, overwrite=config.overwrite)
        if loop is not None:
            from iobs.prune.outer_loop import plot_history

            atomic_write_json(Path(out) / "history.json", loop.to_dict())
            plot_history(loop, Path(out) / "history.png", title=f"I-OBS on {config.model} ({config.target})")
        timings["save_s"] = time.perf_counter() - t0
        if state_dir is not None:
            import shutil

            shutil.rmtree(state_dir, ignore_errors=True)
        report["out"] = str(Path(out).absolute())
    timings["total_s"] = time.perf_counter() - t_start
    report["memory"] = peak_memory()
    return model, tokenizer, report
