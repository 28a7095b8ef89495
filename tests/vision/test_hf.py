"""Hugging Face vision path, offline: a tiny saved ViT, PNG class folders, table1 end to end."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from iobs.reproduce import table1
from iobs.vision.hf import load_classifier, pixel_values, read_image_folder, split_image_folder

LABEL2ID = {"dog": 0, "fox": 1, "cat": 2}  # deliberately not sorted order


def _args(argv):
    p = argparse.ArgumentParser()
    table1.add_arguments(p)
    return p.parse_args(argv)


def _write_images(root, classes, per_class=8, size=(20, 20)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            base = np.zeros((*size, 3), np.uint8)
            base[..., c % 3] = 200  # class-dependent colour plus noise: learnable, not trivial
            img = np.clip(base + rng.integers(0, 56, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"img{i:02d}.png")
    (root / classes[0] / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    from transformers import ViTForImageClassification, ViTImageProcessor

    from iobs.vision.models import vit_config

    torch.manual_seed(0)
    cfg = vit_config(
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
        label2id=LABEL2ID,
        id2label={v: k for k, v in LABEL2ID.items()},
    )
    path = tmp_path_factory.mktemp("model") / "tiny-vit"
    ViTForImageClassification(cfg).save_pretrained(path)
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return _write_images(tmp_path_factory.mktemp("img") / "images", ["cat", "dog", "fox"])


def test_folder_labels_follow_label2id_or_sorted_order(images, tmp_path):
    f = read_image_folder(images, LABEL2ID, 3)
    assert f.mapping == "label2id" and len(f) == 24  # notes.txt is not an image
    for path, y in zip(f.files, f.labels.tolist()):
        assert LABEL2ID[path.parent.name] == y
    assert f.names == ["dog", "fox", "cat"]
    g = read_image_folder(images, {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}, 3)
    assert g.mapping == "sorted"
    assert {p.parent.name: y for p, y in zip(g.files, g.labels.tolist())} == {"cat": 0, "dog": 1, "fox": 2}
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        read_image_folder(images, None, 2)


def test_split_is_disjoint_stratified_and_deterministic(images):
    f = read_image_folder(images, LABEL2ID, 3)
    a = split_image_folder(f, 0.25, 0.25, seed=0)
    b = split_image_folder(f, 0.25, 0.25, seed=0)
    c = split_image_folder(f, 0.25, 0.25, seed=1)
    assert [p.files for p in a] == [p.files for p in b]
    assert [p.files for p in a] != [p.files for p in c]
    sets = [set(p.files) for p in a]
    assert sum(map(len, sets)) == len(f) and len(set.union(*sets)) == len(f)
    for part, n in zip(a, (4, 2, 2)):  # 8 per class: 2 val, 2 test, 4 calibration
        assert torch.bincount(part.labels, minlength=3).tolist() == [n, n, n]
    with pytest.raises(ValueError, match="val_fraction"):
        split_image_folder(f, 0.0, 0.5)
    with pytest.raises(ValueError, match="< 1"):
        split_image_folder(f, 0.5, 0.5)


def test_pixel_values_through_the_processor(tiny_vit, images):
    model, processor = load_classifier(tiny_vit)
    f = read_image_folder(images, model.config.label2id, model.config.num_labels)
    X = pixel_values(processor, f.files[:5], batch_size=2)
    assert X.shape == (5, 3, 16, 16) and X.dtype == torch.float32
    assert float(X.min()) >= -1.0 - 1e-6 and float(X.max()) <= 1.0 + 1e-6  # ViT: mean 0.5, std 0.5
    assert model(X).logits.shape == (5, 3)


def test_table1_on_hf_model_end_to_end(tiny_vit, images, tmp_path):
    out = tmp_path / "t1"
    argv = ["--model", str(tiny_vit), "--images", str(images), "--iterations", "2", "--nsamples", "8"]
    argv += ["--batch-size", "4", "--val-fraction", "0.25", "--test-fraction", "0.25", "--lr", "0.01"]
    argv += ["--device", "cpu", "--out", str(out)]
    assert table1.run(_args(argv)) == 0
    records = json.loads((out / "results.json").read_text())
    assert [r["iteration"] for r in records] == [None, 1, 2]
    for r in records:
        assert set(r) >= {"model", "method", "sparsity", "iteration", "accuracy"}
        assert r["model"] == str(tiny_vit) and 0.0 <= r["accuracy"] <= 1.0
        # 6 test images: accuracy is a multiple of 1/6
        assert abs(6 * r["accuracy"] - round(6 * r["accuracy"])) < 1e-9
    assert records[0]["method"] == "dense" and records[0]["sparsity"] == 0.0
    assert all(r["method"] == "iobs" and r["sparsity"] == 0.5 for r in records[1:])
    assert sum(r["selected"] for r in records) == 1
    report = json.loads((out / "report.json").read_text())
    assert report["reference"]["label_mapping"] == "label2id"
    assert report["reference"]["split"] == {"calibration": 12, "validation": 6, "test": 6}
    layers = report["layer_sparsity"]
    kinds = ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")
    assert sorted(layers) == sorted(
        f"vit.layers.{i}.{'mlp' if k[0] == 'f' else 'attention'}.{k}" for i in range(2) for k in kinds
    )
    assert all(s == 0.5 for s in layers.values())  # exactly floor(0.5 n) zeros, n even
    assert (out / "table1.png").stat().st_size > 5000
    assert "SparseGPT = I-OBS(1)" in (out / "table.md").read_text()


def test_bad_hf_input(tiny_vit, images, tmp_path):
    base = ["--iterations", "1", "--nsamples", "4", "--device", "cpu", "--out", str(tmp_path / "o")]
    with pytest.raises(FileNotFoundError, match="--images folder .* does not exist"):
        table1.run(_args(["--model", str(tiny_vit), "--images", str(tmp_path / "missing"), *base]))
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no images"):
        table1.run(_args(["--model", str(tiny_vit), "--images", str(tmp_path / "empty"), *base]))
    with pytest.raises(ValueError, match="--model .* neither an existing folder nor a hub id"):
        table1.run(_args(["--model", "no-such-model", "--images", str(images), *base]))
    with pytest.raises(ValueError, match="--model folder .* has no config.json"):
        table1.run(_args(["--model", str(images), "--images", str(images), *base]))
    with pytest.raises(ValueError, match="needs --images"):
        table1.run(_args(["--model", str(tiny_vit), *base]))
    with pytest.raises(ValueError, match="no prunable layer left"):
        table1.run(_args(["--model", str(tiny_vit), "--images", str(images), "--exclude", "*", *base]))
    with pytest.raises(ValueError, match="--include/--exclude.*matches no prunable layer"):
        table1.run(_args(["--model", str(tiny_vit), "--images", str(images), "--include", "*.nope", *base]))
    with pytest.raises(ValueError, match="--sparsity must be in"):
        table1.run(_args(["--model", str(tiny_vit), "--images", str(images), "--sparsity", "1", *base]))
    many = _write_images(tmp_path / "many", ["a", "b", "c", "d"], per_class=2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        table1.run(_args(["--model", str(tiny_vit), "--images", str(many), *base]))


@pytest.mark.parametrize("kind", ["vit", "deit", "deit-teacher"])
def test_prunable_layers_are_the_block_linears(kind):
    from transformers import (
        DeiTConfig,
        DeiTForImageClassification,
        DeiTForImageClassificationWithTeacher,
        ViTConfig,
        ViTForImageClassification,
    )

    from iobs.prune.layers import find_layers
    from iobs.vision.hf import PRUNABLE

    kw = dict(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2)
    kw.update(intermediate_size=32, num_labels=3)
    cls, cfg = {
        "vit": (ViTForImageClassification, ViTConfig),
        "deit": (DeiTForImageClassification, DeiTConfig),
        "deit-teacher": (DeiTForImageClassificationWithTeacher, DeiTConfig),
    }[kind]
    model = cls(cfg(**kw))
    names = list(find_layers(model, PRUNABLE))
    every = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(names) == 12 and set(names) < set(every)
    assert {n.rsplit(".", 1)[1] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"}
    assert all("classifier" not in n for n in names)  # heads (and the distillation head) stay dense


def test_hf_caps_take_a_random_subset_across_classes(tiny_vit, images, tmp_path):
    from iobs.reproduce.table1 import _sample

    f = read_image_folder(images, LABEL2ID, 3)  # ordered by class: the first 8 files are one class
    s = _sample(f, 8, seed=0)
    assert len(s) == 8 and len(set(s.labels.tolist())) > 1
    assert s.files == sorted(s.files, key=f.files.index)  # original order kept
    assert _sample(f, 8, seed=0).files == s.files and _sample(f, 100, 0) is f
    out = tmp_path / "o"
    argv = ["--model", str(tiny_vit), "--images", str(images), "--iterations", "1", "--nsamples", "4"]
    argv += ["--val-size", "3", "--test-limit", "4", "--device", "cpu", "--out", str(out)]
    assert table1.run(_args(argv)) == 0
    # default fractions 0.2 / 0.4 of 8 per class: 2 val, 3 test, 3 calibration; then the caps
    assert json.loads((out / "report.json").read_text())["reference"]["split"] == {
        "calibration": 9,
        "validation": 3,
        "test": 4,
    }
