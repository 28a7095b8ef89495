"""Tiny random decoder-only LMs built offline from transformers configs (for tests and quick runs).

``tiny_model("llama")`` etc.: 2 blocks, hidden 32, MLP 64, 4 heads, a 264-token vocabulary (the 256
bytes of :func:`tiny_tokenizer` plus specials), random weights from a fixed seed. Names
``tiny-llama``, ``tiny-opt``, ``tiny-gpt2``, ``tiny-qwen2``, ``tiny-phi`` are accepted by
:func:`load_tiny` (and so by :func:`iobs.models.load_model`).
"""

from __future__ import annotations

import torch

ARCHS = ("llama", "opt", "gpt2", "qwen2", "phi")
VOCAB = 264  # 256 byte tokens + <|endoftext|>, padded to a multiple of 8
EOS = "<|endoftext|>"


def tiny_config(
    arch: str,
    *,
    hidden: int = 32,
    intermediate: int | None = None,
    layers: int = 2,
    heads: int = 4,
    vocab: int = VOCAB,
    positions: int = 256,
    **extra,
):
    """A transformers config for a tiny model of architecture ``arch`` (one of :data:`ARCHS`); ``extra``
    goes to the config class (e.g. ``use_sliding_window=True`` for qwen2)."""
    import transformers as tf

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    inter = intermediate or 2 * hidden
    common = {"vocab_size": vocab, "bos_token_id": 256, "eos_token_id": 256, "pad_token_id": None, **extra}
    base = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": positions,
    }
    shape = {**base, "intermediate_size": inter}
    gqa = {**shape, "num_key_value_heads": max(1, heads // 2)}
    gpt2 = {"n_embd": hidden, "n_inner": inter, "n_layer": layers, "n_head": heads, "n_positions": positions}
    cls, kw = {
        "llama": (tf.LlamaConfig, {**gqa, "tie_word_embeddings": True}),
        "qwen2": (tf.Qwen2Config, gqa),
        "phi": (tf.PhiConfig, shape),
        "opt": (tf.OPTConfig, {**base, "ffn_dim": inter, "word_embed_proj_dim": hidden}),
        "gpt2": (tf.GPT2Config, gpt2),
    }[arch]
    return cls(**kw, **common)


def tiny_model(arch: str = "llama", *, seed: int = 0, dtype: torch.dtype = torch.float32, **config_kwargs):
    """A randomly initialised causal LM (eval mode, eager-free default attention) from :func:`tiny_config`."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, **config_kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.to(dtype).eval()


def tiny_tokenizer():
    """Byte-level tokenizer (id = byte value, 256 = <|endoftext|>) built offline; has save_pretrained."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # order the 256 byte symbols by byte value so that id == byte
    byte_to_char = _bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    assert set(vocab) == set(alphabet)
    vocab[EOS] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=None, model_max_length=10**6
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the ByteLevel alphabet)."""
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, (chr(c) for c in chars)))


def load_tiny(name: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """(model, tokenizer) for ``tiny-<arch>``."""
    arch = name.removeprefix("tiny-")
    if not name.startswith("tiny-") or arch not in ARCHS:
        raise ValueError(
            f"tiny model name must be one of {', '.join('tiny-' + a for a in ARCHS)}, got {name!r}"
        )
    return tiny_model(arch, seed=seed, dtype=dtype), tiny_tokenizer()
