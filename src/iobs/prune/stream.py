"""Prune a Hugging Face checkpoint that need not fit in memory: one decoder block at a time from disk.

The model is built as a skeleton without weights (accelerate's ``init_empty_weights``: parameters on
the meta device, buffers such as rotary frequencies real); the tensors outside the decoder blocks
(embeddings, final norm, head; a tied head is the embedding) are loaded from the checkpoint's
safetensors files. The decoder walk (:func:`iobs.prune.decoder.prune_decoder`) then runs unchanged
with a placement that, for block i, loads its tensors with ``safetensors.safe_open`` before the walk
uses it, and after the walk is done with it writes the pruned block as its own shard of the output
checkpoint (``model-<i+2>-of-<blocks+1>``; the first holds the tensors outside the blocks) and, when the
next block arrives, returns its parameters to the meta device. Peak memory ≈ embeddings/head + one block
+ the calibration activations (nsamples × seqlen × hidden), independent of depth.

Every computation is the in-memory walk's on the same tensors, so the pruned weights are identical bit
for bit; the output is an ordinary sharded ``save_pretrained`` checkpoint (index json) written into
``OUT.tmp-XXXX`` and renamed into place when complete. Resume works block by block as in memory
(the state folder is the same, so a streamed run can even resume an in-memory one).

Memory discipline: glibc's mmap threshold is fixed at 1 MB and freed heap is trimmed after each
block, else heap fragmentation grows the RSS with depth (measured: benchmarks/results/stream_rss.md).
Only the one-shot layer solvers stream (``--method iobs`` trains the whole model: a config error).

Evaluation (``--eval``) streams too: the evaluation windows are run through the blocks one block at
a time (read back from the written checkpoint), holding windows × seqlen × hidden activations, and
the model's own tail (final norm, head) scores each window, which gives the in-memory perplexity.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

from iobs.prune.checkpoint import REPORT, ShardWriter, check_output_dir, peak_memory, staged_dir
from iobs.prune.decoder import _move_outside, _Placement, capture_block_inputs, find_blocks
from iobs.utils import DTYPES, atomic_write_json, resolve_device

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
_BYTES = {"I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1}
FIT = 0.8  # stream automatically when the model's tensors exceed this fraction of the available memory


def checkpoint_folder(name: str) -> Path:
    """The safetensors checkpoint folder of ``name``: a packaged model (its cached conversion) or a
    ``save_pretrained`` folder; anything else (tiny-*, a .gguf, a hub id) cannot be streamed."""
    from iobs.models.loader import MODELS, ensure_cached

    if name in MODELS:
        return ensure_cached(MODELS[name])
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise ValueError(
        f"stream reads a checkpoint folder from disk (config.json + safetensors) or a packaged model "
        f"({', '.join(MODELS)}); model {name!r} is not one (tiny-* models are built in memory, a .gguf or a "
        "hub id must first be saved with save_pretrained)"
    )


class SafetensorsSource:
    """The tensors of a checkpoint folder: ``model.safetensors.index.json`` (sharded) or
    ``model.safetensors``. Every shard's header is read up front: a missing, corrupt or inconsistent
    shard is an error before anything is computed. Tensors are read per call with ``safe_open`` (the
    file is mapped only while it is read)."""

    def __init__(self, folder):
        from safetensors import safe_open

        self.folder = Path(folder)
        files = self._weight_files()
        self.weight_map: dict[str, str] = {}
        self.meta: dict[str, tuple[tuple[int, ...], str]] = {}  # name -> (shape, safetensors dtype)
        for fname, names in files.items():
            path = self.folder / fname
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint shard {fname} is missing from {str(self.folder)!r}")
            try:
                with safe_open(str(path), framework="pt") as f:
                    keys = set(f.keys())
                    for n in keys:
                        sl = f.get_slice(n)
                        self.meta[n] = (tuple(sl.get_shape()), sl.get_dtype())
            except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
                raise ValueError(f"checkpoint shard {str(path)!r} is corrupt or not safetensors: {e}") from e
            lacking = sorted(set(names) - keys) if names is not None else []
            if lacking:
                raise ValueError(f"checkpoint shard {str(path)!r} lacks {lacking[:5]} named by its {INDEX}")
            self.weight_map.update({n: fname for n in (keys if names is None else names)})

    def _weight_files(self) -> dict[str, list[str] | None]:
        """shard file -> the tensor names the index assigns it (None: a single file, all of its)."""
        index = self.folder / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"checkpoint index {str(index)!r} is not a valid index json: {e}") from e
            files: dict[str, list[str]] = {}
            for n, f in weight_map.items():
                files.setdefault(f, []).append(n)
            return files
        if (self.folder / SINGLE).is_file():
            return {SINGLE: None}
        raise FileNotFoundError(
            f"{str(self.folder)!r} holds neither {INDEX} nor {SINGLE}: stream needs a safetensors checkpoint"
        )

    def nbytes(self, dtype: torch.dtype) -> int:
        """Bytes of all tensors once loaded (floating tensors in ``dtype``)."""
        size = torch.empty((), dtype=dtype).element_size()
        return sum(
            math.prod(s) * (size if d.startswith(("F", "BF")) else _BYTES.get(d, 8))
            for s, d in self.meta.values()
        )

    def name_of(self, name: str, prefix: str) -> str:
        """The checkpoint's name of the model tensor ``name`` (also found without the base-model
        ``prefix``, as in older checkpoints); an error when it has none."""
        for cand in (name, name.removeprefix(prefix + ".") if prefix else name):
            if cand in self.weight_map:
                return cand
        raise ValueError(f"checkpoint {str(self.folder)!r} has no tensor {name!r}")

    def load(self, names: list[str]) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` (on the CPU, as stored), each shard opened once and closed after."""
        from safetensors import safe_open

        by_file: dict[str, list[str]] = {}
        for n in names:
            by_file.setdefault(self.weight_map[n], []).append(n)
        out = {}
        for fname, ns in by_file.items():
            path = self.folder / fname
            try:
                with safe_open(str(path), framework="pt") as f:
                    out.update({n: f.get_tensor(n) for n in ns})
            except Exception as e:  # noqa: BLE001
                raise ValueError(f"cannot read {ns[:3]} from checkpoint shard {str(path)!r}: {e}") from e
        return out


