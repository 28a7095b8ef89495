"""Sparse checkpoints and resume state.

* :func:`save_checkpoint` writes the pruned model (``save_pretrained``, safetensors), its tokenizer and
  report.json into ``OUT.tmp-XXXX`` beside ``OUT`` and renames it into place only when complete; an
  existing ``OUT`` is refused unless ``overwrite`` (then swapped out and removed after the rename).
* :class:`WalkState` persists the weights of every finished decoder block in a state folder next to
  ``OUT`` (named by the configuration hash), so an interrupted walk resumes after its last finished
  block: the stored weights are loaded and the block's activations recomputed.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from iobs.utils import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

REPORT = "report.json"


def check_output_dir(out, overwrite: bool = False) -> Path:
    """Refuse an existing ``out`` unless ``overwrite``; the parent folder must be creatable."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"output directory {str(out)!r} already exists; pass overwrite=True (--overwrite)"
        )
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {str(out)!r} exists and is not a directory")
    return out


def state_dir_for(out, key: str) -> Path:
    """The resume-state folder of a run writing to ``out`` with configuration hash ``key``."""
    out = Path(out)
    return out.with_name(f"{out.name}.state-{key}")


def save_checkpoint(
    model: nn.Module, tokenizer, out, report: dict | None = None, overwrite: bool = False
) -> Path:
    """Atomically write ``model`` (+ ``tokenizer``, + report.json) to the folder ``out``.

    Hugging Face models use ``save_pretrained`` (safetensors, loads back with ``from_pretrained``);
    any other module is written as ``model.safetensors`` (its state dict).
    """
    out = check_output_dir(out, overwrite).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(tmp)
        else:
            from safetensors.torch import save_model

            save_model(model, str(tmp / "model.safetensors"))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if report is not None:
            atomic_write_json(tmp / REPORT, report)
        if out.exists():  # overwrite: swap, then remove the old folder
            old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def peak_memory() -> dict:
    """Peak resident set size of this process (bytes) and, on CUDA, peak allocated device memory."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss *= 1 if sys.platform == "darwin" else 1024  # kilobytes on Linux
    mem = {"max_rss_bytes": int(rss), "cuda_max_allocated_bytes": None}
    if torch.cuda.is_available():
        mem["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return mem


class WalkState:
    """Finished blocks of a model walk on disk: ``state.json`` (fingerprint, blocks done, records) and one
    ``block_NNNNN.safetensors`` per finished block with the pruned layers' weights."""

    MANIFEST = "state.json"

    def __init__(self, path, fingerprint: str):
        self.path = Path(path)
        self.fingerprint = fingerprint

    def load(self) -> tuple[int, list[dict]]:
        """(number of finished blocks, their records); (0, []) when there is no state yet."""
        manifest = self.path / self.MANIFEST
        if not manifest.exists():
            return 0, []
        m = json.loads(manifest.read_text())
        if m.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"resume state {str(self.path)!r} belongs to a different run (fingerprint "
                f"{m.get('fingerprint')} != {self.fingerprint}: other calibration data, model or options); "
                "delete it to start over"
            )
        return int(m["blocks_done"]), list(m["records"])

    def save_block(self, i: int, layers: dict[str, nn.Module], records: list[dict]) -> None:
        from safetensors.torch import save

        self.path.mkdir(parents=True, exist_ok=True)
        tensors = {n: m.weight.detach().to("cpu").contiguous().clone() for n, m in layers.items()}
        atomic_write_bytes(self.path / f"block_{i:05d}.safetensors", save(tensors))
        atomic_write_json(
            self.path / self.MANIFEST,
            {"fingerprint": self.fingerprint, "blocks_done": i + 1, "records": records},
        )

    def load_block(self, i: int, layers: dict[str, nn.Module]) -> None:
        from safetensors.torch import load_file

        tensors = load_file(str(self.path / f"block_{i:05d}.safetensors"))
        if set(tensors) != set(layers):
            raise ValueError(f"resume state block {i} holds {sorted(tensors)}, expected {sorted(layers)}")
        with torch.no_grad():
            for n, m in layers.items():
                m.weight.copy_(tensors[n].to(m.weight.device, m.weight.dtype))
