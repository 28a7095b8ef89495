"""Prune a plain Hugging Face checkpoint with llm-compressor's ``oneshot`` on GIVEN calibration token ids.

Runs inside .venv-peers (``bash benchmarks/peers/setup.sh``), never inside .venv. The calibration ids
are a saved ``(nsamples, seqlen)`` LongTensor (``torch.save``), fed as a DataLoader of single
sequences, so llm-compressor sees exactly the tokens iobs uses. Every Linear inside the decoder
blocks is pruned; ``lm_head`` is ignored (it is tied to the embedding in SmolLM2), matching iobs.
The result is saved as an ordinary dense-format checkpoint (config + tokenizer copied from --model,
weights with their zeros via safetensors) that iobs' ``load_model`` reads, plus iobs_peer_run.json
with the timing of the ``oneshot`` call.

    .venv-peers/bin/python benchmarks/peers/run_llmcompressor.py --model DIR --calib calib.pt \\
        --method sparsegpt|wanda (--sparsity 0.5 | --pattern 2:4) --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="plain checkpoint folder (config.json + safetensors)")
    p.add_argument("--calib", required=True, help="torch.save'd (nsamples, seqlen) LongTensor of token ids")
    p.add_argument("--method", choices=("sparsegpt", "wanda"), required=True)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--sparsity", type=float)
    g.add_argument("--pattern", help="N:M, e.g. 2:4")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    import torch
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(args.model)
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"--out {out} exists; remove it first")
    ids = torch.load(args.calib)
    if ids.dim() != 2:
        raise SystemExit(f"--calib must hold a (nsamples, seqlen) tensor, got shape {tuple(ids.shape)}")
    nsamples, seqlen = ids.shape
    samples = [
        {"input_ids": row[None], "attention_mask": torch.ones(1, seqlen, dtype=torch.long)} for row in ids
    ]
    loader = torch.utils.data.DataLoader(samples, batch_size=None, shuffle=False)

    if args.pattern:
        sparsity, structure = 0.5, args.pattern
        n, m = (int(x) for x in args.pattern.split(":"))
        sparsity = 1 - n / m
    else:
        sparsity, structure = args.sparsity, "0:0"
    cls = SparseGPTModifier if args.method == "sparsegpt" else WandaPruningModifier
    modifier = cls(sparsity=sparsity, mask_structure=structure, targets=["Linear"], ignore=["re:.*lm_head"])

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(src)
    t0 = time.perf_counter()
    model = oneshot(
        model=model,
        tokenizer=tok,
        dataset=loader,
        recipe=modifier,
        num_calibration_samples=nsamples,
        max_seq_length=seqlen,
        shuffle_calibration_samples=False,
    )
    oneshot_s = time.perf_counter() - t0

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "iobs_asset.json":
            shutil.copy2(f, tmp / f.name)
    save_model(model, str(tmp / "model.safetensors"))
    zeros = total = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and not name.endswith("lm_head"):
            zeros += int((mod.weight == 0).sum())
            total += mod.weight.numel()
    meta = {
        "method": args.method,
        "sparsity": sparsity,
        "mask_structure": structure,
        "nsamples": nsamples,
        "seqlen": seqlen,
        "oneshot_s": oneshot_s,
        "linear_zeros": zeros / total,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "pid": os.getpid(),
    }
    try:
        import llmcompressor

        meta["llmcompressor"] = llmcompressor.__version__
    except AttributeError:
        pass
    (tmp / "iobs_peer_run.json").write_text(json.dumps(meta, indent=2))
    os.replace(tmp, out)
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
