"""The decoder walk: prune a Hugging Face causal LM block by block, Hessians from pruned-upstream inputs.

Capture what the model passes its first block (hidden states, rotary cos/sin, masks, position ids) for
every calibration sample, then block by block: accumulate H = Σ x xᵀ for each prunable layer of the
block, solve each layer, re-run the pruned block to produce the next block's inputs. Samples stream
through a block one at a time, so memory holds one block's weights on the device plus
nsamples × seqlen × hidden activations (each sample's block output replaces its input).

``sequential="block"`` (default, SparseGPT's reference choice): every layer of a block gets its H from
one pass over the block's inputs, i.e. later layers of the block see dense earlier layers of the same
block; cost per block = 2 forward passes of the block per sample. ``sequential="true"``: layers are
grouped by shared input (q/k/v; o; gate/up; down) and the block is re-run after each group, so every
layer sees the already-pruned ones before it; cost = (groups + 1) partial passes per sample.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from iobs.prune import distributed
from iobs.prune.checkpoint import WalkState
from iobs.prune.hessian import accumulate_hessians
from iobs.prune.layers import find_layers
from iobs.prune.solve import DEFAULT_SOLVER, LayerSolver, solve_group
from iobs.prune.walk import StopAfter, StopForward, call_until_stopped, execution_groups
from iobs.utils import resolve_device

log = logging.getLogger(__name__)

SEQUENTIAL = ("block", "true")  # the one vocabulary of --sequential

# where the repeated decoder blocks of a Hugging Face causal LM live (first match wins)
DECODER_BLOCKS = (
    "model.layers",  # Llama, SmolLM2, Qwen2, Mistral, Phi, Gemma
    "model.decoder.layers",  # OPT
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "model.language_model.layers",  # multimodal wrappers
)


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted path, ModuleList) of the decoder blocks, from :data:`DECODER_BLOCKS`."""
    for path in DECODER_BLOCKS:
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return path, obj
    raise ValueError(
        f"cannot find the decoder blocks of {type(model).__name__}: tried {', '.join(DECODER_BLOCKS)}; "
        "add its path to iobs.prune.decoder.DECODER_BLOCKS or use prune_module for a generic walk"
    )


def _share(value, ref):
    """``ref`` when ``value`` equals it (tensors by value), else ``value``: dedupes per-sample kwargs."""
    if torch.is_tensor(value) and torch.is_tensor(ref):
        if value is ref or (
            value.shape == ref.shape and value.dtype == ref.dtype and torch.equal(value, ref)
        ):
            return ref
        return value
    if isinstance(value, (tuple, list)) and isinstance(ref, (tuple, list)) and len(value) == len(ref):
        out = [_share(v, r) for v, r in zip(value, ref)]
        return type(value)(out) if isinstance(value, list) else tuple(out)
    if isinstance(value, dict) and isinstance(ref, dict):
        return {k: _share(v, ref.get(k)) for k, v in value.items()}
    return value


