"""Pictures of Vision Transformers: library functions and the ``attnlab viz`` command."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from attnlab.checkpoints import save_checkpoint
from attnlab.cli.main import main
from attnlab.errors import ConfigError, ShapeError
from attnlab.models import VisionTransformer, ViTConfig, create_model
from attnlab.viz.common import figure_to_png, save_figure
from attnlab.viz.vit import attention_summary, plot_attention, plot_posembed_similarity, posembed_similarity


def small(**kw) -> VisionTransformer:
    base = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=4)
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(**{**base, **kw}), name="small").eval()


def decode(data_or_path) -> Image.Image:
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    im = Image.open(src)
    im.load()
    return im


@pytest.fixture
def rgb_png(tmp_path):
    yy, xx = np.mgrid[0:40, 0:50]
    arr = np.zeros((40, 50, 3), np.uint8)
    arr[..., 2] = 150
    arr[(yy - 20) ** 2 + (xx - 25) ** 2 < 100] = (230, 40, 30)
    path = tmp_path / "disc.png"
    Image.fromarray(arr).save(path)
    return path


# ---------------------------------------------------------------------- library
def test_posembed_similarity_is_cosine_with_unit_diagonal():
    m = small()
    sim = posembed_similarity(m)
    assert sim.shape == (4, 4, 4, 4)
    flat = sim.reshape(16, 16)
    torch.testing.assert_close(flat.diagonal(), torch.ones(16))
    torch.testing.assert_close(flat, flat.T)
    pe = m.pos_embed.weight[0, 1:].detach()
    torch.testing.assert_close(flat[2, 7], torch.nn.functional.cosine_similarity(pe[2], pe[7], dim=0))


def test_sincos_similarity_decays_with_distance():
    sim = posembed_similarity(small(pos_embed="sincos2d", embed_dim=64))
    assert sim[0, 0, 0, 1] > sim[0, 0, 0, 3] and sim[0, 0, 1, 0] > sim[0, 0, 3, 0]


def test_posembed_needs_an_absolute_embedding():
    with pytest.raises(ConfigError, match="no absolute position embedding"):
        plot_posembed_similarity(small(pos_embed="relative"))


def test_plot_posembed_renders_a_png(tmp_path):
    fig = plot_posembed_similarity(small())
    path = save_figure(fig, tmp_path / "sub" / "pe.png", dpi=60)
    im = decode(path)
    assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 300
    assert not list(path.parent.glob(".*tmp"))  # the temporary file is gone


def test_attention_summary_matches_the_model():
    m = small(depth=3)
    img = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    s = attention_summary(m, img, block=1)
    assert s["heads"].shape == (4, 4, 4) and s["rollout"].shape == (4, 4) and s["block"] == 1
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = ((img / 255 - mean) / std)[None]  # ImageNet's statistics: the default of an RGB model
    maps = m.get_attention_maps(x)
    torch.testing.assert_close(s["heads"], maps[1][0, :, 0, 1:].reshape(4, 4, 4))
    torch.testing.assert_close(s["rollout"], m.attention_rollout(maps)[0])
    torch.testing.assert_close(s["probs"], m(x)[0].softmax(-1))
    assert not m.training


def test_attention_summary_keeps_train_mode_and_handles_avg_models():
    m = small(class_token=False, global_pool="avg").train()
    s = attention_summary(m, torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8))
    assert m.training and s["heads"].shape == (4, 4, 4) and s["block"] == 1


@pytest.mark.parametrize("kw", [dict(), dict(in_chans=1, class_token=False, global_pool="avg", num_classes=0)])
def test_plot_attention_renders(kw):
    m = small(**kw)
    img = torch.randint(0, 256, (m.cfg.in_chans, 16, 16), dtype=torch.uint8)
    png = figure_to_png(plot_attention(m, img, class_names=list("abcde")), dpi=50)
    im = decode(png)
    assert im.size[0] > 300 and im.size[1] > 200


def test_attention_summary_wants_a_uint8_image():
    with pytest.raises(ShapeError, match="uint8 image"):
        attention_summary(small(), torch.rand(3, 16, 16))


# ---------------------------------------------------------------------- command line
def test_viz_posembed_cli_with_a_model_name(tmp_path, capsys):
    out = tmp_path / "pe.png"
    assert main(["viz", "posembed", "vit_digits", "-o", str(out), "--dpi", "60"]) == 0
    im = decode(out)
    assert im.format == "PNG" and min(im.size) > 300
    assert "wrote" in capsys.readouterr().out


def test_viz_attention_cli(tmp_path, rgb_png):
    out = tmp_path / "att.png"
    assert main(["viz", "attention", "vit_digits", str(rgb_png), "-o", str(out), "--block", "0", "--dpi", "50"]) == 0
    im = decode(out)
    assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200


def test_viz_cli_from_a_checkpoint_file(tmp_path, rgb_png):
    torch.manual_seed(1)
    model = create_model("vit_digits", depth=2)
    ckpt = save_checkpoint(model, tmp_path / "digits.safetensors")
    out = tmp_path / "att.png"
    assert main(["viz", "attention", str(ckpt), str(rgb_png), "-o", str(out), "--dpi", "50"]) == 0
    assert decode(out).format == "PNG"


def test_viz_bad_image_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "att.png"
    assert main(["viz", "attention", "vit_digits", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attnlab: error: cannot read image") and "\n" not in err
    assert not out.exists()


def test_viz_unknown_model_and_bad_block(tmp_path, rgb_png, capsys):
    assert main(["viz", "posembed", "vit_digit", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "vit_digits" in err and err.count("\n") == 1
    assert main(["viz", "attention", "vit_digits", str(rgb_png), "-o", str(tmp_path / "x.png"), "--block", "7"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_viz_without_picture_prints_usage(capsys):
    assert main(["viz"]) == 2
    out = capsys.readouterr().out
    assert "posembed" in out and "attention" in out
