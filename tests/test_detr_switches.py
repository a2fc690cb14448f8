"""DETR's small-data switches: query denoising (DN-DETR, ``denoising=True``) and local
cross-attention (Deformable DETR on one level, ``cross_attention="deformable"``), alone and
together; the default DETR is tests/test_detr.py's, exact to Hugging Face."""

import pytest
import torch

from attnlab.checkpoints import load_model, save_checkpoint
from attnlab.detect.denoising import denoising_loss, make_denoising_queries
from attnlab.detect.loss import set_loss
from attnlab.errors import ConfigError, UnsupportedError
from attnlab.models import create_model
from attnlab.models.detr import DeformableDecoderLayer, DetrDecoderLayer
from attnlab.viz.record import AttentionRecorder

SWITCHES = [{"denoising": True}, {"cross_attention": "deformable"}, {"denoising": True, "cross_attention": "deformable"}]
ARMS = ["dn", "deformable", "dn+deformable"]


def tiny(**kw):
    torch.manual_seed(0)
    return create_model("detr_digits", d_model=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=2, d_ff=64,
                        num_queries=5, cnn_widths=(16, 32), **kw)


def targets():
    """Image 0: two objects; image 1: one."""
    return [{"labels": torch.tensor([3, 1]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.1, 0.2]])},
            {"labels": torch.tensor([4]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.3]])}]


def images():
    return torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))


def move_off_init(model):
    """Sampling offsets, attention weights and the box head away from their starting values (the
    offsets start on a ring of whole pixels and the box head at zero), so that mistakes show."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "cross_attn.sampling_offsets" in n or "cross_attn.attention_weights" in n or "bbox_embed" in n:
                p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return model


@pytest.mark.parametrize("switches", [SWITCHES[0], SWITCHES[2]], ids=[ARMS[0], ARMS[2]])
def test_the_denoising_queries_leave_the_matching_part_unchanged(switches):
    """DN-DETR's attention mask: the matching queries see no denoising query, so with them the model
    gives what it gives without them (every decoder layer), and out["dn"] holds the G·M others."""
    model = move_off_init(tiny(**switches)).eval()
    x, t = images(), targets()
    dn = make_denoising_queries(t, 3, 0.4, 0.2, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain, both = model(x), model(x, denoising=dn)
    assert "dn" not in plain and set(both) == set(plain) | {"dn"}
    for a, b in [(plain, both), *zip(plain.get("aux", []), both.get("aux", []))]:  # float rounding only (a leak: ~1e-2)
        torch.testing.assert_close(b["logits"], a["logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(b["boxes"], a["boxes"], atol=1e-5, rtol=0)
    assert both["dn"]["logits"].shape == (2, 6, 11) and both["dn"]["boxes"].shape == (2, 6, 4)
    assert len(both["dn"]["aux"]) == 1


def test_a_denoising_group_sees_only_itself():
    """Group 1's noised boxes move: group 0's outputs stay, group 1's change."""
    model = tiny(denoising=True).eval()
    x, t = images(), targets()
    dn = make_denoising_queries(t, 2, 0.4, 0.0, 10, generator=torch.Generator().manual_seed(0))
    moved = dn.boxes.clone()
    moved[:, 2:] = moved[:, 2:].flip(-1)  # group 1 = entries 2, 3 (M = 2)
    other = type(dn)(moved, dn.labels, dn.valid, dn.target_index, dn.num_groups)
    with torch.no_grad():
        a, b = model(x, denoising=dn)["dn"]["logits"], model(x, denoising=other)["dn"]["logits"]
    torch.testing.assert_close(a[:, :2], b[:, :2], atol=1e-6, rtol=0)
    assert (a[:, 2:] - b[:, 2:]).abs().max() > 1e-3


def test_matching_queries_take_dn_detrs_content():
    """With the switch on the matching queries start from [E(K), 0], not zeros: the 'unknown'
    label's embedding changes their output, any other label's does not."""
    model = tiny(denoising=True).eval()
    x = images()
    with torch.no_grad():
        before = model(x)["logits"]
        model.dn_queries.label_embed.weight[3].add_(1.0)
        torch.testing.assert_close(model(x)["logits"], before, atol=0, rtol=0)
        model.dn_queries.label_embed.weight[10].add_(1.0)  # K = 10: "unknown"
        assert (model(x)["logits"] - before).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="without denoising queries"):
        tiny()(x, denoising=make_denoising_queries(targets(), 1, 0.4, 0.2, 10))


@pytest.mark.parametrize("switches", SWITCHES, ids=ARMS)
def test_training_step_reaches_every_new_parameter(switches):
    model = tiny(**switches).train()
    x, t = images(), targets()
    dn = make_denoising_queries(t, 2, 0.4, 0.2, 10) if switches.get("denoising") else None
    out = model(x, denoising=dn)
    loss = set_loss(out, t)["loss"] + (denoising_loss(out["dn"], dn, t)["loss"] if dn is not None else 0)
    loss.backward()
    new = [n for n, _ in model.named_parameters() if n.startswith(("dn_queries.", "reference_points."))
           or ".cross_attn.sampling_offsets" in n or ".cross_attn.attention_weights" in n]
    assert new and all(model.get_parameter(n).grad is not None and model.get_parameter(n).grad.abs().sum() > 0
                       for n in new), new


