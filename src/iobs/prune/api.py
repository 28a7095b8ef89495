"""``prune(config)``: load a causal LM, draw calibration ids, walk it, evaluate, save; return the report."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from iobs.config import to_dict
from iobs.data.calibration import CalibrationStream
from iobs.prune.checkpoint import check_output_dir, peak_memory, save_checkpoint, state_dir_for
from iobs.prune.config import PruneConfig
from iobs.prune.decoder import prune_decoder
from iobs.prune.report import summarize
from iobs.utils import DTYPES, atomic_write_json, environment, resolve_device

log = logging.getLogger(__name__)


def calibration_stream(config: PruneConfig, tokenizer, model) -> CalibrationStream:
    """The run's calibration windows (one-shot = ``batch(1)``; I-OBS iteration t = ``batch(t)``)."""
    vocab = model.get_input_embeddings().num_embeddings
    return CalibrationStream(tokenizer, config.calib, config.nsamples, config.seqlen, config.seed, vocab)


def evaluate(model, tokenizer, config: PruneConfig, device, progress: bool = False) -> dict:
    """Perplexity on each of ``config.eval`` (the same windows for the dense and the pruned model); the
    model visits ``device`` for the evaluation and returns to where it was."""
    from iobs.eval.perplexity import perplexity

    home = next(model.parameters()).device
    model.to(device)
    out = {}
    try:
        for data in config.eval:
            seqlen = config.eval_seqlen or config.seqlen
            out[data] = perplexity(
                model, tokenizer, data, seqlen, config.eval_max_windows, device=device, progress=progress
            )
    finally:
        model.to(home)
    return out


def prune(config: PruneConfig, progress: bool = True, callback=None) -> dict:
    """Run the whole pipeline for ``config``; returns the report (also written to ``out/report.json``)."""
    return prune_model(config, progress, callback)[2]


def prune_model(config: PruneConfig, progress: bool = True, callback=None):
    """:func:`prune`, returning (pruned model, tokenizer, report).

    With ``config.out`` set, finished blocks are persisted in ``OUT.state-<key>`` and a rerun of the
    same configuration resumes after the last finished block; the state folder is removed once the
    checkpoint is saved. ``callback(i, records)`` is passed to the walk (runs after each block).
    Streamed (``config.stream``, or a checkpoint too large for memory: :mod:`iobs.prune.stream`), the
    model returned is the skeleton (blocks on the meta device): the pruned weights are in ``config.out``.
    """
    config.validate()
    from iobs.prune.stream import prune_stream, wants_stream

    if (streamed := wants_stream(config)) is not None:  # --stream, or the model would not fit in memory
        _one_process("stream", config)
        return prune_stream(streamed, progress, callback)
    t_start = time.perf_counter()
    out = check_output_dir(config.out, config.overwrite) if config.out else None
    dev = resolve_device(config.device)
    group = _join_group(config, dev)
    main = group is None or group.rank == 0  # only rank 0 evaluates and writes
    timings = {}
    clock = _Clock(timings)

    from iobs.models import load_model

    with clock("load_s"):
        model, tokenizer = load_model(config.model, device="cpu", dtype=DTYPES[config.dtype])
    with clock("calibration_s"):
        stream = calibration_stream(config, tokenizer, model)
        ids = stream.batch(1)
    dense_evals = {}
    if config.eval and config.eval_dense and main:
        with clock("eval_dense_s"):
            dense_evals = evaluate(model, tokenizer, config, dev, progress)
    state_dir, resumed = _resume_state(config, out, clear=main)
    if group is not None:
        group.barrier()  # rank 0 has cleared a --no-resume state before any rank reads it
    with clock("prune_s"):
        solver, allocation = layer_solver(model, ids, config, dev)
        if config.method == "iobs" or config.finetune_after:
            loop_dir = _loop_dir(config, state_dir, group)
            mapped = solver if allocation is not None else None  # None: config.solver(t) (schedules)
            records, loop = _iobs(model, tokenizer, config, stream, progress and main, loop_dir, mapped)
        else:
            state_key = f"{config.key()}:{config.model}"
            walk = {"state_dir": state_dir, "state_key": state_key, "callback": callback}
            records, loop = _one_shot(model, ids, config, solver, dev, progress, walk), None
    with clock("eval_s"):
        evals = evaluate(model, tokenizer, config, dev, progress) if config.eval and main else {}

    report = _report(config, model, ids, dev, resumed, records, evals, dense_evals, timings)
    report["processes"] = 1 if group is None else group.world
    if allocation is not None:
        report["allocation"] = allocation
    if loop is not None and config.finetune_after:
        report["finetune"] = loop.to_dict() | {"control": control_budget(config)}
    elif loop is not None:
        report["iobs"] = loop.to_dict()
    if not main and loop is not None and state_dir is not None:
        shutil.rmtree(_loop_dir(config, state_dir, group), ignore_errors=True)  # this rank's loop state
    if out is not None and main:
        with clock("save_s"):
            report["timings"]["total_s"] = time.perf_counter() - t_start  # before saving; save_s added below
            report["memory"] = peak_memory()
            _save(model, tokenizer, config, out, report, loop)
            if state_dir is not None:
                shutil.rmtree(state_dir, ignore_errors=True)
        report["out"] = str(Path(out).absolute())
    timings["total_s"] = time.perf_counter() - t_start
    report["memory"] = peak_memory()
    return model, tokenizer, report