def _same(a, b) -> bool:
    """Structural equality of block arguments (tensors by value)."""
    if a is b:
        return True
    if torch.is_tensor(a) or torch.is_tensor(b):
        return (
            torch.is_tensor(a)
            and torch.is_tensor(b)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and a.device == b.device
            and bool(torch.equal(a, b))
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - objects without a usable ==
        return False


def _split_hidden(args: tuple, kwargs: dict):
    kwargs = dict(kwargs)
    if args:
        return args[0], tuple(args[1:]), kwargs, False
    return kwargs.pop("hidden_states"), (), kwargs, True


class BlockInputs:
    """What the model passes block 0 for each calibration sample: hidden states and the rest (shared
    between samples when identical, e.g. rotary cos/sin and causal masks). Blocks that receive other
    arguments than block 0 (per-layer sliding-window masks) keep their own in ``per_block``."""

    def __init__(self):
        self.hidden: list[torch.Tensor] = []
        self.args: list[tuple] = []
        self.kwargs: list[dict] = []
        self.hidden_kw = False
        self.per_block: dict[int, tuple[list[tuple], list[dict]]] = {}

    def __len__(self):
        return len(self.hidden)

    def add(self, args: tuple, kwargs: dict) -> None:
        hidden, rest, kwargs, self.hidden_kw = _split_hidden(args, kwargs)
        if self.hidden:
            rest = _share(rest, self.args[0])
            kwargs = _share(kwargs, self.kwargs[0])
        self.hidden.append(hidden.detach())
        self.args.append(rest)
        self.kwargs.append(kwargs)

    def set_block(self, i: int, rests: list[tuple[tuple, dict]]) -> None:
        """Arguments block ``i`` received per sample; kept only where they differ from block 0's."""
        if all(_same(r, (self.args[j], self.kwargs[j])) for j, r in enumerate(rests)):
            return
        args = [_share(a, rests[0][0]) for a, _ in rests]
        kwargs = [_share(k, rests[0][1]) for _, k in rests]
        self.per_block[i] = (args, kwargs)
        log.info("block %d receives other arguments than block 0 (e.g. a sliding-window mask)", i)

    def call(self, block: nn.Module, j: int, i: int = 0, hidden: torch.Tensor | None = None):
        """Run ``block`` (block number ``i``) on sample ``j``'s hidden states; return its output."""
        h = self.hidden[j] if hidden is None else hidden
        if i in self.per_block:
            args, kwargs = self.per_block[i][0][j], self.per_block[i][1][j]
        else:
            args, kwargs = self.args[j], self.kwargs[j]
        if self.hidden_kw:
            out = block(*args, hidden_states=h, **kwargs)
        else:
            out = block(h, *args, **kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


def _module_set(blocks: nn.Module) -> set[int]:
    return {id(m) for m in blocks.modules()}


def _move_outside(model: nn.Module, skip: set[int], device: torch.device) -> None:
    """Move the parameters and buffers of every module not in ``skip`` (ids) to ``device``, in place."""
    with torch.no_grad():
        for m in model.modules():
            if id(m) in skip:
                continue
            for p in m._parameters.values():
                if p is not None and p.device != device:
                    p.data = p.data.to(device)
            for k, b in m._buffers.items():
                if b is not None and b.device != device:
                    m._buffers[k] = b.to(device)


def capture_block_inputs(
    model: nn.Module, blocks: nn.ModuleList, calib_ids: torch.Tensor, device
) -> BlockInputs:
    """Record what the model passes its blocks for each calibration sample.

    Every block's ``forward`` is replaced for the duration by a recorder that returns its input unchanged
    (so the pass costs the embeddings only) and the last one ends the pass. Block 0's hidden states
    and arguments are kept; later blocks' arguments only where they differ from block 0's.
    """
    inputs = BlockInputs()
    later: dict[int, list] = {i: [] for i in range(1, len(blocks))}
    last = len(blocks) - 1

    def recorder(i):
        def forward(*args, **kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if i == 0:
                inputs.add(args, kwargs)
            else:
                _, rest, kw, _ = _split_hidden(args, kwargs)
                later[i].append((rest, kw))
            if i == last:
                raise StopForward
            return hidden

        return forward

    saved = [block.__dict__.get("forward") for block in blocks]  # e.g. accelerate's wrapped forward
    for i, block in enumerate(blocks):
        block.forward = recorder(i)
    try:
        with torch.no_grad():
            for j in range(calib_ids.shape[0]):
                ids = calib_ids[j : j + 1].to(device)
                try:
                    model(input_ids=ids, use_cache=False)
                except StopForward:
                    continue
                raise RuntimeError("the model's forward pass never reached its last decoder block")
    finally:
        for block, forward in zip(blocks, saved):
            if forward is None:
                block.__dict__.pop("forward", None)
            else:
                block.forward = forward
    for i, rests in later.items():
        inputs.set_block(i, rests)
    return inputs


def check_calibration(calib_ids, vocab_size: int | None = None) -> torch.Tensor:
    """Calibration token ids: a non-empty integer tensor (nsamples, seqlen) with ids in the vocabulary."""
    if not torch.is_tensor(calib_ids):
        raise TypeError(f"calib_ids must be a LongTensor (nsamples, seqlen), got {type(calib_ids).__name__}")
    if calib_ids.dim() == 1:
        calib_ids = calib_ids.unsqueeze(0)
    if calib_ids.dim() != 2 or calib_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"calib_ids must be an integer tensor of shape (nsamples, seqlen), got {calib_ids.dtype} "
            f"{tuple(calib_ids.shape)}"
        )
    if calib_ids.numel() == 0:
        raise ValueError(
            f"calib_ids is empty (shape {tuple(calib_ids.shape)}): need nsamples >= 1, seqlen >= 1"
        )
    if vocab_size is not None and (int(calib_ids.min()) < 0 or int(calib_ids.max()) >= vocab_size):
        raise ValueError(
            f"calib_ids has token ids in [{int(calib_ids.min())}, {int(calib_ids.max())}], outside the "
            f"model's vocabulary [0, {vocab_size})"
        )
    return calib_ids.long()


def _fingerprint(state_key: str, calib_ids, solver: LayerSolver, sequential: str, names) -> str:
    h = hashlib.sha256()
    opts = {"per_row": solver.per_row, "blocksize": solver.blocksize, "percdamp": solver.percdamp}
    unset = (("refit", False), ("warm", "sparsegpt"), ("layer_sparsity", None))
    for k, default in unset:  # only when set: older states still resume
        if getattr(solver, k, default) != default:
            opts[k] = getattr(solver, k)
    spec = [
        state_key,
        solver.method,
        solver.sparsity,
        solver.pattern,
        sequential,
        sorted(opts.items()),
        names,
    ]
    h.update(json.dumps(spec, default=str).encode())
    h.update(str(tuple(calib_ids.shape)).encode())
    h.update(calib_ids.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class _Placement:
    """Where the walk computes: ``device``; with ``offload`` a model elsewhere stays there except the
    modules outside the blocks (embeddings, rotary) and the block being pruned. Restored on exit."""

    def __init__(self, model: nn.Module, blocks: nn.ModuleList, device, offload: bool):
        self.model, self.blocks, self.dev, self.offload = model, blocks, device, offload
        self.home = next(model.parameters()).device
        self.inside = _module_set(blocks)
        self.moves_blocks = self.dev != self.home and offload

    def __enter__(self):
        if self.dev != self.home:
            if self.offload:
                _move_outside(self.model, self.inside, self.dev)
            else:
                self.model.to(self.dev)
        return self

    def visit(self, block: nn.Module, arrive: bool) -> None:
        if self.moves_blocks:
            block.to(self.dev if arrive else self.home)

    def __exit__(self, *exc):
        if self.dev != self.home:
            if self.offload:
                _move_outside(self.model, self.inside, self.home)
                self.blocks.to(self.home)
            else:
                self.model.to(self.home)
        return False


def prune_decoder(
    model: nn.Module,
    calib_ids: torch.Tensor,
    solver: LayerSolver = DEFAULT_SOLVER,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    sequential: str = "block",
    progress: bool = True,
    device=None,
    offload: bool = True,
    state_dir=None,
    state_key: str = "",
    callback: Callable[[int, list[dict]], None] | None = None,
    placement: Callable | None = None,
) -> list[dict]:
    """Prune every prunable layer inside the decoder blocks of a causal LM with ``solver``, in place.

    ``calib_ids`` (nsamples, seqlen) token ids; ``device`` where blocks are processed (default: CUDA if
    present); with ``offload`` a model on the CPU stays there and only the block being pruned (and the
    embedding/rotary modules during capture) visits the device. ``state_dir``: finished blocks' weights
    are persisted there and a rerun with the same arguments resumes after the last finished block.
    ``callback(i, records)`` runs after block i is finished (and persisted). Inside a torch.distributed
    group of R > 1 processes (:mod:`iobs.prune.distributed`) each rank walks its shard of the samples,
    the layer solves are spread over the ranks and only rank 0 persists the state. ``placement``: a
    factory like :class:`_Placement` ``(model, blocks, device, offload)`` whose ``visit(block, arrive)``
    may materialise block i before the walk uses it and release it after (the streaming path's hook).
    Returns one record per layer: name, block, shape, sparsity, zeros, error, rel_error, damping, seconds.
    """
    if sequential not in SEQUENTIAL:
        raise ValueError(f"sequential must be one of {', '.join(SEQUENTIAL)}, got {sequential!r}")
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    calib_ids = check_calibration(calib_ids, getattr(emb, "num_embeddings", None))
    path, blocks = find_blocks(model)
    all_layers = find_layers(model, include, exclude)
    block_layers = [
        {n: m for n, m in all_layers.items() if n.startswith(f"{path}.{i}.")} for i in range(len(blocks))
    ]
    if not any(block_layers):
        raise ValueError(f"no prunable layer inside {path}.* matches include={include} exclude={exclude}")
    state = None
    if state_dir is not None:
        names = [n for bl in block_layers for n in bl]
        state = WalkState(state_dir, _fingerprint(state_key, calib_ids, solver, sequential, names))
    group = distributed.active()
    if group is not None:
        calib_ids = calib_ids[group.shard(calib_ids.shape[0])]  # after the fingerprint: it names all ids
    was_training = model.training
    model.eval()
    try:
        with (placement or _Placement)(model, blocks, resolve_device(device), offload) as place:
            t0 = time.perf_counter()
            inputs = capture_block_inputs(model, blocks, calib_ids, place.dev)
            log.info("captured block inputs of %d samples in %.1fs", len(inputs), time.perf_counter() - t0)
            walk = _BlockWalk(blocks, block_layers, inputs, solver, sequential, group)
            return walk.run(place, state, progress, callback)
    finally:
        model.train(was_training)


class _BlockWalk:
    """Block by block: solve the block's layers (or reload them from a resume state), then run the pruned
    block to produce the next block's inputs."""

    def __init__(
        self, blocks, block_layers, inputs: BlockInputs, solver: LayerSolver, sequential: str, group=None
    ):
        self.blocks, self.block_layers, self.inputs = blocks, block_layers, inputs
        self.solver, self.sequential, self.group = solver, sequential, group

    @torch.no_grad()
    def run(self, place: _Placement, state: WalkState | None, progress: bool, callback) -> list[dict]:
        from tqdm.auto import tqdm

        done, records = state.load() if state is not None else (0, [])
        if done:
            log.info("resuming from %s: %d of %d blocks already pruned", state.path, done, len(self.blocks))
        main = self.group is None or self.group.rank == 0  # the one rank that writes and shows progress
        bar = tqdm(
            total=len(self.blocks),
            desc="pruning blocks",
            disable=not (progress and main),
            initial=done,
            leave=False,
        )
        for i, block in enumerate(self.blocks):
            place.visit(block, arrive=True)
            if i < done:
                state.load_block(i, self.block_layers[i])
            else:
                records.extend(self.prune_block(i, block))
            if i < len(self.blocks) - 1:  # the pruned block's outputs are the next block's inputs
                for j in range(len(self.inputs)):
                    self.inputs.hidden[j] = self.inputs.call(block, j, i)
            place.visit(block, arrive=False)
            if i >= done:
                if state is not None and main:
                    state.save_block(i, self.block_layers[i], records)
                bar.update(1)
                if callback is not None:
                    callback(i, [r for r in records if r["block"] == i])
        bar.close()
        return records

    def prune_block(self, i: int, block: nn.Module) -> list[dict]:
        """H of each group of block ``i``'s layers from one (partial) pass per sample, then the solves."""
        layers, inputs, true_seq = self.block_layers[i], self.inputs, self.sequential == "true"
        if not layers:
            return []
        if true_seq:
            groups, single = execution_groups(lambda: inputs.call(block, 0, i), layers)
        else:
            groups, single = [list(layers)], True
        records = []
        for gi, group in enumerate(groups):
            sub = {n: layers[n] for n in group}
            t0 = time.perf_counter()
            reduce = None if self.group is None else distributed.hessian_reduce(self.group, sub)
            with accumulate_hessians(sub, reduce=reduce) as acc:
                for j in range(len(inputs)):
                    with StopAfter(sub[group[-1]] if single and true_seq else None):
                        call_until_stopped(lambda j=j: inputs.call(block, j, i))
            extra = {"block": i, "group": gi, "hessian_seconds": (time.perf_counter() - t0) / len(group)}
            if self.group is None:
                records += solve_group(sub, acc, self.solver, extra)
            else:
                records += distributed.solve_group_distributed(self.group, sub, acc, self.solver, extra)
        return records


def dense_block_hessians(
    model: nn.Module,
    calib_ids: torch.Tensor,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    device=None,
    offload: bool = True,
):
    """Yield (i, {name: module}, {name: HessianAccumulator}) for every decoder block of the *unpruned*
    model, H from dense upstream inputs: one pass of block i per sample both fills its layers' H and
    produces block i+1's inputs. The statistics pre-pass of a non-uniform allocation; prunes nothing."""
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    calib_ids = check_calibration(calib_ids, getattr(emb, "num_embeddings", None))
    path, blocks = find_blocks(model)
    all_layers = find_layers(model, include, exclude)
    was_training = model.training
    model.eval()
    try:
        with _Placement(model, blocks, resolve_device(device), offload) as place:
            with torch.no_grad():
                inputs = capture_block_inputs(model, blocks, calib_ids, place.dev)
            for i, block in enumerate(blocks):
                place.visit(block, arrive=True)
                layers = {n: m for n, m in all_layers.items() if n.startswith(f"{path}.{i}.")}
                with accumulate_hessians(layers) as acc, torch.no_grad():
                    for j in range(len(inputs)):
                        inputs.hidden[j] = inputs.call(block, j, i)
                if layers:
                    yield i, layers, acc
                place.visit(block, arrive=False)
    finally:
        model.train(was_training)