def skeleton(folder: Path, dtype: torch.dtype) -> tuple[nn.Module, str, nn.ModuleList]:
    """(model without weights, dotted path of its blocks, the blocks) for the checkpoint in ``folder``."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder)
        with init_empty_weights(include_buffers=False):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (ValueError, KeyError, OSError) as e:
        raise ValueError(f"cannot build a causal LM from {str(folder / 'config.json')!r}: {e}") from e
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # a tied head shares the embedding's (meta) parameter: stored once
    path, blocks = find_blocks(model)  # an architecture the walk does not know fails here
    return model.eval(), path, blocks


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter or buffer ``name`` of ``model`` by ``value`` (same shape), in place."""
    owner, _, leaf = name.rpartition(".")
    mod = model.get_submodule(owner)
    old = mod._parameters.get(leaf) if leaf in mod._parameters else mod._buffers.get(leaf)
    if old is None or tuple(old.shape) != tuple(value.shape):
        shape = None if old is None else tuple(old.shape)
        raise ValueError(f"checkpoint tensor for {name!r} has shape {tuple(value.shape)}, the model {shape}")
    if leaf in mod._parameters:
        mod._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        mod._buffers[leaf] = value


def _stored(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """What ``save_pretrained`` stores of ``module``: its state dict, each shared tensor once."""
    seen, out = set(), {}
    for n, t in module.state_dict(prefix=prefix, keep_vars=True).items():
        if id(t) not in seen:
            seen.add(id(t))
            out[n] = t
    return out


def load_tensors(model: nn.Module, source: SafetensorsSource, names, dtype, device="cpu") -> None:
    """Load the model tensors ``names`` from ``source`` into ``model`` (floating ones cast to ``dtype``)."""
    prefix = getattr(model, "base_model_prefix", "")
    stored = {n: source.name_of(n, prefix) for n in names}
    tensors = source.load(list(stored.values()))
    for n, key in stored.items():
        t = tensors.pop(key)
        _set_tensor(model, n, t.to(device, dtype if t.is_floating_point() else t.dtype))


def load_outside(model: nn.Module, source: SafetensorsSource, path: str, dtype) -> dict[str, torch.Tensor]:
    """Load every tensor outside the blocks (a tied head is re-tied to its embedding); returns them as
    they are stored (the first shard of the output)."""
    inside = f"{path}."
    names = [n for n in _stored(model) if not n.startswith(inside)]
    load_tensors(model, source, names, dtype)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    left = [n for n, t in _stored(model).items() if not n.startswith(inside) and t.device.type == "meta"]
    if left:
        raise ValueError(f"checkpoint {str(source.folder)!r} has no tensor for {left}")
    return {n: t for n, t in _stored(model).items() if not n.startswith(inside)}


class StreamPlacement(_Placement):
    """The walk's placement for a skeleton: block i is loaded from ``source`` onto the device when the
    walk reaches it; when it leaves, it is written (``writer``: shard index i + 1), and it is freed
    (meta device) when the next block arrives."""

    def __init__(self, model, blocks, device, offload, *, source, path, dtype, writer=None):
        super().__init__(model, blocks, device, offload)
        self.home = torch.device("cpu")
        self.source, self.path, self.dtype, self.writer = source, path, dtype, writer
        self.index = {id(b): i for i, b in enumerate(blocks)}
        self.left = None

    def __enter__(self):
        if self.dev != self.home:
            _move_outside(self.model, self.inside, self.dev)
        return self

    def visit(self, block: nn.Module, arrive: bool) -> None:
        i = self.index[id(block)]
        prefix = f"{self.path}.{i}."
        if arrive:
            self._free()
            names = [prefix + n for n in _stored(block)]
            load_tensors(self.model, self.source, names, self.dtype, self.dev)
            return
        if self.writer is not None:
            self.writer.write(i + 1, _stored(block, prefix))
        self.left = block  # freed on the next arrival (the walk persists its resume state in between)

    def _free(self) -> None:
        if self.left is not None:
            for n, t in _stored(self.left).items():
                _set_tensor(self.left, n, t.to("meta"))
            self.left = None
            release_heap(collect=False)  # else the heap's freed pages pile up with depth

    def __exit__(self, *exc):
        self._free()
        if self.dev != self.home:
            _move_outside(self.model, self.inside, self.home)
        return False


def fix_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """Serve allocations above ``nbytes`` by ``mmap`` for the rest of the process (glibc ``mallopt``;
    a no-op elsewhere). By default glibc raises this threshold to the largest block it has freed
    (up to 32 MB), after which every weight and Hessian of a block lands in the heap, where freed
    blocks fragment it and the RSS creeps up with depth."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def release_heap(collect: bool = True) -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``; a no-op elsewhere), after a garbage
    collection when ``collect`` (~0.4 s with transformers loaded). Tokenizing a corpus leaves ~100 MB
    of freed small objects, and each block's solve a little more, that would otherwise stay resident."""
    import ctypes

    if collect:
        import gc

        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def available_memory() -> int:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup v2 limit if one is set."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


def wants_stream(config):
    """``config`` to run streamed: ``stream`` as given, or (``auto_stream``) with stream turned on when
    the checkpoint's tensors exceed :data:`FIT` of the available memory (logged); None: in memory."""
    if config.stream:
        return config
    if not config.auto_stream:
        return None
    try:
        folder = checkpoint_folder(config.model)
    except (ValueError, FileNotFoundError):
        return None  # built in memory (tiny-*), a .gguf or a hub id: nothing to stream from
    try:
        need = SafetensorsSource(folder).nbytes(DTYPES[config.dtype])
    except (ValueError, FileNotFoundError):
        return None  # the in-memory loader reports a broken checkpoint in its own words
    avail = available_memory()
    if need <= FIT * avail:
        return None
    gib = f"{need / 2**30:.1f} GiB of tensors, {avail / 2**30:.1f} GiB of memory available"
    why = _cannot_stream(config)
    if why:
        log.warning(
            "%s would not fit in memory (%s), but it cannot stream (%s): loading it whole",
            config.model,
            gib,
            why,
        )
        return None
    log.warning(
        "%s would not fit in memory (%s): streaming it from disk one block at a time (--stream)",
        config.model,
        gib,
    )
    return dataclasses.replace(config, stream=True)


def _cannot_stream(config) -> str:
    """Why ``config`` cannot run streamed ('' when it can): the checks of PruneConfig's stream option."""
    if config.method == "iobs" or config.finetune_after:
        return "its dense step trains the whole model"
    if not config.out:
        return "no --out to stream to"
    if config.nproc > 1:
        return "streaming runs in one process"
    if config.allocation != "uniform":
        return f"allocation {config.allocation!r} needs a dense pre-pass over the whole model"
    return ""


def prune_stream(config, progress: bool = True, callback=None):
    """:func:`iobs.prune.api.prune_model` for ``config.stream``: (skeleton model, tokenizer, report);
    the pruned weights exist only in the checkpoint written to ``config.out``."""
    from transformers import AutoTokenizer

    from iobs.prune.api import _Clock, _one_shot, _report, _resume_state, calibration_stream

    config.validate()
    t_start, timings = time.perf_counter(), {}
    clock, dev, dtype = _Clock(timings), resolve_device(config.device), DTYPES[config.dtype]
    out = check_output_dir(config.out, config.overwrite)
    fix_mmap_threshold()
    with clock("load_s"):
        folder = checkpoint_folder(config.model)
        source = SafetensorsSource(folder)
        model, path, blocks = skeleton(folder, dtype)
        outside = load_outside(model, source, path, dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    with clock("calibration_s"):
        ids = calibration_stream(config, tokenizer, model).batch(1)
        release_heap()  # the tokenized corpus is gone: give its heap back before the blocks arrive
    dense_evals = {}
    if config.eval and config.eval_dense:
        with clock("eval_dense_s"):
            dense_evals = stream_evaluate(model, source, path, tokenizer, config, dev, progress)
    state_dir, resumed = _resume_state(config, out)
    with staged_dir(out, config.overwrite) as tmp:
        writer = ShardWriter(tmp, len(blocks) + 1)
        writer.write(0, outside)
        place = partial(StreamPlacement, source=source, path=path, dtype=dtype, writer=writer)
        with clock("prune_s"):
            walk = {
                "state_dir": state_dir,
                "state_key": f"{config.key()}:{config.model}",
                "callback": callback,
                "placement": place,
            }
            records = _one_shot(model, ids, config, config.solver(), dev, progress, walk)
        _finish(model, tokenizer, writer, tmp)
        with clock("eval_s"):  # the pruned blocks read back from the shards just written
            evals = {}
            if config.eval:
                evals = stream_evaluate(model, SafetensorsSource(tmp), path, tokenizer, config, dev, progress)
        report = _report(config, model, ids, dev, resumed, records, evals, dense_evals, timings)
        report["stream"] = {"blocks": len(blocks), "shards": writer.n, "checkpoint": str(folder)}
        timings["total_s"] = time.perf_counter() - t_start
        report["memory"] = peak_memory()
        atomic_write_json(tmp / REPORT, report)
    if state_dir is not None:
        import shutil

        shutil.rmtree(state_dir, ignore_errors=True)
    report["out"] = str(Path(out).absolute())
    return model, tokenizer, report


def _finish(model, tokenizer, writer: ShardWriter, tmp: Path) -> None:
    """Index, config.json (as ``save_pretrained`` writes it), generation config and tokenizer."""
    writer.finish()
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(tmp)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)


def stream_evaluate(model, source, path: str, tokenizer, config, dev, progress: bool = False) -> dict:
    """Perplexity on each of ``config.eval`` (as :func:`iobs.prune.api.evaluate`) with the blocks read
    from ``source`` one at a time: every window goes through block i before block i + 1 is loaded."""
    from iobs.eval.perplexity import _token_ids, eval_windows, perplexity

    blocks = find_blocks(model)[1]
    seqlen = config.eval_seqlen or config.seqlen
    out = {}
    for data in config.eval:
        ids, label = _token_ids(data, tokenizer, seqlen)
        windows = eval_windows(ids.long(), seqlen, config.eval_max_windows)
        dtype = DTYPES[config.dtype]
        with StreamPlacement(model, blocks, dev, True, source=source, path=path, dtype=dtype) as place:
            final, wrap = _stream_windows(model, blocks, windows, place)
            replay = _Replay(model, blocks, windows, final, wrap)
            out[data] = perplexity(replay, None, windows, seqlen, device=dev, progress=progress, label=label)
    return out


@torch.no_grad()
def _stream_windows(model, blocks, windows: torch.Tensor, place: StreamPlacement):
    """(last block's output per window, whether the blocks return tuples), one block in memory at a time."""
    model.eval()
    inputs = capture_block_inputs(model, blocks, windows, place.dev)
    kind = {}
    for i, block in enumerate(blocks):
        place.visit(block, arrive=True)
        if i == len(blocks) - 1:
            block.forward = lambda *a, real=block.forward, **k: kind.setdefault("out", real(*a, **k))
            inputs.call(block, 0, i)
            block.__dict__.pop("forward")
        for j in range(len(inputs)):
            inputs.hidden[j] = inputs.call(block, j, i)
        place.visit(block, arrive=False)
    return inputs.hidden, isinstance(kind["out"], (tuple, list))


class _Replay(nn.Module):
    """``model(window)`` with every block's forward replaced by the streamed result: blocks pass their
    input through and the last one returns the window's precomputed output, so the model's own tail
    (final norm, head) gives the logits. Windows must come in order (as ``perplexity`` sends them)."""

    def __init__(self, model, blocks, windows, final, wrap: bool):
        super().__init__()
        self.model, self.blocks, self.windows, self.final, self.wrap = model, blocks, windows, final, wrap
        self.j = 0
        self.eval()  # perplexity() restores the mode it finds: keep the model in eval mode (no dropout)

    def forward(self, x):
        if not torch.equal(x.cpu(), self.windows[self.j : self.j + 1]):
            raise RuntimeError(f"streamed evaluation expected window {self.j} next")
        last = len(self.blocks) - 1

        def passthrough(i):
            def forward(*args, **kwargs):
                h = self.final[self.j] if i == last else (args[0] if args else kwargs["hidden_states"])
                return (h,) if self.wrap else h

            return forward

        for i, block in enumerate(self.blocks):
            block.forward = passthrough(i)
        try:
            return self.model(input_ids=x, use_cache=False)
        finally:
            for block in self.blocks:
                block.__dict__.pop("forward", None)
            self.j += 1