def test_deformable_layers_and_their_initialisation():
    """Deformable DETR's init survives DETR's Xavier loop: offsets on the ring, uniform weights; the
    box head starts at zero with size bias -2, so each query's box is centred on its reference
    point p = sigmoid(Linear(q)) with sides sigmoid(-2)."""
    dense, model = tiny(), tiny(cross_attention="deformable", deformable_points=3).eval()
    assert all(type(layer) is DetrDecoderLayer for layer in dense.decoder) and dense.reference_points is None
    assert all(isinstance(layer, DeformableDecoderLayer) for layer in model.decoder)
    attn = model.decoder[0].cross_attn
    assert attn.n_points == 3 and attn.n_heads == 4 and attn.n_levels == 1
    assert attn.sampling_offsets.weight.abs().max() == 0 and attn.attention_weights.weight.abs().max() == 0
    assert attn.sampling_offsets.bias.view(4, 1, 3, 2)[0, 0].tolist() == [[1, 0], [2, 0], [3, 0]]  # head 0: along x
    assert model.reference_points.bias.abs().max() == 0
    with torch.no_grad():
        out = model(images())
        ref = model.reference_points(model.query_embed.weight).sigmoid()  # (N, 2)
    torch.testing.assert_close(out["boxes"][..., :2], ref.expand(2, -1, -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(out["boxes"][..., 2:], torch.full((2, 5, 2), torch.tensor(-2.0).sigmoid().item()))


def test_the_box_is_relative_to_the_reference_point():
    """b = sigmoid(MLP(y) + [logit(p), 0, 0]), p = sigmoid(Linear(q)) read off the query positions
    (without padding the decoder samples at p itself)."""
    model = move_off_init(tiny(cross_attention="deformable")).eval()
    seen = {}
    model.decoder[-1].register_forward_hook(lambda m, a, kw, out: seen.update(y=out, ref=kw["reference"]), with_kwargs=True)
    with torch.no_grad():
        out = model(images())
        delta = model.bbox_embed(model.decoder_norm(seen["y"]))  # (B, N, 4)
        ref = model.reference_points(model.query_embed.weight).sigmoid().expand(2, -1, -1)  # (B, N, 2)
    torch.testing.assert_close(seen["ref"], ref, atol=0, rtol=0)
    want = torch.cat([(delta[..., :2] + torch.log(ref / (1 - ref))).sigmoid(), delta[..., 2:].sigmoid()], dim=-1)
    torch.testing.assert_close(out["boxes"], want, atol=1e-6, rtol=0)
    assert (out["boxes"][..., :2] - delta[..., :2].sigmoid()).abs().max() > 1e-2  # the reference matters


def test_deformable_cross_attention_is_recorded_as_a_dense_map():
    """The recorder keeps each deformable cross-attention as its (B, H, N, T) map over the feature
    map's cells, as it keeps DETR's dense one: viz attention and the explorer read it alike."""
    model = move_off_init(tiny(cross_attention="deformable")).eval()
    with AttentionRecorder(model) as rec, torch.no_grad():
        out = model(images())
    h, w = out["feature_size"]
    cross = rec.stacked("cross_attn")
    assert len(cross) == 2 and cross[0].shape == (2, 4, 5, h * w)
    sums = cross[-1].sum(-1)  # (B, H, N): 1 minus what fell outside the map
    assert (sums >= 0).all() and (sums <= 1 + 1e-5).all() and sums.max() > 0.5
    assert (cross[-1] == 0).float().mean() > 0.5  # local: most cells get nothing
    assert rec.stacked("encoder.")[0].shape == (2, 4, h * w, h * w)


@pytest.mark.parametrize("switches", [{}, {"cross_attention": "deformable"}], ids=["dense", "deformable"])
def test_torch_export_gives_the_same_detections(switches):
    """DETR exports with torch.export (non-strict); the deformable switch keeps that."""
    model = move_off_init(tiny(**switches)).eval()
    x = images()
    program = torch.export.export(model, (x,), strict=False)
    with torch.no_grad():
        want, got = model(x), program.module()(x)
    torch.testing.assert_close(got["boxes"], want["boxes"], atol=1e-6, rtol=0)
    torch.testing.assert_close(got["logits"], want["logits"], atol=1e-6, rtol=0)


def test_switches_are_validated_saved_and_refused_by_foreign_layouts(tmp_path):
    with pytest.raises(ConfigError, match="cross_attention 'sparse'.*dense, deformable"):
        tiny(cross_attention="sparse")
    with pytest.raises(ConfigError, match="deformable_points must be >= 1"):
        tiny(cross_attention="deformable", deformable_points=0)
    model = move_off_init(tiny(denoising=True, cross_attention="deformable")).eval()
    save_checkpoint(model, tmp_path / "m.safetensors")
    again = load_model(tmp_path / "m.safetensors")
    assert again.cfg.denoising and again.cfg.cross_attention == "deformable"
    with torch.no_grad():
        torch.testing.assert_close(again(images())["boxes"], model(images())["boxes"], atol=0, rtol=0)
    big = create_model("detr_resnet50", d_model=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=1, d_ff=64,
                       num_queries=3, num_classes=2, denoising=True, cross_attention="deformable")
    for fmt, path in (("hf_detr", tmp_path / "hf"), ("detr", tmp_path / "d.pth")):
        with pytest.raises(UnsupportedError, match="cross_attention='deformable' and denoising=True; save with format"):
            save_checkpoint(big, path, format=fmt)
