"""A compact Transformer through the command line, as a ViT goes: ``attnlab train image`` on a
few CIFAR-10 images (a folder dataset cut from the CIFAR-10 JPEG archive), then ``attnlab
export`` to ``.pt2`` with the run's trained weights. Both ask the model what it can do
(:class:`attnlab.models.capabilities.ImageClassifier`), not its class."""

from __future__ import annotations

import json
import math
import os
import tarfile
from pathlib import Path

import pytest
import torch

from attnlab.export import load_graph
from attnlab.models import create_model
from attnlab.models.capabilities import ImageClassifier, ImageInput
from attnlab.models.registry import probe_model
from conftest import cli


def cifar_folder(root: Path, per_class: int = 4, test_per_class: int = 1) -> Path:
    """DIR/{train,test}/<class>/*.jpg: the first images of each class of CIFAR-10's test archive."""
    archive = Path(os.environ.get("ATTNLAB_DATA", "")) / "cifar10" / "cifar10-jpg-test.tar.gz"
    if not archive.is_file():
        pytest.skip(f"no CIFAR-10 JPEG archive at {archive} (set ATTNLAB_DATA)")
    counts: dict[str, int] = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3:
                continue
            label = parts[1]
            n = counts.get(label, 0)
            if n >= per_class + test_per_class:
                continue
            split = "train" if n < per_class else "test"
            (root / split / label).mkdir(parents=True, exist_ok=True)
            (root / split / label / parts[2]).write_bytes(tar.extractfile(member).read())
            counts[label] = n + 1
            if len(counts) == 10 and all(v == per_class + test_per_class for v in counts.values()):
                break
    assert len(counts) == 10
    return root


def test_image_classifiers_declare_their_images_and_others_do_not():
    assert probe_model("cct_2_3x2_32").image_input == ImageInput(3, (32, 32))
    assert probe_model("vit_digits").image_input == ImageInput(1, (8, 8))
    assert probe_model("resnet_digits").image_input == ImageInput(1, (8, 8))
    assert create_model("vit_digits", dynamic_img_size=True).image_input.multiple_of == 2
    for name in ("lstm_lm_small", "transformer_lm_char", "detr_digits"):
        assert not isinstance(probe_model(name), ImageClassifier)


def test_a_compact_model_trains_through_the_cli_and_exports_like_eager(tmp_path):
    data = cifar_folder(tmp_path / "cifar")
    run = tmp_path / "run"
    code, out, err = cli("train", "image", "--model", "cct_2_3x2_32", "--dataset", f"folder:{data}", "--epochs", "1",
                         "--batch-size", "8", "--threads", "1", "--quiet", "--run-dir", run)
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"][-1]["step"] == 5 and math.isfinite(metrics["epochs"][0]["train_loss"])  # 40 images / 8

    from attnlab import runs

    model = runs.open(run).model
    assert type(model).__name__ == "CompactTransformer" and model.name == "cct_2_3x2_32"
    code, out, err = cli("export", run, "--format", "pt2", "-o", tmp_path / "cct.pt2")
    assert code == 0, err
    assert "images (B, 3, H, W) float32, 32x32, RGB" in out
    graph = load_graph(tmp_path / "cct.pt2")
    torch.manual_seed(0)
    for b in (1, 3):
        x = torch.randn(b, 3, 32, 32)
        with torch.no_grad():
            want = model(x)
        (got,) = graph(x)
        assert got.shape == (b, 10) and (got - want).abs().max().item() < 1e-4


def test_a_compact_model_learns_cifar10_images(tmp_path):
    """Issue 23: CCT-2/3x2 trained briefly on 1,000 CIFAR-10 images (100 per class) learns: its
    training loss falls and it classifies 200 held-out images well above chance (10%)."""
    data = cifar_folder(tmp_path / "cifar", per_class=100, test_per_class=20)
    run = tmp_path / "run"
    code, out, err = cli("train", "image", "--model", "cct_2_3x2_32", "--dataset", f"folder:{data}", "--epochs", "6",
                         "--batch-size", "50", "--lr", "2e-3", "--seed", "0", "--threads", "2", "--quiet", "--run-dir", run)
    assert code == 0, err
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    assert len(epochs) == 6 and epochs[-1]["train_loss"] < epochs[0]["train_loss"] - 0.1
    assert epochs[-1]["val_acc"] > 0.2, epochs[-1]  # chance is 0.1; 200 images put 0.2 far outside its spread
