"""Finding the prunable layers of a model and reading / writing their weights as a matrix W (d_out, d_in).

Prunable: ``nn.Linear`` (W = weight), transformers' ``Conv1D`` of GPT-2 (which stores the weight
transposed, W = weight.T) and ``nn.Conv2d`` with ``groups == 1`` (W = weight.reshape(out, in*kh*kw),
matching the column order of ``F.unfold``). Grouped and depthwise convolutions have one Hessian per
group; they are skipped (logged), as the paper does for MobileNet's depthwise layers.

Patterns select modules by their dotted name: a glob (``*.q_proj``, ``model.layers.0.*``) or, with the
prefix ``re:``, a regular expression searched in the name (``re:mlp\\.(up|gate)_proj$``).
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)

# Excluded unless the caller passes its own ``exclude``: output heads tied to or as large as the
# embeddings (embeddings themselves are nn.Embedding, never prunable here).
DEFAULT_EXCLUDE = ("lm_head", "*.lm_head", "embed_out", "*.embed_out")


def _is_conv1d(module: nn.Module) -> bool:
    """transformers.pytorch_utils.Conv1D (GPT-2): y = x @ weight + bias with weight (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "weight")


def is_prunable(module: nn.Module) -> bool:
    """Linear, GPT-2 Conv1D, or a Conv2d (any groups; see :func:`is_grouped_conv`)."""
    return isinstance(module, (nn.Linear, nn.Conv2d)) or _is_conv1d(module)


def is_grouped_conv(module: nn.Module) -> bool:
    """Conv2d with groups > 1 (depthwise when groups == in_channels)."""
    return isinstance(module, nn.Conv2d) and module.groups > 1


def _compile(pattern: str):
    if not isinstance(pattern, str) or not pattern:
        raise TypeError(f"layer patterns must be non-empty strings, got {pattern!r}")
    if pattern.startswith("re:"):
        try:
            rx = re.compile(pattern[3:])
        except re.error as e:
            raise ValueError(f"layer pattern {pattern!r} is not a valid regular expression: {e}") from None
        return lambda name: rx.search(name) is not None
    return lambda name: fnmatch.fnmatchcase(name, pattern)


def match_any(name: str, patterns: Iterable[str]) -> bool:
    """True when a pattern matches ``name`` or one of its ancestors ('model.layers.0' selects the block)."""
    parts = name.split(".")
    candidates = [".".join(parts[:k]) for k in range(len(parts), 0, -1)]
    return any(_compile(p)(c) for p in patterns for c in candidates)


def find_layers(
    model: nn.Module,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    *,
    prefix: str = "",
    skip_grouped: bool = True,
    default_exclude: bool = True,
    strict: bool = True,
) -> dict[str, nn.Module]:
    """Prunable modules of ``model`` by dotted name, in definition order.

    ``include`` (default: all) and ``exclude`` are glob or ``re:`` patterns matched against a layer's
    name or any of its ancestors (``*.mlp`` selects every layer inside an MLP); :data:`DEFAULT_EXCLUDE`
    (output heads) is added to ``exclude`` unless ``default_exclude=False``. With ``strict``, a pattern
    that selects no prunable layer is an error (a typo would otherwise silently prune everything or
    nothing). Grouped / depthwise convolutions are skipped when ``skip_grouped`` (the default) and an
    error otherwise.
    """
    include = list(include) if include else None
    user_exclude = list(exclude or [])
    user_patterns = (include or []) + user_exclude
    exclude = user_exclude + (list(DEFAULT_EXCLUDE) if default_exclude else [])
    for p in user_patterns:
        _compile(p)
    prunable = []
    found: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        full = f"{prefix}{name}" if name else prefix.rstrip(".")
        if not is_prunable(module):
            continue
        prunable.append(full)
        if include is not None and not match_any(full, include):
            continue
        if match_any(full, exclude):
            continue
        if is_grouped_conv(module):
            if skip_grouped:
                log.info("skipping grouped convolution %s (groups=%d)", full, module.groups)
                continue
            raise ValueError(
                f"layer {full} is a grouped convolution (groups={module.groups}); only groups=1 is "
                "supported: exclude it or pass skip_grouped=True"
            )
        found[full] = module
    if strict:
        for p in user_patterns:
            if not any(match_any(n, [p]) for n in prunable):
                raise ValueError(
                    f"layer pattern {p!r} matches no prunable layer (Linear, Conv1D, Conv2d) nor a module "
                    f"containing one; layer names look like {prunable[:3]!r} (globs such as '*.q_proj', "
                    "'*.mlp', or 're:' + a regular expression)"
                )
    return found


def get_weight(module: nn.Module) -> torch.Tensor:
    """The weight as the matrix W (d_out, d_in) that the layer Hessian H (d_in, d_in) refers to (a copy-free
    view where possible; write back with :func:`set_weight`)."""
    w = module.weight
    if isinstance(module, nn.Conv2d):
        return w.detach().reshape(w.shape[0], -1)
    if _is_conv1d(module):
        return w.detach().t()
    if isinstance(module, nn.Linear):
        return w.detach()
    raise TypeError(f"not a prunable layer: {type(module).__name__}")


def set_weight(module: nn.Module, W: torch.Tensor) -> None:
    """Write W (d_out, d_in) back in place (keeps tied parameters tied)."""
    w = module.weight
    with torch.no_grad():
        if isinstance(module, nn.Conv2d):
            w.copy_(W.reshape(w.shape).to(w.dtype))
        elif _is_conv1d(module):
            w.copy_(W.t().to(w.dtype))
        elif isinstance(module, nn.Linear):
            w.copy_(W.to(w.dtype))
        else:
            raise TypeError(f"not a prunable layer: {type(module).__name__}")


def in_features(module: nn.Module) -> int:
    """d_in of W: columns of the weight matrix (in * kh * kw for a convolution)."""
    return get_weight(module).shape[1]
