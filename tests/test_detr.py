"""DETR against its ecosystem twins with identical random weights: Hugging Face
DetrForObjectDetection (both directions of the key map, through from_pretrained) and the
original facebookresearch/detr layout (a transcription of its forward on torchvision's
ResNet-50 and torch's nn.MultiheadAttention). Tolerance: 1e-4 on logits and boxes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.checkpoints import detect_format, load_checkpoint, load_model, save_checkpoint
from attnlab.checkpoints import detr as D
from attnlab.errors import CheckpointError, ConfigError, ShapeError
from attnlab.models import create_model
from attnlab.models.detr import DETR, sine_position_2d
from attnlab.viz.record import AttentionRecorder

TOL = 1e-4
TINY = dict(d_model=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, d_ff=64, num_queries=5, num_classes=3)


def hf_tiny(aux: bool = False):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("timm")  # Hugging Face builds DETR's ResNet-50 through timm
    cfg = transformers.DetrConfig(use_pretrained_backbone=False, d_model=32, encoder_layers=2, decoder_layers=2,
                                  encoder_ffn_dim=64, decoder_ffn_dim=64, encoder_attention_heads=4,
                                  decoder_attention_heads=4, num_queries=5, num_labels=3, auxiliary_loss=aux)
    torch.manual_seed(0)
    hf = transformers.DetrForObjectDetection(cfg).eval()
    randomize(hf)
    return hf


def randomize(model: nn.Module) -> None:
    """Weights far from any init (Hugging Face starts heads and queries near zero, which would hide
    mistakes), and frozen-BN statistics that matter."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "backbone" in n or ".body." in n:
                continue
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.1))
            if "norm" in n and n.endswith("weight"):
                p.add_(1.0)
        for n, b in model.named_buffers():
            if n.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif n.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)


def images_and_mask():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 96, 128, generator=g)
    mask = torch.ones(2, 96, 128, dtype=torch.bool)
    mask[1, :, 100:] = False  # the second image is padded on the right and at the bottom
    mask[1, 70:, :] = False
    return x, mask


def assert_close(out, logits, boxes):
    assert (out["logits"] - logits).abs().max().item() < TOL
    assert (out["boxes"] - boxes).abs().max().item() < TOL


@pytest.mark.slow
def test_hf_to_ours_equal_outputs(one_thread):
    hf = hf_tiny()
    ours = create_model("detr_resnet50", **D.config_from_hf(hf.config.to_dict())).eval()
    report = load_checkpoint(ours, hf.state_dict())  # transformers >= 5 in-memory names
    assert report["format"] == "hf_detr" and report["loaded"] == len(ours.state_dict())
    x, mask = images_and_mask()
    hf.set_attn_implementation("eager")  # the one that returns its attention weights
    with torch.no_grad():
        for m in (None, mask):
            h = hf(pixel_values=x, pixel_mask=None if m is None else m.long(), output_attentions=True)
            assert h.logits.std() > 0.1  # outputs that vary: a wrong key map would show
            with AttentionRecorder(ours) as rec:
                assert_close(ours(x, m), h.logits, h.pred_boxes)
            for i in range(2):  # the recorded attention is Hugging Face's, row for row (padded cells: 0)
                torch.testing.assert_close(rec.maps[f"encoder.{i}.self_attn"][0], h.encoder_attentions[i], atol=TOL, rtol=0)
                torch.testing.assert_close(rec.maps[f"decoder.{i}.cross_attn"][0], h.cross_attentions[i], atol=TOL, rtol=0)


@pytest.mark.slow
def test_ours_to_hf_from_pretrained(tmp_path, one_thread):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("timm")
    torch.manual_seed(3)
    ours = create_model("detr_resnet50", **TINY).eval()
    randomize(ours)
    save_checkpoint(ours, tmp_path / "hf", format="hf_detr")
    hf = transformers.DetrForObjectDetection.from_pretrained(tmp_path / "hf").eval()
    x, mask = images_and_mask()
    with torch.no_grad():
        h = hf(pixel_values=x, pixel_mask=mask.long())
        assert_close(ours(x, mask), h.logits, h.pred_boxes)
    # and back: the directory Hugging Face reads loads into a fresh model with the same outputs
    again = create_model("detr_resnet50", **TINY).eval()
    assert load_checkpoint(again, tmp_path / "hf")["format"] == "hf_detr"  # through the generic loader
    built = load_model(tmp_path / "hf")  # shapes from config.json
    assert built.cfg.num_queries == 5 and built.cfg.num_heads == 4
    with torch.no_grad():
        assert torch.equal(again(x, mask)["logits"], ours(x, mask)["logits"])
        assert torch.equal(built(x, mask)["boxes"], ours(x, mask)["boxes"])


