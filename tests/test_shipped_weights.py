"""Weights shipped inside the package (attnlab.checkpoints.shipped, issue 23 point 5): the table
and folder are moved to a temporary directory holding random ``cct_2_3x2_32`` weights, so none
of this needs the real weights; the last tests check the real table and that it ships."""

from __future__ import annotations

import datetime
import fnmatch
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import attnlab
from attnlab.checkpoints import shipped
from attnlab.data.images import read_model_images
from attnlab.data.transforms import choose_normalization
from attnlab.errors import CheckpointError
from attnlab.io import save_safetensors_atomic
from attnlab.models.capabilities import input_stats
from attnlab.models.registry import config_dict, create_model
from conftest import cli

NAME = "cct_2_3x2_32"
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STATS = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616]}  # not ImageNet's: the test sees which is used
REAL_DIR = shipped.WEIGHTS_DIR


@pytest.fixture
def shelf(tmp_path, monkeypatch) -> dict[str, torch.Tensor]:
    """The weights folder moved to ``tmp_path/weights``, shipping random cct_2_3x2_32 weights
    (returned) with their sha256, CIFAR-10's classes and STATS."""
    d = tmp_path / "weights"
    d.mkdir()
    torch.manual_seed(7)
    tensors = {k: v.clone() for k, v in create_model(NAME).state_dict().items()}
    save_safetensors_atomic(tensors, d / f"{NAME}.test.safetensors")
    entry = {"file": f"{NAME}.test.safetensors", "sha256": shipped.sha256_of(d / f"{NAME}.test.safetensors"),
             "task": "image", "labels": CIFAR10, "normalize": STATS}
    (d / shipped.TABLE).write_text(json.dumps({NAME: entry}))
    monkeypatch.setattr(shipped, "WEIGHTS_DIR", d)
    return tensors


def photo(path: Path, seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(path)
    return path


def test_pretrained_gives_exactly_the_shipped_tensors(shelf):
    model = attnlab.create_model(NAME, pretrained=True)
    state = model.state_dict()
    assert state.keys() == shelf.keys()
    for k, t in shelf.items():
        assert torch.equal(state[k], t), k
    assert not torch.equal(attnlab.create_model(NAME).state_dict()["head.weight"], shelf["head.weight"])
    # the model states the normalisation it was trained with, which the one image path uses
    assert input_stats(model) == (tuple(STATS["mean"]), tuple(STATS["std"]))
    norm = choose_normalization(model)
    assert (norm.mean, norm.std) == (STATS["mean"], STATS["std"])
    assert model.pretrained_cfg["label_names"] == CIFAR10 and model.pretrained_cfg["input_size"] == (3, 32, 32)


def test_a_corrupt_file_is_refused_in_one_line(shelf, tmp_path):
    path = shipped.WEIGHTS_DIR / f"{NAME}.test.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="are corrupt: sha256 .* where shipped.json says") as e:
        attnlab.create_model(NAME, pretrained=True)
    assert "\n" not in str(e.value) and "reinstall attnlab" in str(e.value)
    code, out, err = cli("predict", NAME, photo(tmp_path / "a.png"))
    assert code != 0 and out == "" and len(err.strip().splitlines()) == 1 and "are corrupt" in err


@pytest.mark.parametrize("classes", [5, 0])
def test_another_num_classes_gets_a_fresh_head_only(shelf, classes):
    model = attnlab.create_model(NAME, pretrained=True, num_classes=classes)
    state = model.state_dict()
    assert sorted(set(shelf) - set(state)) == ([] if classes else ["head.bias", "head.weight"])
    for k, t in shelf.items():
        if not k.startswith("head."):
            assert torch.equal(state[k], t), k
    if classes:
        assert state["head.weight"].shape == (5, 128)
        assert torch.equal(state["head.bias"], torch.zeros(5))  # the model's own initialisation
        assert 0.01 < float(state["head.weight"].std()) < 0.03
    else:
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 128)


def test_predict_a_shipped_name_labels_with_its_classes(shelf, tmp_path):
    images = [photo(tmp_path / "a.png", 0), photo(tmp_path / "b.jpg", 1)]
    code, out, err = cli("predict", NAME, *images, "--top-k", "3", "--json")
    assert code == 0, err
    preds = json.loads(out)
    # what the shipped model gives, normalised with the statistics it was trained with
    model = attnlab.create_model(NAME, pretrained=True).eval()
    x = read_model_images([str(p) for p in images], model)
    mean, std = torch.tensor(STATS["mean"])[:, None, None], torch.tensor(STATS["std"])[:, None, None]
    with torch.no_grad():
        probs = model((x.float() / 255 - mean) / std).softmax(-1)
    for p, q in zip(preds, probs):
        top = q.topk(3)
        assert [t["label"] for t in p["top"]] == [CIFAR10[int(i)] for i in top.indices]
        np.testing.assert_allclose([t["probability"] for t in p["top"]], top.values.numpy(), atol=2e-6)
    code, out, err = cli("predict", NAME, images[0], "--top-k", "10")
    assert code == 0, err
    assert {line.split()[0] for line in out.splitlines()[1:]} == set(CIFAR10)
    assert "random init" not in out + err


def test_a_name_without_shipped_weights_keeps_its_clear_error(shelf, tmp_path, monkeypatch):
    with pytest.raises(CheckpointError) as e:
        attnlab.create_model("cct_4_3x2_32", pretrained=True)
    assert str(e.value).startswith("create_model('cct_4_3x2_32', pretrained=True): attnlab ships weights only for "
                                   f"{NAME} and downloads nothing; pass checkpoint_path=FILE")
    code, out, err = cli("predict", "cct_4_3x2_32", photo(tmp_path / "a.png"))
    assert code != 0 and "cct_4_3x2_32 is not a directory" in err
    (shipped.WEIGHTS_DIR / shipped.TABLE).write_text("{}")
    with pytest.raises(CheckpointError, match=r"pretrained=True\): attnlab ships no weights and downloads nothing"):
        attnlab.create_model(NAME, pretrained=True)


