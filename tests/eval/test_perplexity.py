"""perplexity() == exp(mean NLL) recomputed by hand over the same non-overlapping windows."""

import math

import pytest
import torch

from iobs.eval.perplexity import eval_windows, perplexity
from iobs.models.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", seed=3, dtype=torch.float64)


def _hand_nll(model, ids, seqlen, max_windows=None):
    """Sum of -log p over every token after the first of each full window, and the count."""
    n_windows = ids.numel() // seqlen
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    total, count = 0.0, 0
    with torch.no_grad():
        for w in range(n_windows):
            x = ids[w * seqlen : (w + 1) * seqlen]
            logp = torch.log_softmax(model(x[None]).logits[0].double(), dim=-1)
            for t in range(1, seqlen):
                total -= float(logp[t - 1, x[t]])
                count += 1
    return total, count


def test_ppl_equals_exp_mean_nll_by_hand(model):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 256, (16 * 5 + 7,), generator=g)  # 5 full windows + a dropped tail
    out = perplexity(model, data=ids, seqlen=16, progress=False)
    total, count = _hand_nll(model, ids, 16)
    assert out["windows"] == 5 and out["tokens"] == count == 5 * 15 and out["seqlen"] == 16
    assert out["nll"] == pytest.approx(total / count, rel=1e-10)
    assert out["ppl"] == pytest.approx(math.exp(total / count), rel=1e-10)


def test_max_windows_keeps_the_first_windows_and_matches_hf_loss(model):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (200,), generator=g)
    out = perplexity(model, data=ids, seqlen=20, max_windows=3, progress=False)
    assert out["windows"] == 3 and out["tokens"] == 3 * 19
    # independent check: the model's own shifted cross-entropy (labels=inputs), averaged over windows
    with torch.no_grad():
        losses = [float(model(w[None], labels=w[None]).loss) for w in ids[:60].reshape(3, 20)]
    # (transformers computes that loss in float32, hence the looser tolerance)
    assert out["ppl"] == pytest.approx(math.exp(sum(losses) / 3), rel=1e-6)
    assert out["ppl"] == pytest.approx(math.exp(_hand_nll(model, ids, 20, max_windows=3)[0] / 57), rel=1e-10)


def test_text_and_windowed_ids_give_the_same_result(model):
    tok = tiny_tokenizer()
    text = "The aardvark is a medium-sized, burrowing, nocturnal mammal native to Africa. " * 3
    ids = torch.tensor(tok(text)["input_ids"])
    a = perplexity(model, tok, data=text, seqlen=32, progress=False)
    b = perplexity(model, data=eval_windows(ids, 32), seqlen=32, progress=False)
    assert a["data"] == "<text>" and a["windows"] == len(ids) // 32
    assert a["ppl"] == pytest.approx(b["ppl"], rel=1e-12) and a["tokens"] == b["tokens"]


def test_text_file_by_path(model, tmp_path):
    tok = tiny_tokenizer()
    path = tmp_path / "t.txt"
    path.write_text("some text about pruning neural networks. " * 4)
    out = perplexity(model, tok, data=str(path), seqlen=40, progress=False)
    assert out["data"] == str(path) and out["windows"] == len(path.read_bytes()) // 40


def test_bad_input(model):
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match="fewer than one window of seqlen=64"):
        perplexity(model, data=torch.arange(10), seqlen=64, progress=False)
    with pytest.raises(ValueError, match="seqlen"):
        perplexity(model, data=torch.arange(10), seqlen=1, progress=False)
    with pytest.raises(ValueError, match="unknown text 'no-such-corpus'"):
        perplexity(model, tok, data="no-such-corpus", progress=False)
    with pytest.raises(TypeError, match="integer tensor"):
        perplexity(model, data=torch.rand(40), seqlen=8, progress=False)
    with pytest.raises(TypeError, match="tokenizer is required"):
        perplexity(model, data="some text here", progress=False)


def test_does_not_change_the_model(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    perplexity(model, data=torch.arange(64) % 256, seqlen=16, progress=False)
    assert model.training  # restored
    model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
