"""Calibration batches: seeded random token windows from a calibration text.

The source text is tokenized once as a single stream (the tokenizer's default special tokens, as the
peers' WikiText-2 protocol does) and ``nsamples`` windows of ``seqlen`` tokens are cut at start
offsets drawn uniformly from ``[0, n_tokens - seqlen]`` with a seeded generator.
"""

from __future__ import annotations

import torch

from iobs._validate import check_int_range
from iobs.data.text import load_text

# calibration aliases: the training side of each evaluation corpus
CALIB_SOURCES = {"wiki": "wiki-calib", "wikitext2": "wikitext2-train", "c4": "c4-train"}


def encode(tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text`` as one 1-D LongTensor (no length limit, no truncation)."""
    ids = tokenizer(text, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1)


class CalibrationStream:
    """The calibration windows of a run, shared by one-shot pruning and every I-OBS iteration.

    ``batch(t)`` is ``(nsamples, seqlen)`` ids drawn with seed ``seed + t − 1``: ``batch(1)`` is the
    one-shot batch (and I-OBS iteration 1), later iterations draw the next windows of the same source.
    ``source``: "wiki" (= "wiki-calib", the calibration split of the Wikipedia excerpt), "wikitext2",
    "c4" (their training splits; network), any name of ``iobs.data.text.CORPORA``, a text file, or
    "random" (uniform ids below ``vocab_size``, tokenizer-free). A text is tokenized once as one stream
    and windows (which may overlap) start uniformly in ``[0, n_tokens − seqlen]``. For C4 the peers'
    protocol is followed instead: each sample is a random window of a random document longer than
    ``seqlen`` tokens.
    """

    def __init__(self, tokenizer, source="wiki", nsamples=32, seqlen=512, seed=0, vocab_size=None):
        self.nsamples = check_int_range("nsamples", nsamples, 1, 1_000_000)
        self.seqlen = check_int_range("seqlen", seqlen, 2, 1_000_000)
        self.seed = check_int_range("seed", seed, 0, 2**63 - 1)
        if source == "random" and vocab_size is None:
            raise ValueError("calibration source 'random' needs vocab_size (the model's vocabulary)")
        self.tokenizer, self.source, self.vocab_size = tokenizer, source, vocab_size
        self.name = CALIB_SOURCES.get(source, source)
        self._ids: torch.Tensor | None = None

    def batch(self, t: int = 1) -> torch.Tensor:
        """Iteration ``t``'s windows (t = 1: the one-shot batch)."""
        seed = self.seed + check_int_range("t", t, 1, 2**62) - 1
        if self.source == "random":
            return random_ids(self.nsamples, self.seqlen, self.vocab_size, seed)
        if self.name == "c4-train":
            return c4_document_windows(self.tokenizer, self.nsamples, self.seqlen, seed)
        if self._ids is None:
            self._ids = encode(self.tokenizer, load_text(self.name))
        return sample_windows(
            self._ids, self.nsamples, self.seqlen, seed, what=f"calibration text {self.name!r}"
        )


def calibration_batch(tokenizer, source: str = "wiki", nsamples: int = 32, seqlen: int = 512, seed: int = 0):
    """``(nsamples, seqlen)`` LongTensor of random windows from ``source``: :class:`CalibrationStream`'s
    first batch."""
    return CalibrationStream(tokenizer, source, nsamples, seqlen, seed).batch(1)


def random_ids(nsamples: int, seqlen: int, vocab: int = 256, seed: int = 0) -> torch.Tensor:
    """Tokenizer-free calibration: uniform random ids (nsamples, seqlen) from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (nsamples, seqlen), generator=g)


def sample_windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int = 0, what: str = "token stream"):
    """``nsamples`` windows of ``seqlen`` consecutive ids from the 1-D ``ids``, starts drawn with ``seed``."""
    n = ids.numel()
    if n < seqlen:
        raise ValueError(
            f"{what} has {n} tokens, fewer than seqlen={seqlen}; use a longer text or a smaller seqlen"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, n - seqlen + 1, (nsamples,), generator=gen)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


def c4_document_windows(tokenizer, nsamples: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """The peers' C4 calibration: draw a random document until one has more than ``seqlen`` tokens,
    then a random window of it; repeat ``nsamples`` times (network; untested offline)."""
    from iobs.data.text import c4_train_documents

    docs = c4_train_documents()
    gen = torch.Generator().manual_seed(seed)
    out, tries = [], 0
    while len(out) < nsamples:
        tries += 1
        if tries > 1000 * nsamples:
            raise ValueError(f"found only {len(out)} C4 documents longer than seqlen={seqlen} tokens")
        doc = docs[int(torch.randint(0, len(docs), (1,), generator=gen))]
        ids = encode(tokenizer, doc)
        if ids.numel() > seqlen:
            start = int(torch.randint(0, ids.numel() - seqlen, (1,), generator=gen))
            out.append(ids[start : start + seqlen])
    return torch.stack(out)
