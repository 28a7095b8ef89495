"""The user cache directory for converted models and prepared text: ``$IOBS_CACHE`` or ``~/.cache/iobs``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$IOBS_CACHE/<parts>`` (default ``~/.cache/iobs``); created on demand."""
    root = os.environ.get("IOBS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "iobs")
    path = Path(root).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
