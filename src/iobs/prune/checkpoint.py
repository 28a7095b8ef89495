"""Sparse checkpoints and resume state.

* :func:`save_checkpoint` writes the pruned model (``save_pretrained``, safetensors), its tokenizer and
  report.json into ``OUT.tmp-XXXX`` beside ``OUT`` and renames it into place only when complete; an
  existing ``OUT`` is refused unless ``overwrite`` (then swapped out and removed after the rename).
* :func:`staged_dir` is that write-then-rename for any folder; :class:`ShardWriter` writes a sharded
  safetensors checkpoint shard by shard (the streaming path, :mod:`iobs.prune.stream`).
* :class:`WalkState` persists the weights of every finished decoder block in a state folder next to
  ``OUT`` (named by the configuration hash), so an interrupted walk resumes after its last finished
  block: the stored weights are loaded and the block's activations recomputed.
"""

from __future__ import annotations

import contextlib
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
    with staged_dir(out, overwrite) as tmp:
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(tmp)
        else:
            from safetensors.torch import save_model

            save_model(model, str(tmp / "model.safetensors"))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if report is not None:
            atomic_write_json(tmp / REPORT, report)
    return Path(out).absolute()


@contextlib.contextmanager
def staged_dir(out, overwrite: bool = False):
    """``with staged_dir(out) as tmp:`` fill ``tmp`` (``OUT.tmp-XXXX`` beside ``out``); on success it is
    renamed to ``out`` (an existing ``out`` only with ``overwrite``: swapped out, then removed), on any
    error removed, so ``out`` never holds a half-written folder."""
    out = check_output_dir(out, overwrite).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
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


class ShardWriter:
    """A sharded safetensors checkpoint written one shard at a time (the layout ``save_pretrained``
    writes and ``from_pretrained`` reads): ``model-0000k-of-0000n.safetensors`` plus
    ``model.safetensors.index.json`` (total size in bytes, parameter count, tensor -> shard map)."""

    INDEX = "model.safetensors.index.json"

    def __init__(self, folder, n_shards: int):
        self.folder, self.n = Path(folder), n_shards
        self.weight_map: dict[str, str] = {}
        self.total_size = self.total_parameters = 0

    def write(self, k: int, tensors: dict[str, torch.Tensor]) -> None:
        """Shard ``k`` (0-based) holding ``tensors`` (copied to the CPU, contiguous)."""
        from safetensors.torch import save_file

        if not 0 <= k < self.n:
            raise ValueError(f"shard index must be in [0, {self.n}), got {k}")
        name = f"model-{k + 1:05d}-of-{self.n:05d}.safetensors"
        tensors = {n: t.detach().to("cpu").contiguous() for n, t in tensors.items()}
        save_file(tensors, str(self.folder / name), metadata={"format": "pt"})
        for n, t in tensors.items():
            self.weight_map[n] = name
            self.total_size += t.numel() * t.element_size()
            self.total_parameters += t.numel()

    def finish(self) -> None:
        """The index json; every shard must have been written."""
        written = set(self.weight_map.values())
        if len(written) != self.n:
            raise RuntimeError(f"sharded checkpoint incomplete: {len(written)} of {self.n} shards written")
        meta = {"total_parameters": self.total_parameters, "total_size": self.total_size}
        atomic_write_json(
            self.folder / self.INDEX, {"metadata": meta, "weight_map": dict(sorted(self.weight_map.items()))}
        )


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
