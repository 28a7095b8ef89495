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


def calibration_batch(tokenizer, source: str = "wiki", nsamples: int = 32, seqlen: int = 512, seed: int = 0):
    """``(nsamples, seqlen)`` LongTensor of random windows from the calibration text ``source``.

    ``source``: "wiki" (= "wiki-calib", the calibration split of the Wikipedia excerpt), "wikitext2",
    "c4" (their training splits; network), any name of ``iobs.data.text.CORPORA`` or a text file.
    Windows may overlap each other; the same ``seed`` gives the same windows. For C4 the peers'
    protocol is followed instead: each sample is a random window of a random document longer than
    ``seqlen`` tokens.
    """
    nsamples = check_int_range("nsamples", nsamples, 1, 1_000_000)
    seqlen = check_int_range("seqlen", seqlen, 2, 1_000_000)
    seed = check_int_range("seed", seed, 0, 2**63 - 1)
    name = CALIB_SOURCES.get(source, source)
    if name == "c4-train":
        return c4_document_windows(tokenizer, nsamples, seqlen, seed)
    ids = encode(tokenizer, load_text(name))
    return sample_windows(ids, nsamples, seqlen, seed, what=f"calibration text {name!r}")


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
