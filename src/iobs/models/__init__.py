"""Named offline model assets and loaders for Hugging Face ids and local paths.

``load_model(name_or_path, device="cpu", dtype=torch.float32) -> (model, tokenizer)`` accepts
a name from ``MODELS`` (packaged, offline), a local checkpoint folder (``save_pretrained`` output),
a ``.gguf`` file, or a Hugging Face hub id (needs network; untested offline).
"""

from iobs.models.loader import MODELS, ModelAsset, load_model

__all__ = ["MODELS", "ModelAsset", "load_model"]