def fake_run(run_dir: Path, tensors: dict, config: dict, accuracy: float | None) -> Path:
    """A run directory as 'attnlab train image' leaves it (the record fields shipping reads),
    with an 'attnlab eval' of its best checkpoint when ``accuracy`` is given."""
    ck = run_dir / "checkpoints" / "step-0000100"
    ck.mkdir(parents=True)
    save_safetensors_atomic(tensors, ck / "model.safetensors")
    rec = {"format": "attnlab-run/1", "task": "image", "model": {"name": NAME, "config": config},
           "labels": CIFAR10, "normalize": STATS, "augment": {"crop_padding": 4, "flip": True},
           "dataset": {"spec": "cifar10", "name": "cifar10", "train_size": 50000, "val_size": 10000,
                       "val_source": "test split", "image_size": [32, 32], "channels": 3},
           "train_config": {"epochs": 3, "batch_size": 128, "lr": 0.0006, "optimizer": "adamw", "device": "cpu"},
           "metrics": {"val_acc": 0.5}, "epoch": 3, "step": 100, "path": "checkpoints/step-0000100",
           "weights": "model.safetensors"}
    (run_dir / "best.json").write_text(json.dumps(rec))
    (run_dir / "run.json").write_text(json.dumps({"command": ["attnlab", "train", "image", "--model", NAME]}))
    if accuracy is not None:
        (run_dir / "eval" / "cifar10-test").mkdir(parents=True)
        (run_dir / "eval" / "cifar10-test" / "results.json").write_text(json.dumps(
            {"split": "test", "checkpoint": rec["path"], "dataset": "cifar10", "int8": False, "compiled": False,
             "accuracy": accuracy, "images": 10000}))
    return run_dir


def test_ship_run_writes_weights_card_and_entry(shelf, tmp_path):
    torch.manual_seed(3)
    model = create_model(NAME, drop_path_rate=0.2)  # a regularisation rate of its own is no other model
    tensors = model.state_dict()
    run_dir = fake_run(tmp_path / "cct2", tensors, json.loads(json.dumps(config_dict(model))), 0.8312)
    e = shipped.ship_run(run_dir, date=datetime.date(2025, 1, 2))
    assert e["file"] == f"{NAME}.cifar10.safetensors" and shipped.entry(NAME) == e
    assert (e["labels"], e["normalize"], e["task"]) == (CIFAR10, STATS, "image")
    assert e["sha256"] == shipped.sha256_of(shipped.WEIGHTS_DIR / e["file"])
    card = (shipped.WEIGHTS_DIR / f"{NAME}.cifar10.md").read_text()
    for text in ("Test accuracy: 0.8312 on 10000 test images of cifar10", "Command: `attnlab train image --model "
                 f"{NAME}`", "Date: 2025-01-02", "epochs=3, batch_size=128, lr=0.0006, optimizer=adamw", e["sha256"],
                 "airplane, automobile, bird"):
        assert text in card, text
    loaded = attnlab.create_model(NAME, pretrained=True).state_dict()
    assert all(torch.equal(loaded[k], t) for k, t in tensors.items())
    # without an eval, the validation accuracy stands when the validation set is the test split
    (run_dir / "eval" / "cifar10-test" / "results.json").unlink()
    shipped.ship_run(run_dir, weights_name="again", date=datetime.date(2025, 1, 2))
    assert "Test accuracy: 0.5000 (the run's validation accuracy" in (shipped.WEIGHTS_DIR / "again.md").read_text()


def test_ship_run_refuses_a_model_other_than_the_registered_one(shelf, tmp_path):
    model = create_model(NAME, embed_dim=64, num_heads=2)
    run_dir = fake_run(tmp_path / "wide", model.state_dict(), json.loads(json.dumps(config_dict(model))), None)
    before = (shipped.WEIGHTS_DIR / shipped.TABLE).read_text()
    with pytest.raises(CheckpointError, match=r"trained cct_2_3x2_32 with embed_dim=64, which create_model"):
        shipped.ship_run(run_dir)
    assert (shipped.WEIGHTS_DIR / shipped.TABLE).read_text() == before
    assert not list(shipped.WEIGHTS_DIR.glob(f"{NAME}.cifar10.*"))


def test_the_real_table_ships_what_it_names():
    """Every entry of the table in the package: its file is there with the table's sha256, beside
    its card, names a registered model it loads into, and pyproject's package data takes the table,
    the weights and the cards into the wheel."""
    pyprojecttoml = pytest.importorskip("setuptools.config.pyprojecttoml")
    from setuptools.dist import Distribution

    assert shipped.WEIGHTS_DIR == REAL_DIR == Path(attnlab.__file__).parent / "weights"
    table = shipped.table()
    files = [shipped.TABLE]
    for name, e in table.items():
        path = REAL_DIR / e["file"]
        assert path.is_file() and path.suffix == ".safetensors", path
        assert shipped.sha256_of(path) == e["sha256"], name
        assert path.with_suffix(".md").is_file(), name
        assert attnlab.list_models(name) == [name]
        model = attnlab.create_model(name, pretrained=True)
        assert model.pretrained_cfg["label_names"] == e["labels"]
        files += [e["file"], path.with_suffix(".md").name]
    dist = pyprojecttoml.apply_configuration(Distribution(), Path(__file__).resolve().parents[1] / "pyproject.toml")
    patterns = dist.package_data["attnlab"]
    for f in files:
        assert any(fnmatch.fnmatch(f"weights/{f}", p) for p in patterns), f
