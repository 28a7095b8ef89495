"""Cache W and H = X Xᵀ of a few SmolLM2 layers from the calibration walk, for benchmarks/layer_solvers.py.

The walk is :func:`iobs.prune.decoder.prune_decoder` with a solver that prunes nothing (sparsity 0) and
records each chosen layer's (W, H): the Hessians of the dense model, block inputs from the dense
upstream blocks (``sequential="block"``). The walk stops after the last chosen block. One file per
calibration draw (seed); H is stored once per input group (q/k/v share one H, gate/up another).

Usage:
    .venv/bin/python benchmarks/layer_hessians.py --seed 0 --blocks 3,15,27 --out benchmarks/cache/h_seed0.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from llm_common import set_threads

from iobs.data.calibration import CalibrationStream
from iobs.models import load_model
from iobs.obs.layer import prune_layer
from iobs.prune.decoder import prune_decoder

LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class _Stop(Exception):
    pass


class Recorder:
    """A no-op layer solver (sparsity 0) that keeps (W, H) of the layers of ``blocks``."""

    method, sparsity, pattern, per_row, blocksize, percdamp = "sparsegpt", 0.0, None, False, 128, 0.01

    def __init__(self, blocks):
        self.blocks, self.out = set(blocks), {}

    def __call__(self, W, H, name):
        parts = name.split(".")
        block = int(parts[parts.index("layers") + 1])
        if block in self.blocks and parts[-1] in LAYERS:
            key = f"{block}.{parts[-1]}"
            same = [k for k, v in self.out.items() if v["H"].shape == H.shape and torch.equal(v["H"], H)]
            self.out[key] = {"W": W.clone(), "H": self.out[same[0]]["H"] if same else H.clone()}
        return prune_layer(W, H, "magnitude", 0.0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blocks", default="3,15,27")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    set_threads(a.threads)
    blocks = [int(b) for b in a.blocks.split(",")]
    model, tok = load_model("smollm2-135m")
    ids = CalibrationStream(tok, "wiki", a.nsamples, a.seqlen, a.seed, model.config.vocab_size).batch(1)
    rec = Recorder(blocks)

    def stop(i, _records):
        if i >= max(blocks):
            raise _Stop

    t0 = time.perf_counter()
    try:
        prune_decoder(model, ids, rec, progress=False, device="cpu", callback=stop)
    except _Stop:
        pass
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"seed": a.seed, "nsamples": a.nsamples, "seqlen": a.seqlen, "calib": "wiki", "blocks": blocks}
    torch.save({"meta": meta, "layers": rec.out}, a.out)
    print(f"saved {len(rec.out)} layers to {a.out} in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