class _Clock:
    """``with clock("name_s"):`` adds the block's wall time to ``timings["name_s"]``."""

    def __init__(self, timings: dict):
        self.timings, self.name, self.t0 = timings, None, 0.0

    def __call__(self, name: str):
        self.name = name
        return self

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        if exc[0] is None:
            self.timings[self.name] = time.perf_counter() - self.t0
        return False


def _one_process(what: str, config: PruneConfig) -> None:
    """Refuse a path that has no distributed form yet inside several processes (torchrun / --nproc)."""
    from iobs.prune import distributed

    world = max(distributed.env_world(), config.nproc)
    if world > 1:
        raise ValueError(
            f"{what} runs in one process, but {world} processes were started (torchrun or --nproc): "
            "the streamed walk has no distributed form yet; run it in one process"
        )


def _join_group(config: PruneConfig, dev):
    """The torch.distributed group this process belongs to (None in one process); ``config.nproc`` must
    match the processes torchrun / ``--nproc`` started."""
    from iobs.prune import distributed

    world = distributed.env_world()
    if config.nproc > 1 and world == 1:
        raise ValueError(
            f"nproc={config.nproc} needs {config.nproc} processes: run `iobs prune ... --nproc "
            f"{config.nproc}` or torchrun --nproc-per-node {config.nproc} (prune() runs in this process only)"
        )
    if config.nproc > 1 and world != config.nproc:
        raise ValueError(f"nproc={config.nproc} but the launcher started WORLD_SIZE={world} processes")
    return distributed.init_from_env(dev)


def _loop_dir(config: PruneConfig, state_dir: Path | None, group) -> Path | None:
    """Where this rank keeps the I-OBS loop state: rank 0 the run's state folder, rank r > 0 its own copy
    ``STATE.rankR`` (every rank holds the same weights; no two processes write one file)."""
    if state_dir is None or group is None or group.rank == 0:
        return state_dir
    own = state_dir.with_name(f"{state_dir.name}.rank{group.rank}")
    if not config.resume:
        shutil.rmtree(own, ignore_errors=True)
    return own


def _resume_state(config: PruneConfig, out: Path | None, clear: bool = True) -> tuple[Path | None, int]:
    """(state folder of this configuration, blocks an interrupted run finished); ``--no-resume`` clears it
    (where ``clear``: rank 0 of a distributed run)."""
    if out is None:
        return None, 0
    state_dir = state_dir_for(out, config.key())
    manifest = state_dir / "state.json"
    if not config.resume and state_dir.exists():
        if not clear:
            return state_dir, 0
        shutil.rmtree(state_dir)
    elif manifest.exists():
        return state_dir, int(json.loads(manifest.read_text()).get("blocks_done", 0))
    return state_dir, 0


