"""Calibration windows: shape, seeding, and provenance (the calibration split only)."""

import pytest
import torch

from iobs.data.calibration import CalibrationStream, calibration_batch, encode, random_ids, sample_windows
from iobs.data.text import load_text


class ByteTokenizer:
    """token id == UTF-8 byte, so windows decode back to exact substrings (and encoding is instant)."""

    def __call__(self, text, **kwargs):
        return {"input_ids": list(text.encode("utf-8"))}


@pytest.fixture(scope="module")
def tok():
    return ByteTokenizer()


def test_shape_dtype_and_seeding(tok, tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("".join(f"sentence number {i} of the calibration text. " for i in range(200)))
    a = calibration_batch(tok, source=str(p), nsamples=5, seqlen=48, seed=0)
    assert a.shape == (5, 48) and a.dtype == torch.long
    assert torch.equal(a, calibration_batch(tok, source=str(p), nsamples=5, seqlen=48, seed=0))
    assert not torch.equal(a, calibration_batch(tok, source=str(p), nsamples=5, seqlen=48, seed=1))
    stream = encode(tok, p.read_text())
    for w in a:  # every window is a contiguous piece of the token stream
        starts = (stream[: stream.numel() - 47] == w[0]).nonzero().flatten().tolist()
        assert any(torch.equal(stream[s : s + 48], w) for s in starts)


def test_stream_batch_1_is_the_one_shot_batch_and_batch_t_the_next_seed(tok, tmp_path):
    """One stream for one-shot and I-OBS: batch(1) = calibration_batch, batch(t) = seed + t - 1,
    the text tokenized once."""
    p = tmp_path / "c.txt"
    p.write_text("".join(f"line {i} of a calibration text. " for i in range(300)))
    calls = []

    class Counting(ByteTokenizer):
        def __call__(self, text, **kwargs):
            calls.append(len(text))
            return super().__call__(text, **kwargs)

    stream = CalibrationStream(Counting(), str(p), nsamples=3, seqlen=40, seed=5)
    assert torch.equal(stream.batch(1), calibration_batch(tok, str(p), 3, 40, seed=5))
    ids = encode(tok, p.read_text())
    for t in (2, 3):
        assert torch.equal(stream.batch(t), sample_windows(ids, 3, 40, seed=5 + t - 1))
    assert len(calls) == 1
    rand = CalibrationStream(None, "random", nsamples=2, seqlen=8, seed=1, vocab_size=50)
    assert torch.equal(rand.batch(2), random_ids(2, 8, 50, seed=2))
    with pytest.raises(ValueError, match="vocab_size"):
        CalibrationStream(None, "random")


def test_windows_come_from_the_calibration_split_only(tok):
    calib, test, val = (load_text(n) for n in ("wiki-calib", "wiki-test", "wiki-val"))
    batch = calibration_batch(tok, source="wiki", nsamples=8, seqlen=256, seed=0)
    assert batch.shape == (8, 256)
    for w in batch:
        piece = bytes(w.tolist()).decode("utf-8", errors="ignore")[8:-8]  # trim cut multi-byte chars
        assert piece in calib
        assert piece not in test and piece not in val


def test_exactly_seqlen_tokens_is_enough_and_shorter_is_an_error(tok):
    ids = torch.arange(10)
    assert torch.equal(sample_windows(ids, 3, 10), ids.expand(3, 10))
    with pytest.raises(ValueError, match="has 10 tokens, fewer than seqlen=11"):
        sample_windows(ids, 1, 11)


def test_too_short_or_empty_text_is_a_clear_error(tok, tmp_path):
    p = tmp_path / "short.txt"
    p.write_text("too short")
    with pytest.raises(ValueError, match=r"short.txt. has 9 tokens, fewer than seqlen=512"):
        calibration_batch(tok, source=str(p))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        calibration_batch(tok, source=str(tmp_path / "empty.txt"))
    with pytest.raises(ValueError, match="nsamples"):
        calibration_batch(tok, source=str(p), nsamples=0)
    with pytest.raises(ValueError, match="unknown text"):
        calibration_batch(tok, source="wikki")


def test_c4_follows_the_peers_document_protocol_offline(tok, monkeypatch):
    from iobs.data import text as T

    docs = ["short doc", "x" * 300, "another short one", "y" * 50 + "z" * 250]
    monkeypatch.setattr(T, "c4_train_documents", lambda: docs)
    batch = calibration_batch(tok, source="c4", nsamples=6, seqlen=100, seed=3)
    assert batch.shape == (6, 100)
    assert torch.equal(batch, calibration_batch(tok, source="c4", nsamples=6, seqlen=100, seed=3))
    for w in batch:  # each window lies inside one long document
        piece = bytes(w.tolist()).decode()
        assert any(piece in d for d in docs if len(d) > 100)


def test_hub_corpora_need_datasets_and_say_so(monkeypatch):
    import sys

    from iobs.data import text as T

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    T._load_named.cache_clear()
    with pytest.raises(ValueError, match="wikitext2.*pip install datasets.*network"):
        load_text("wikitext2")
