"""Hugging Face image classifiers and image folders, for pruning real vision transformers (e.g. DeiT).

``load_classifier(name_or_path)``: an ``AutoModelForImageClassification`` and its ``AutoImageProcessor``
from a local ``save_pretrained`` folder or a hub id ``org/name`` (the hub needs network access).

``read_image_folder(root)``: ``root/<class>/<image>`` with image files ``.png .jpg .jpeg .bmp .gif .webp``
(read with PIL; no torchvision). Labels: when every class folder name is a key of the model's
``config.label2id`` the label is ``label2id[name]``; otherwise classes are numbered in sorted folder order
(for ImageNet's WordNet-id folders that is the standard class index). ``split_image_folder`` cuts every
class into validation / test / calibration parts with a seeded permutation of its sorted files, so the
split depends only on (folder contents, fractions, seed). ``pixel_values`` turns a list of files into the
(N, C, H, W) tensor the processor produces.

``PRUNABLE``: the Linear layers inside the transformer blocks of ViT / DeiT / BEiT-style models, in both
transformers layouts: 5.x ``<vit|deit>.layers.N.attention.{q,k,v,o}_proj`` and ``mlp.fc1/fc2``;
4.x ``<vit|deit>.encoder.layer.N.attention.attention.{query,key,value}``, ``attention.output.dense``,
``intermediate.dense`` and ``output.dense``. Patch embedding and classifier heads stay dense.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
PRUNABLE = (r"re:(encoder\.layer|layers)\.\d+\.",)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def load_classifier(name_or_path, device="cpu"):
    """``(model in eval mode, image processor)`` for a local checkpoint folder or a hub id ``org/name``."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    name = os.fspath(name_or_path) if isinstance(name_or_path, os.PathLike) else name_or_path
    if not isinstance(name, str) or not name:
        raise TypeError(f"--model must be a checkpoint folder or a hub id 'org/name', got {name_or_path!r}")
    path = Path(name).expanduser()
    allowed = (
        "a local folder written by save_pretrained (config.json, weights and preprocessor_config.json) "
        "or a Hugging Face hub id 'org/name' such as facebook/deit-tiny-patch16-224 (needs network)"
    )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"--model folder {name!r} has no config.json; expected {allowed}")
        source = str(path)
    elif path.exists():
        raise ValueError(f"--model {name!r} is a file; expected {allowed}")
    elif _HUB_ID.match(name) and not name.startswith((".", "~")):
        source = name
    else:
        raise ValueError(f"--model {name!r} is neither an existing folder nor a hub id; expected {allowed}")
    try:
        model = AutoModelForImageClassification.from_pretrained(source)
        processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"could not load --model {name!r} as an image classifier ({allowed}): {e}") from e
    return model.to(device).eval(), processor


@dataclass
class ImageFolder:
    """Image ``files`` with integer ``labels`` (N,), the class ``names`` (index = label) and how labels
    were assigned (``mapping``: "label2id" or "sorted")."""

    files: list[Path]
    labels: torch.Tensor
    names: list[str]
    mapping: str

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, idx) -> ImageFolder:
        idx = [int(i) for i in idx]
        return ImageFolder([self.files[i] for i in idx], self.labels[idx], self.names, self.mapping)


def read_image_folder(root, label2id: dict | None = None, num_labels: int | None = None) -> ImageFolder:
    """Files of ``root/<class>/*`` sorted by (class, file name), labelled as described in the module doc.

    ``num_labels`` (the model's output size) bounds the labels: a folder with more classes than the model
    has outputs is an error.
    """
    if root is None:
        raise ValueError("--images must be a folder root/<class>/<image files>, got None")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"--images folder {str(root)!r} does not exist (expected root/<class>/<images>)"
        )
    classes: dict[str, list[Path]] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            classes[d.name] = files
    if not classes:
        raise ValueError(
            f"--images folder {str(root)!r} holds no images: expected class subfolders with "
            f"{', '.join(IMAGE_SUFFIXES)} files (root/<class>/<image>)"
        )
    names = list(classes)
    if label2id and all(n in label2id for n in names):
        ids = {n: int(label2id[n]) for n in names}
        mapping = "label2id"
    else:
        ids = {n: i for i, n in enumerate(names)}
        mapping = "sorted"
    if num_labels is not None:
        bad = {n: i for n, i in ids.items() if not 0 <= i < num_labels}
        if bad:
            raise ValueError(
                f"--images: labels must lie in [0, {num_labels}) for a {num_labels}-class model, but class "
                f"folders {sorted(bad)[:5]} get labels {sorted(bad.values())[:5]} ({len(names)} classes, "
                f"{mapping} order); use a model with enough outputs or fewer class folders"
            )
    files = [f for n in names for f in classes[n]]
    labels = torch.tensor([ids[n] for n in names for _ in classes[n]], dtype=torch.long)
    by_label = [""] * (max(ids.values()) + 1)
    for n, i in ids.items():
        by_label[i] = n
    return ImageFolder(files, labels, by_label, mapping)


def split_image_folder(
    folder: ImageFolder, val_fraction: float = 0.2, test_fraction: float = 0.4, seed: int = 0
) -> tuple[ImageFolder, ImageFolder, ImageFolder]:
    """(calibration, validation, test), disjoint: in every class round(f·n) images go to each held-out part
    after a permutation seeded with ``seed``; the rest is the calibration pool. Every part must be non-empty.
    """
    for name, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < float(f) < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1, got {val_fraction + test_fraction}")
    gen = torch.Generator().manual_seed(seed)
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for c in torch.unique(folder.labels).tolist():
        idx = torch.nonzero(folder.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)].tolist()
        n_val, n_test = round(val_fraction * len(idx)), round(test_fraction * len(idx))
        parts[1].extend(idx[:n_val])
        parts[2].extend(idx[n_val : n_val + n_test])
        parts[0].extend(idx[n_val + n_test :])
    for name, p in zip(("calibration", "validation", "test"), parts):
        if not p:
            raise ValueError(
                f"--images: the {name} split is empty ({len(folder)} images, val_fraction {val_fraction}, "
                f"test_fraction {test_fraction}); add images or change the fractions"
            )
    return tuple(folder.subset(sorted(p)) for p in parts)


def pixel_values(processor, files, num_channels: int = 3, batch_size: int = 64) -> torch.Tensor:
    """(N, C, H, W) float32: each file opened with PIL, converted to RGB (or L when ``num_channels`` is 1)
    and passed through ``processor`` (resize, rescale, normalise)."""
    from PIL import Image

    mode = "L" if num_channels == 1 else "RGB"
    out = []
    for i in range(0, len(files), batch_size):
        images = []
        for f in files[i : i + batch_size]:
            with Image.open(f) as im:
                images.append(im.convert(mode))
        out.append(processor(images=images, return_tensors="pt")["pixel_values"].float())
    if not out:
        raise ValueError("pixel_values needs at least one image file")
    return torch.cat(out)