# --- the original facebookresearch/detr layout -------------------------------------------------------

def original_forward(sd: dict, x: torch.Tensor, mask: torch.Tensor, layers: int, heads: int) -> tuple:
    """The original repository's forward (models/detr.py, transformer.py forward_post,
    position_encoding.PositionEmbeddingSine), on its own state-dict names, with torchvision's
    ResNet-50 and torch's nn.MultiheadAttention."""
    import torchvision

    body = torchvision.models.resnet50()
    body.fc = nn.Identity()
    prefix = "backbone.0.body."
    body.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, strict=True)
    body.eval()

    def run_body(t):
        t = body.maxpool(body.relu(body.bn1(body.conv1(t))))
        return body.layer4(body.layer3(body.layer2(body.layer1(t))))

    def mha(name, d):
        m = nn.MultiheadAttention(d, heads)
        m.load_state_dict({k[len(name):]: v for k, v in sd.items() if k.startswith(name)})
        return m.eval()

    def lin(name):
        return lambda t: F.linear(t, sd[name + ".weight"], sd[name + ".bias"])

    def ln(name):
        return lambda t: F.layer_norm(t, t.shape[-1:], sd[name + ".weight"], sd[name + ".bias"])

    f = F.conv2d(run_body(x), sd["input_proj.weight"], sd["input_proj.bias"])
    b, d, h, w = f.shape
    pad = F.interpolate((~mask)[None].float(), size=(h, w))[0].bool()  # True = padding, as the original
    # PositionEmbeddingSine(d/2, normalize=True)
    not_mask = ~pad
    y_embed, x_embed = not_mask.cumsum(1, dtype=torch.float32), not_mask.cumsum(2, dtype=torch.float32)
    y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * 2 * torch.pi
    x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * 2 * torch.pi
    npf = d // 2
    dim_t = torch.arange(npf, dtype=torch.float32)
    dim_t = 10000 ** (2 * (dim_t // 2) / npf)
    pos_x, pos_y = x_embed[:, :, :, None] / dim_t, y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos = torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
    # Transformer: sequence-first (T, B, C)
    src, pos = f.flatten(2).permute(2, 0, 1), pos.flatten(2).permute(2, 0, 1)
    kpm = pad.flatten(1)
    query_pos = sd["query_embed.weight"][:, None].repeat(1, b, 1)
    for i in range(layers):
        p = f"transformer.encoder.layers.{i}."
        q = k = src + pos
        src = ln(p + "norm1")(src + mha(p + "self_attn.", d)(q, k, value=src, key_padding_mask=kpm)[0])
        src = ln(p + "norm2")(src + lin(p + "linear2")(F.relu(lin(p + "linear1")(src))))
    tgt = torch.zeros_like(query_pos)
    for i in range(layers):
        p = f"transformer.decoder.layers.{i}."
        q = k = tgt + query_pos
        tgt = ln(p + "norm1")(tgt + mha(p + "self_attn.", d)(q, k, value=tgt)[0])
        tgt = ln(p + "norm2")(tgt + mha(p + "multihead_attn.", d)(tgt + query_pos, src + pos, value=src,
                                                                   key_padding_mask=kpm)[0])
        tgt = ln(p + "norm3")(tgt + lin(p + "linear2")(F.relu(lin(p + "linear1")(tgt))))
    hs = ln("transformer.decoder.norm")(tgt).transpose(0, 1)  # (B, N, C)
    logits = lin("class_embed")(hs)
    box = F.relu(lin("bbox_embed.layers.0")(hs))
    box = F.relu(lin("bbox_embed.layers.1")(box))
    return logits, lin("bbox_embed.layers.2")(box).sigmoid()


@pytest.mark.slow
def test_original_layout_both_ways(tmp_path, one_thread):
    pytest.importorskip("torchvision")
    torch.manual_seed(4)
    ours = create_model("detr_resnet50", **TINY).eval()
    randomize(ours)
    path = save_checkpoint(ours, tmp_path / "detr-tiny.pth", format="detr")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"model"} and "backbone.0.body.layer4.2.conv3.weight" in raw["model"]
    assert "transformer.decoder.layers.1.multihead_attn.in_proj_weight" in raw["model"]
    x, mask = images_and_mask()
    with torch.no_grad():
        logits, boxes = original_forward(raw["model"], x, mask, layers=2, heads=4)
        assert_close(ours(x, mask), logits, boxes)
        back = create_model("detr_resnet50", **TINY).eval()
        assert load_checkpoint(back, path)["format"] == "detr"
        assert torch.equal(back(x, mask)["boxes"], ours(x, mask)["boxes"])
        built = load_model(path, num_heads=4)  # shapes from the tensors; heads cannot be read off them
        assert built.cfg.num_encoder_layers == 2 and built.cfg.d_ff == 64 and built.cfg.num_classes == 3
        assert torch.equal(built(x, mask)["logits"], ours(x, mask)["logits"])


def test_key_maps_round_trip():
    with torch.device("meta"):
        model = create_model("detr_resnet50", num_encoder_layers=2, num_decoder_layers=2)
    sd = model.state_dict()
    for to, back in ((D.ours_to_hf, D.hf_to_ours), (D.ours_to_original, D.original_to_ours)):
        theirs = to(sd)
        # Hugging Face: q, k, v apart, two more weights and two more biases for each of the 2 + 2 * 2 attentions
        assert len(theirs) == len(sd) + (4 * 6 if to is D.ours_to_hf else 0)
        assert set(back(theirs)) == set(sd)
    assert detect_format(D.ours_to_hf(sd)) == "hf_detr" and detect_format(D.ours_to_original(sd)) == "detr"


def test_load_refuses_wrong_shapes_and_keeps_model():
    torch.manual_seed(0)
    small = create_model("detr_resnet50", **TINY)
    other = create_model("detr_resnet50", **{**TINY, "num_classes": 7})
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match="wrong shapes.*class_embed.weight.*Nothing was loaded"):
        load_checkpoint(other, D.ours_to_hf(small.state_dict()))
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    # fine-tuning on other classes: the class head keeps the model's own weights, the rest is loaded
    report = load_checkpoint(other, D.ours_to_hf(small.state_dict()), new_head="class_embed.")
    assert report["new_head"] == ["class_embed.weight", "class_embed.bias"]
    assert torch.equal(other.class_embed.weight, before["class_embed.weight"])
    assert torch.equal(other.query_embed.weight, small.query_embed.weight)
    with pytest.raises(CheckpointError, match="not a Vision Transformer or DETR checkpoint in a known layout"):
        load_checkpoint(other, {"conv.weight": torch.zeros(1)})


