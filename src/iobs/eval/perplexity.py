"""Perplexity over non-overlapping windows.

The evaluation text is tokenized as one stream and cut into ``W = n_tokens // seqlen`` consecutive,
non-overlapping windows (the tail shorter than ``seqlen`` is dropped; ``max_windows`` keeps the first
windows only, so every model sees the same ones). Within each window every token after the first is
predicted from the tokens before it in that window:

    nll = sum over windows w, positions t = 1..seqlen-1 of -log p(x[w, t] | x[w, :t])
    tokens = W * (seqlen - 1),   ppl = exp(nll / tokens).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from iobs._validate import check_int_range
from iobs.data.calibration import encode
from iobs.data.text import load_text
from iobs.utils import resolve_device


def eval_windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """``(W, seqlen)`` non-overlapping windows of the 1-D ``ids`` (tail dropped, first ``max_windows``)."""
    ids = ids.reshape(-1)
    n_windows = ids.numel() // seqlen
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    if n_windows < 1:
        raise ValueError(
            f"evaluation text has {ids.numel()} tokens, fewer than one window of seqlen={seqlen}"
        )
    return ids[: n_windows * seqlen].reshape(n_windows, seqlen)


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.inference_mode()
def perplexity(
    model,
    tokenizer=None,
    data="wiki-test",
    seqlen: int = 512,
    max_windows: int | None = None,
    device=None,
    progress: bool = True,
    label: str | None = None,
) -> dict:
    """Perplexity of a causal LM (``model(input_ids).logits``) on ``data``.

    ``data``: a corpus name or file path (see ``iobs.data.text.load_text``), a string of text
    (``tokenizer`` needed for both), or a LongTensor of token ids (1-D stream, or already windowed
    ``(W, seqlen)``). ``device``: where the windows go; default: the model's device (the model is not
    moved). ``label`` names ``data`` in the progress bar and the result.
    Returns ``dict(ppl, nll, tokens, windows, seqlen, data)`` with ``nll`` the mean per scored token.
    """
    seqlen = check_int_range("seqlen", seqlen, 2, 10_000_000)
    if max_windows is not None:
        max_windows = check_int_range("max_windows", max_windows, 1, 10_000_000)
    ids, data_label = _token_ids(data, tokenizer, seqlen)
    windows = eval_windows(ids.long(), seqlen, max_windows)
    label = label or data_label
    dev = _model_device(model) if device is None else resolve_device(device)
    nll = _window_nll(model, windows, dev, progress, label)
    tokens = windows.shape[0] * (seqlen - 1)
    mean_nll = nll / tokens
    return {
        "ppl": math.exp(mean_nll),
        "nll": mean_nll,
        "tokens": tokens,
        "windows": int(windows.shape[0]),
        "seqlen": seqlen,
        "data": label,
    }


def _token_ids(data, tokenizer, seqlen: int) -> tuple[torch.Tensor, str]:
    """(token ids, label) of ``data``: a LongTensor as it is, text or a corpus name tokenized."""
    if torch.is_tensor(data):
        if data.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"data token ids must be an integer tensor, got dtype {data.dtype}")
        if data.dim() == 2 and data.shape[1] != seqlen:
            raise ValueError(f"data windows have length {data.shape[1]}, but seqlen={seqlen}")
        return data, "<token ids>"
    if isinstance(data, str):
        if tokenizer is None:
            raise TypeError("tokenizer is required when data is text or a corpus name")
        text, data_label = _resolve_text(data)
        return encode(tokenizer, text), data_label
    raise TypeError(f"data must be a corpus name, a text string or a LongTensor, got {type(data).__name__}")


def _window_nll(model, windows: torch.Tensor, dev, progress: bool, label: str) -> float:
    """Σ over windows of the next-token negative log-likelihood of every token after the first."""
    was_training = model.training
    model.eval()
    nll = 0.0
    it = range(windows.shape[0])
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"ppl {label}", unit="win", leave=False)
    try:
        for i in it:
            x = windows[i : i + 1].to(dev)
            logits = model(x).logits[0, :-1]
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()
            nll += float(F.cross_entropy(logits, x[0, 1:], reduction="sum"))
    finally:
        model.train(was_training)
    return nll


def _resolve_text(data: str) -> tuple[str, str]:
    """A corpus name or an existing file loads that text; any other string with whitespace is the text."""
    from iobs.data.text import CORPORA

    if data in CORPORA or _is_existing_path(data) or not any(c.isspace() for c in data):
        return load_text(data), data
    return data, "<text>"


def _is_existing_path(s: str) -> bool:
    if len(s) > 4096 or "\n" in s:
        return False
    try:
        return Path(s).expanduser().exists()
    except OSError:
        return False
