"""Model walks: prune layer by layer with Hessians from inputs that flow through the already-pruned layers.

``prune_decoder`` (Hugging Face decoder-only LMs): capture what the model passes its first block (hidden
states, rotary cos/sin, masks, position ids) for every calibration sample, then block by block:
accumulate H = Σ x xᵀ for each prunable layer of the block, solve each layer, re-run the pruned block
to produce the next block's inputs. Samples stream through a block one at a time, so memory holds one
block's weights on the device plus nsamples × seqlen × hidden activations (each sample's block output
replaces its input).

``sequential="block"`` (default, SparseGPT's reference choice): every layer of a block gets its H from
one pass over the block's inputs, i.e. later layers of the block see dense earlier layers of the same
block; cost per block = 2 forward passes of the block per sample. ``sequential="true"``: layers are
grouped by shared input (q/k/v; o; gate/up; down) and the block is re-run after each group, so every
layer sees the already-pruned ones before it; cost = (groups + 1) partial passes per sample.

``prune_module`` (any nn.Module: MLPs, CNNs, ViTs): layers grouped by shared input in execution order;
for each group the model is re-run on all calibration batches up to that group (stopping the forward
there), so each group's H comes from inputs through all previously pruned layers. Cost: about
G/2 full forward passes per batch for G groups (quadratic in depth; fine for small models).

Both walks are pure functions of (model, calibration data, solver options) that modify the model in
place and return one record per layer; the I-OBS outer loop calls them again after its dense step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from iobs.prune.hessian import accumulate_hessians
from iobs.prune.layers import find_layers, get_weight, set_weight
from iobs.utils import resolve_device

log = logging.getLogger(__name__)

# where the repeated decoder blocks of a Hugging Face causal LM live (first match wins)
DECODER_BLOCKS = (
    "model.layers",  # Llama, SmolLM2, Qwen2, Mistral, Phi, Gemma
    "model.decoder.layers",  # OPT
    "transformer.h",  # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "model.language_model.layers",  # multimodal wrappers
)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the needed inputs are captured."""


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
        "add its path to iobs.prune.sequential.DECODER_BLOCKS or use prune_module for a generic walk"
    )


def _default_solve():
    from iobs.obs.layer import prune_layer

    return prune_layer


# ----------------------------------------------------------------------------------------------------
# solving one layer


def solve_layer(
    name: str, module: nn.Module, H: torch.Tensor, tokens: int, method, sparsity, pattern, solve, layer_kwargs
) -> dict:
    """Prune ``module`` in place from its Hessian; return its record (error = tr((W−Ŵ) H (W−Ŵ)ᵀ))."""
    if tokens == 0:
        raise ValueError(f"layer {name} received no input during the calibration forward pass; exclude it")
    W = get_weight(module).to(H.dtype).clone(memory_format=torch.contiguous_format)
    dense = float(torch.einsum("ij,jk,ik->", W, H, W))  # ‖W X‖², for the relative error
    t0 = time.perf_counter()
    # the solver gets its own copy: a solver that updates its input in place must not touch W
    try:
        res = solve(W.clone(), H, method, sparsity, pattern, name=name, **layer_kwargs)
    except ValueError as e:
        if name in str(e):
            raise
        raise ValueError(f"layer {name} (W {tuple(W.shape)}): {e}") from e
    seconds = time.perf_counter() - t0
    mask = res.mask.to(W.device)
    W_new = res.W.to(W.device, H.dtype) * mask  # exact zeros off the support
    set_weight(module, W_new)
    stored = get_weight(module)
    n = mask.numel()
    kept = int(mask.sum())
    return {
        "name": name,
        "shape": list(W.shape),
        "numel": n,
        "kept": kept,
        "sparsity": 1.0 - kept / n,
        "zeros": float((stored == 0).sum()) / n,
        "error": float(res.error),
        "rel_error": float(res.error) / dense if dense > 0 else 0.0,
        "damping": float(res.damping) if res.damping is not None else None,
        "seconds": seconds,
        "tokens": tokens,
    }