def test_small_model_shapes_and_aux():
    model = create_model("detr_digits")
    assert isinstance(model, DETR) and model.cfg.num_queries == 6
    with AttentionRecorder(model) as rec:  # DETR's attention is recorded as every model's is
        out = model(torch.randn(2, 1, 64, 64))
    assert out["logits"].shape == (2, 6, 11) and out["boxes"].shape == (2, 6, 4)
    assert ((out["boxes"] > 0) & (out["boxes"] < 1)).all()
    assert len(out["aux"]) == model.cfg.num_decoder_layers - 1
    assert out["feature_size"] == (8, 8)
    assert sorted(rec.maps) == sorted(f"{stack}.{i}.{attn}" for i in range(3) for stack, attn in
                                      (("encoder", "self_attn"), ("decoder", "self_attn"), ("decoder", "cross_attn")))
    enc, cross = rec.stacked("encoder."), rec.stacked("cross_attn")  # one (B, H, Tq, Tk) per layer
    assert len(enc) == len(cross) == 3 and enc[0].shape == (2, 4, 64, 64) and cross[-1].shape == (2, 4, 6, 64)
    torch.testing.assert_close(cross[-1].sum(-1), torch.ones(2, 4, 6))
    with pytest.raises(ShapeError, match="takes images"):
        model(torch.randn(2, 3, 64, 64))
    with pytest.raises(ConfigError, match="cnn_widths"):
        create_model("detr_digits", cnn_widths=[30])


def test_sine_position_ignores_padding():
    valid = torch.ones(2, 4, 6, dtype=torch.bool)
    valid[1, :, 3:] = False
    pos = sine_position_2d(valid, 16)
    assert pos.shape == (2, 24, 16)
    # the valid 4x3 block of the padded image is encoded as a whole 4x3 image
    alone = sine_position_2d(torch.ones(1, 4, 3, dtype=torch.bool), 16)
    torch.testing.assert_close(pos[1].view(4, 6, 16)[:, :3].reshape(12, 16), alone[0])
