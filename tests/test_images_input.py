"""One path from a user's image file to a model: ``predict``, ``viz attention`` and ``viz explore``
read a file the same way (alpha composited on white, the model's channels, resized with one
filter) and normalise it by one rule (:func:`attnlab.data.transforms.choose_normalization`)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.cli.main import main
from attnlab.data import transforms as T
from attnlab.data.images import read_model_images
from attnlab.errors import ConfigError
from attnlab.models import VisionTransformer, ViTConfig, create_model
from attnlab.models.capabilities import IMAGENET_MEAN, IMAGENET_STD

pytestmark = pytest.mark.usefixtures("one_thread")
SRC = Path(__file__).resolve().parents[1] / "src" / "attnlab"


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory) -> Path:
    """A tiny RGB ViT run (its own normalisation, from a folder of colour images), one epoch."""
    tmp = tmp_path_factory.mktemp("rgb_run")
    rng = np.random.default_rng(0)
    for c, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (tmp / "data" / c).mkdir(parents=True)
        for i in range(5):
            arr = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            arr[8:24, 8:24] = colour
            Image.fromarray(arr).save(tmp / "data" / c / f"{i}.png")
    assert main(["train", "image", "--model", "vit_cifar", "--dataset", f"folder:{tmp / 'data'}", "--model-arg",
                 "embed_dim=16", "--model-arg", "depth=1", "--model-arg", "num_heads=2", "--batch-size", "8",
                 "--epochs", "1", "--threads", "1", "--quiet", "--run-dir", str(tmp / "run")]) == 0
    return tmp / "run"


def transparent_png(path: Path, colour: bool) -> Path:
    """48x40 RGBA: a fully transparent background whose hidden colour is black, an opaque mark
    and a half-transparent band (what 'white on black' got wrong)."""
    arr = np.zeros((40, 48, 4), np.uint8)
    arr[4:20, 12:36] = (220, 60, 20, 255) if colour else (90, 90, 90, 255)
    arr[24:, :] = (0, 0, 0, 128)
    Image.fromarray(arr, "RGBA").save(path)
    return path


@pytest.fixture
def model_inputs(monkeypatch) -> list[torch.Tensor]:
    """Every image batch a Vision Transformer is given while the test runs (its eq. 1 input)."""
    seen: list[torch.Tensor] = []
    embed = VisionTransformer.embed

    def recording(self, x):
        seen.append(x.detach().clone())
        return embed(self, x)

    monkeypatch.setattr(VisionTransformer, "embed", recording)
    return seen


def test_predict_viz_and_explore_give_a_model_the_same_tensor(rgb_run, tmp_path, model_inputs, capsys):
    png = transparent_png(tmp_path / "mark.png", colour=True)
    white = tmp_path / "white.png"
    Image.new("RGB", (48, 40), (255, 255, 255)).save(white)
    assert main(["predict", str(rgb_run), str(png), str(white)]) == 0
    assert main(["viz", "attention", str(rgb_run), str(png), "-o", str(tmp_path / "a.png"), "--dpi", "40"]) == 0
    assert main(["viz", "explore", str(rgb_run), str(png), "-o", str(tmp_path / "e.html")]) == 0
    capsys.readouterr()
    predicted, drawn, explored = model_inputs
    assert predicted.shape == (2, 3, 32, 32)
    assert torch.equal(predicted[:1], drawn) and torch.equal(predicted[:1], explored)
    assert torch.equal(predicted[0, :, 0, 0], predicted[1, :, 0, 0])  # the transparent corner reads white


@pytest.mark.parametrize("colour, in_chans", [(True, 3), (False, 1)])
def test_transparency_is_composited_on_white(tmp_path, colour, in_chans):
    model = VisionTransformer(ViTConfig(img_size=16, patch_size=4, in_chans=in_chans, num_classes=2, embed_dim=16,
                                        depth=1, num_heads=2))
    x = read_model_images([transparent_png(tmp_path / "t.png", colour)], model)[0]  # uint8 (C, 16, 16)
    assert x.shape == (in_chans, 16, 16) and x.dtype == torch.uint8
    assert int(x[:, 0, 0].min()) == 255  # the transparent background
    band = x[:, 13, 8].float()  # black at alpha 128 over white: about half grey
    assert 120 <= float(band.min()) and float(band.max()) <= 135


def test_the_imagenet_constants_exist_once():
    files = {p.relative_to(SRC).as_posix(): p.read_text(encoding="utf-8") for p in SRC.rglob("*.py")}
    for value in ("0.485", "0.229"):
        where = {f: len(re.findall(re.escape(value), t)) for f, t in files.items() if value in t}
        assert where == {"models/capabilities.py": 1}, (value, where)
    from attnlab.viz import explore, vit

    assert vit.default_normalization is T.default_normalization and explore.default_normalization is T.default_normalization


def test_default_and_chosen_normalization():
    rgb = VisionTransformer(ViTConfig(img_size=16, patch_size=4, in_chans=3, num_classes=2, embed_dim=16, depth=1,
                                      num_heads=2))
    grey = VisionTransformer(ViTConfig(img_size=16, patch_size=4, in_chans=1, num_classes=2, embed_dim=16, depth=1,
                                       num_heads=2))
    d = T.default_normalization(rgb)
    assert (tuple(d.mean), tuple(d.std)) == (IMAGENET_MEAN, IMAGENET_STD)
    g = T.default_normalization(grey)
    assert (g.mean, g.std) == ([0.0], [1.0])
    own = T.Normalize([0.5, 0.5, 0.5], [0.2, 0.2, 0.2])
    assert T.choose_normalization(rgb).mean == list(IMAGENET_MEAN)
    assert T.choose_normalization(rgb, own) is own  # a run's own beats the default
    given = T.choose_normalization(rgb, own, mean=[0.1, 0.2, 0.3])  # an option beats both; std then 1
    assert (given.mean, given.std) == ([0.1, 0.2, 0.3], [1.0, 1.0, 1.0])
    with torch.device("meta"):  # a timm name: the values of timm's weights for it (pretrained_cfg), not ImageNet's
        timm_named = create_model("vit_base_patch16_224")
    t = T.default_normalization(timm_named)
    assert (t.mean, t.std) == ([0.5] * 3, [0.5] * 3) == (list(timm_named.pretrained_cfg["mean"]),
                                                         list(timm_named.pretrained_cfg["std"]))
    for mean, std, message in (([0.1], None, "need 3 values"), (None, [0, 1, 1], "positive finite"),
                               ([float("nan")] * 3, None, "finite number")):
        with pytest.raises(ConfigError, match=message):
            T.choose_normalization(rgb, own, mean, std)