def _solve_group(layers, acc, method, sparsity, pattern, solve, layer_kwargs, extra) -> list[dict]:
    records = []
    for name, module in layers.items():
        a = acc[name]
        rec = solve_layer(name, module, a.H, a.tokens, method, sparsity, pattern, solve, layer_kwargs)
        rec.update(extra)
        records.append(rec)
        a.H = None  # free before the next layer
        log.debug("pruned %s: sparsity %.4f error %.4g", name, rec["sparsity"], rec["error"])
    return records


# ----------------------------------------------------------------------------------------------------
# execution order and groups of layers sharing one input


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


class _StopAfter:
    """Context: a forward hook on ``module`` that ends the forward pass after it ran (if enabled)."""

    def __init__(self, module: nn.Module | None):
        self.module = module
        self.handle = None

    def __enter__(self):
        if self.module is not None:

            def hook(module, args, output):
                raise _StopForward

            self.handle = self.module.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()
        return False


def _call(fn: Callable[[], object]):
    try:
        return fn()
    except _StopForward:
        return None


# ----------------------------------------------------------------------------------------------------
# decoder walk


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
                raise _StopForward
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
                except _StopForward:
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


def _fingerprint(state_key, calib_ids, method, sparsity, pattern, sequential, layer_kwargs, names) -> str:
    h = hashlib.sha256()
    spec = [state_key, method, sparsity, pattern, sequential, sorted(layer_kwargs.items()), names]
    h.update(json.dumps(spec, default=str).encode())
    h.update(str(tuple(calib_ids.shape)).encode())
    h.update(calib_ids.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def prune_decoder(
    model: nn.Module,
    calib_ids: torch.Tensor,
    method: str = "sparsegpt",
    sparsity: float | None = 0.5,
    pattern: str | None = None,
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
    solve: Callable | None = None,
    hessian_dtype: torch.dtype | None = None,
    **layer_kwargs,
) -> list[dict]:
    """Prune every prunable layer inside the decoder blocks of a causal LM, block by block, in place.

    ``calib_ids`` (nsamples, seqlen) token ids; ``device`` where blocks are processed (default: CUDA if
    present); with ``offload`` a model on the CPU stays there and only the block being pruned (and the
    embedding/rotary modules during capture) visits the device. ``state_dir``: finished blocks' weights
    are persisted there and a rerun with the same arguments resumes after the last finished block.
    ``callback(i, records)`` runs after block i is finished (and persisted). ``solve`` defaults to
    :func:`iobs.obs.layer.prune_layer`; ``layer_kwargs`` go to it (per_row, blocksize, percdamp).
    Returns one record per layer: name, block, shape, sparsity, zeros, error, rel_error, damping, seconds.
    """
    from tqdm.auto import tqdm

    from iobs.prune.checkpoint import WalkState

    if sequential not in ("block", "true"):
        raise ValueError(f"sequential must be 'block' or 'true', got {sequential!r}")
    solve = solve or _default_solve()
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(emb, "num_embeddings", None)
    calib_ids = check_calibration(calib_ids, vocab)
    path, blocks = find_blocks(model)
    dev = resolve_device(device)
    all_layers = find_layers(model, include, exclude)
    block_layers = [
        {n: m for n, m in all_layers.items() if n.startswith(f"{path}.{i}.")} for i in range(len(blocks))
    ]
    if not any(block_layers):
        raise ValueError(f"no prunable layer inside {path}.* matches include={include} exclude={exclude}")
    names = [n for bl in block_layers for n in bl]

    state = None
    if state_dir is not None:
        fp = _fingerprint(state_key, calib_ids, method, sparsity, pattern, sequential, layer_kwargs, names)
        state = WalkState(state_dir, fp)

    was_training = model.training
    model.eval()
    home = next(model.parameters()).device
    inside = _module_set(blocks)
    if dev != home:
        if offload:
            _move_outside(model, inside, dev)
        else:
            model.to(dev)
    records: list[dict] = []
    try:
        t0 = time.perf_counter()
        inputs = capture_block_inputs(model, blocks, calib_ids, dev)
        log.info("captured block inputs of %d samples in %.1fs", len(inputs), time.perf_counter() - t0)
        done = 0
        if state is not None:
            done, records = state.load()
            if done:
                log.info("resuming from %s: %d of %d blocks already pruned", state.path, done, len(blocks))
        bar = tqdm(total=len(blocks), desc="pruning blocks", disable=not progress, initial=done, leave=False)
        with torch.no_grad():
            for i, block in enumerate(blocks):
                if dev != home and offload:
                    block.to(dev)
                if i < done:
                    state.load_block(i, block_layers[i])
                else:
                    recs = _prune_block(
                        block,
                        i,
                        block_layers[i],
                        inputs,
                        method,
                        sparsity,
                        pattern,
                        sequential,
                        solve,
                        hessian_dtype,
                        layer_kwargs,
                    )
                    records.extend(recs)
                # the pruned block's outputs are the next block's inputs (none after the last block)
                for j in range(len(inputs) if i < len(blocks) - 1 else 0):
                    inputs.hidden[j] = inputs.call(block, j, i)
                if dev != home and offload:
                    block.to(home)
                if i >= done:
                    if state is not None:
                        state.save_block(i, block_layers[i], records)
                    bar.update(1)
                    if callback is not None:
                        callback(i, [r for r in records if r["block"] == i])
        bar.close()
    finally:
        if dev != home:
            if offload:
                _move_outside(model, inside, home)
                blocks.to(home)
            else:
                model.to(home)
        model.train(was_training)
    return records


def _prune_block(
    block, i, layers, inputs, method, sparsity, pattern, sequential, solve, hdtype, layer_kwargs
):
    if not layers:
        return []
    if sequential == "true":
        groups, single = execution_groups(lambda: inputs.call(block, 0, i), layers)
    else:
        groups, single = [list(layers)], True
    records = []
    for gi, group in enumerate(groups):
        sub = {n: layers[n] for n in group}
        t0 = time.perf_counter()
        with accumulate_hessians(sub, hdtype) as acc:
            for j in range(len(inputs)):
                with _StopAfter(sub[group[-1]] if single and sequential == "true" else None):
                    _call(lambda j=j: inputs.call(block, j, i))
        hs = time.perf_counter() - t0
        extra = {"block": i, "group": gi, "hessian_seconds": hs / len(group)}
        records += _solve_group(sub, acc, method, sparsity, pattern, solve, layer_kwargs, extra)
    return records


# ----------------------------------------------------------------------------------------------------
# generic walk


def _forward(model: nn.Module, batch):
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _to(batch, device):
    if torch.is_tensor(batch):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def prune_module(
    model: nn.Module,
    calib_batches: Sequence,
    method: str = "sparsegpt",
    sparsity: float | None = 0.5,
    pattern: str | None = None,
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    skip_grouped: bool = True,
    progress: bool = True,
    device=None,
    callback: Callable[[int, list[dict]], None] | None = None,
    solve: Callable | None = None,
    hessian_dtype: torch.dtype | None = None,
    **layer_kwargs,
) -> list[dict]:
    """Prune the Linear / Conv1D / Conv2d layers of any module in forward order, in place.

    ``calib_batches``: a non-empty sequence of model inputs (a tensor, a tuple of positional inputs or a
    dict of keyword inputs). Layers that receive the same input tensor form a group and share one pass;
    each group's H comes from re-running the model (stopped after the group) with every earlier group
    already pruned. ``callback(g, records)`` runs after group g. Returns one record per layer.
    """
    from tqdm.auto import tqdm

    solve = solve or _default_solve()
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
    batches = [_to(b, dev) for b in batches]
    records: list[dict] = []
    try:
        groups, single = execution_groups(lambda: _forward(model, batches[0]), layers)
        with torch.no_grad():
            for gi, group in enumerate(
                tqdm(groups, desc="pruning layers", disable=not progress, leave=False)
            ):
                sub = {n: layers[n] for n in group}
                t0 = time.perf_counter()
                with accumulate_hessians(sub, hessian_dtype) as acc:
                    for b in batches:  # group[-1] is the group's last layer to run
                        with _StopAfter(sub[group[-1]] if single else None):
                            _call(lambda b=b: _forward(model, b))
                hs = time.perf_counter() - t0
                extra = {"block": gi, "group": gi, "hessian_seconds": hs / len(group)}
                recs = _solve_group(sub, acc, method, sparsity, pattern, solve, layer_kwargs, extra)
                records += recs
                if callback is not None:
                    callback(gi, recs)
    finally:
        model.to(home)
        model.train(was_training)
    return records