def layer_solver(model, ids, config: PruneConfig, dev):
    """(config's LayerSolver, None), or with a non-uniform ``config.allocation`` (the solver with its
    per-layer sparsity map, the allocation's report entry) from a pre-pass over the dense model."""
    solver = config.solver()
    if config.allocation == "uniform":
        return solver, None
    from dataclasses import replace

    from iobs.prune.allocation import plan

    kw = {"include": config.include, "exclude": config.exclude, "device": dev, **config.allocation_params()}
    fractions, info = plan(model, ids, solver, config.allocation, config.sparsity, **kw)
    log.info("allocation %s: layer sparsities in [%.3f, %.3f]", config.allocation, *_span(fractions))
    return replace(solver, layer_sparsity=fractions), info


def _span(fractions) -> tuple[float, float]:
    return min(f for _, f in fractions), max(f for _, f in fractions)


def _one_shot(model, ids, config: PruneConfig, solver, dev, progress: bool, walk: dict) -> list[dict]:
    return prune_decoder(
        model,
        ids,
        solver,
        include=config.include,
        exclude=config.exclude,
        sequential=config.sequential,
        progress=progress,
        device=dev,
        **walk,
    )


def control_budget(config: PruneConfig) -> dict:
    """What the control mirrors: I-OBS(N+1)'s windows, dense steps and steps per round."""
    n = config.finetune_after
    steps = config.nsamples * config.epochs if config.dense_step == "finetune" else 1
    return {
        "mirrors": f"I-OBS({n + 1})",
        "rounds": n,
        "calibration_batches": list(range(1, n + 2)),
        "tokens": (n + 1) * config.nsamples * config.seqlen,
        "dense_step": config.dense_step,
        "steps_per_round": steps if config.dense_step != "none" else 0,
        "mask": "held from the one-shot prune (pruned gradients zeroed, weights re-masked each step)",
    }


def _iobs(model, tokenizer, config: PruneConfig, stream, progress: bool, state_dir, solver):
    """method="iobs" or the control (finetune_after > 0): the loop; returns (best records, loop)."""
    from iobs.prune.iobs_lm import finetune_prune_lm, iobs_prune_lm

    records: dict[int, list[dict]] = {}
    run = finetune_prune_lm if config.finetune_after else iobs_prune_lm
    res = run(
        model,
        tokenizer,
        config,
        stream=stream,
        progress=progress,
        state_dir=state_dir,
        state_key=f"{config.key()}:{config.model}",
        on_records=records.__setitem__,
        solver=solver,
    )
    best = records.get(res.best) or records[max(records)]
    if config.finetune_after:  # the control's later rounds hold the one-shot mask: report its layer records
        best = records[1] if res.best == 1 else [dict(r, held_mask=True) for r in records[1]]
    return best, res


def _report(config, model, ids, dev, resumed, records, evals, dense_evals, timings) -> dict:
    return {
        "config": to_dict(config),
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


def _save(model, tokenizer, config: PruneConfig, out: Path, report: dict, loop) -> None:
    """The checkpoint with report.json; for I-OBS and the control also history.json and history.png."""
    save_checkpoint(model, tokenizer, out, report, overwrite=config.overwrite)
    if loop is not None:
        from iobs.loop import history_figure
        from iobs.utils import save_figure

        atomic_write_json(Path(out) / "history.json", loop.to_dict())
        title, name = f"I-OBS on {config.model} ({config.target})", "I-OBS"
        if config.finetune_after:
            title = (
                f"{config.method} + masked {config.dense_step} control on {config.model} ({config.target})"
            )
            name = "control"
        save_figure(history_figure(loop, title=title, name=name), Path(out) / "history.png")
