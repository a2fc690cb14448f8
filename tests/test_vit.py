"""The Vision Transformer model and the model registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import attnlab
from attnlab.errors import ConfigError, ShapeError
from attnlab.models import VisionTransformer, ViTConfig, attention_rollout, create_model, list_models, resample_pos_embed
from attnlab.models.registry import config_from, register_model
from attnlab.models.vit import drop_path_schedule

TIMM_NAMES = [
    "vit_tiny_patch16_224", "vit_small_patch16_224", "vit_small_patch32_224", "vit_base_patch16_224",
    "vit_base_patch32_224", "vit_base_patch8_224", "vit_large_patch16_224", "vit_large_patch32_224",
    "vit_huge_patch14_224", "vit_base_patch16_384", "vit_large_patch16_384",
]
SMALL_NAMES = ["vit_digits", "vit_mnist", "vit_cifar"]

# timm's counts with a 1000-class head
PARAM_COUNTS = {
    "vit_tiny_patch16_224": 5_717_416,
    "vit_small_patch16_224": 22_050_664,
    "vit_base_patch16_224": 86_567_656,
    "vit_large_patch16_224": 304_326_632,
    "vit_huge_patch14_224": 632_045_800,
}


def tiny(**kw) -> VisionTransformer:
    """A 16x16 RGB model with a 4x4 grid, 32 wide, 2 blocks, 4 heads; eval mode."""
    base = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=32, depth=2, num_heads=4)
    torch.manual_seed(0)
    return VisionTransformer(ViTConfig(**{**base, **kw}), name="tiny").eval()


def nparams(m) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------- registry
def test_list_models_has_every_name_sorted():
    names = list_models()
    assert names == sorted(names)
    for n in TIMM_NAMES + SMALL_NAMES:
        assert n in names
    assert list_models("vit_base_*") == ["vit_base_patch16_224", "vit_base_patch16_384", "vit_base_patch32_224",
                                          "vit_base_patch8_224"]
    assert list_models("nothing*") == []
    assert attnlab.list_models is list_models  # attnlab.create_model: the registry's, plus weights from a file


@pytest.mark.parametrize("name", list_models("vit_*"))
def test_every_model_builds_on_meta_with_right_output_shape(name):
    with torch.device("meta"):
        m = create_model(name)
        cfg = m.cfg
        h, w = (cfg.img_size, cfg.img_size) if isinstance(cfg.img_size, int) else cfg.img_size
        out = m(torch.empty(2, cfg.in_chans, h, w))
    assert m.name == name and isinstance(cfg, ViTConfig)
    assert out.shape == (2, cfg.num_classes)
    gh, gw = m.grid_size
    assert m.pos_embed.weight.shape == (1, 1 + gh * gw, cfg.embed_dim)
    assert m.patch_embed.proj.weight.shape == (cfg.embed_dim, cfg.in_chans, cfg.patch_size, cfg.patch_size)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_exact_parameter_counts(name):
    with torch.device("meta"):
        assert nparams(create_model(name)) == PARAM_COUNTS[name]


@pytest.mark.parametrize("name", SMALL_NAMES + ["vit_tiny_patch16_224"])
def test_small_models_run_forward_on_cpu(name):
    m = create_model(name).eval()
    h, w = (m.cfg.img_size,) * 2
    with torch.no_grad():
        out = m(torch.randn(1, m.cfg.in_chans, h, w))
    assert out.shape == (1, m.cfg.num_classes) and torch.isfinite(out).all()


def test_small_configs_are_small():
    with torch.device("meta"):
        assert nparams(create_model("vit_digits")) < 300_000
        assert nparams(create_model("vit_mnist")) < 4_000_000
        assert nparams(create_model("vit_cifar")) < 4_000_000


def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(ConfigError, match="vit_tiny_patch16_224"):
        create_model("vit_tiny_patch16")
    with pytest.raises(ConfigError, match="unknown model 'resnet50'"):
        create_model("resnet50")


def test_unknown_override_is_named():
    with pytest.raises(ConfigError, match="'num_class'.*num_classes"):
        create_model("vit_digits", num_class=3)
    with pytest.raises(ConfigError, match="'bogus'"):
        config_from(ViTConfig, {}, {"bogus": 1})


def test_registering_a_different_function_under_a_taken_name_fails():
    with pytest.raises(ConfigError, match="registered twice"):
        register_model("vit_digits")(lambda **kw: None)


def test_overrides_change_the_config():
    m = create_model("vit_digits", num_classes=3, depth=2)
    assert m.cfg.num_classes == 3 and len(m.blocks) == 2 and m.head.out_features == 3


# ---------------------------------------------------------------------- config validation
@pytest.mark.parametrize("kw, match", [
    (dict(img_size=30, patch_size=4), "img_size 30x30 is not divisible by patch_size 4"),
    (dict(class_token=False), "global_pool='token' needs class_token=True"),
    (dict(global_pool="max"), "global_pool='max'.*'token', 'avg'"),
    (dict(pos_embed="rope"), "pos_embed='rope'.*'learn', 'learn2d', 'sincos2d', 'relative', 'rope2d', 'none'"),
    (dict(patch_embed="mlp"), "patch_embed='mlp'.*'conv', 'linear'"),
    (dict(weight_init="xavier"), "weight_init='xavier'.*'trunc_normal', 'jax'"),
    (dict(embed_dim=30, num_heads=4), "embed_dim 30 is not divisible by num_heads 4"),
    (dict(embed_dim=30, num_heads=6, pos_embed="sincos2d"), "divisible by 4"),
    (dict(drop_path_rate=1.0), "drop_path_rate must be a probability"),
    (dict(depth=0), "depth must be > 0"),
    (dict(num_classes=-1), "num_classes must be an integer >= 0"),
    (dict(dynamic_img_size=True, pos_embed="relative"), "dynamic_img_size"),
])
def test_bad_configs_name_the_field(kw, match):
    with pytest.raises(ConfigError, match=match):
        tiny(**kw)


def test_rectangular_images():
    m = tiny(img_size=(16, 24))
    assert m.grid_size == (4, 6)
    assert m(torch.randn(2, 3, 16, 24)).shape == (2, 5)


# ---------------------------------------------------------------------- layout of the variants
def test_parameter_names_of_the_default_layout():
    names = set(dict(tiny().named_parameters()))
    expected = {"cls_token", "pos_embed.weight", "patch_embed.proj.weight", "patch_embed.proj.bias",
                "norm.weight", "norm.bias", "head.weight", "head.bias"}
    for i in range(2):
        expected |= {f"blocks.{i}.{p}.{t}" for p in ("norm1", "self_attn.qkv", "self_attn.proj", "norm2", "ff.fc1", "ff.fc2")
                     for t in ("weight", "bias")}
    assert names == expected
    assert tiny().blocks[0].self_attn.qkv.weight.shape == (96, 32)


def test_avg_pool_without_class_token():
    m = tiny(class_token=False, global_pool="avg")
    names = set(dict(m.named_parameters()))
    assert "cls_token" not in names and "norm.weight" not in names and "fc_norm.weight" in names
    assert m.pos_embed.weight.shape == (1, 16, 32)
    x = torch.randn(2, 3, 16, 16)
    z = m.forward_features(x)
    assert z.shape == (2, 16, 32)
    ref = m.head(m.fc_norm(z.mean(dim=1)))
    torch.testing.assert_close(m(x), ref)


def test_avg_pool_with_class_token_excludes_it():
    m = tiny(global_pool="avg")
    x = torch.randn(2, 3, 16, 16)
    z = m.forward_features(x)
    assert z.shape == (2, 17, 32)
    torch.testing.assert_close(m.forward_head(z, pre_logits=True), m.fc_norm(z[:, 1:].mean(1)))


@pytest.mark.parametrize("kind", ["learn", "learn2d", "sincos2d", "relative", "rope2d", "none"])
def test_each_position_embedding(kind):
    m = tiny(pos_embed=kind)
    names = {n for n, _ in m.named_parameters() if n.startswith(("pos_embed", "rel_pos"))}
    assert names == {"learn": {"pos_embed.weight"}, "relative": {"rel_pos.table"},
                     "learn2d": {"pos_embed.row", "pos_embed.col", "pos_embed.prefix"}}.get(kind, set())
    assert names == {n for n in m.no_weight_decay() if n != "cls_token"}
    assert not any(k.startswith(("pos_embed", "rel_pos")) for k in m.state_dict() if kind in ("sincos2d", "rope2d", "none"))
    if kind == "relative":  # the initial table (std .02) barely moves the logits; make it count
        torch.nn.init.normal_(m.rel_pos.table)
    x = torch.randn(2, 3, 16, 16)
    assert m(x).shape == (2, 5)
    if kind == "none":  # no position information: permuting the patches permutes nothing in the class token
        perm = x.reshape(2, 3, 4, 4, 4, 4).flip(2).reshape(2, 3, 16, 16)  # reorder rows of patches
        torch.testing.assert_close(m(perm), m(x), atol=1e-5, rtol=1e-5)
    else:
        perm = x.reshape(2, 3, 4, 4, 4, 4).flip(2).reshape(2, 3, 16, 16)
        assert not torch.allclose(m(perm), m(x), atol=1e-4)


def test_learned_2d_table_is_row_and_column():
    m = tiny(pos_embed="learn2d")  # 4x4 grid, 32 wide
    table = m.position_table()[0]  # (1 + 16, 32)
    pe = m.pos_embed
    assert table.shape == (17, 32) and pe.row.shape == pe.col.shape == (4, 16)
    torch.testing.assert_close(table[0], pe.prefix[0])
    for r, c in [(0, 0), (1, 3), (3, 2)]:
        torch.testing.assert_close(table[1 + 4 * r + c], torch.cat([pe.row[r], pe.col[c]]))


def test_rope2d_rotates_inside_attention_and_refuses_odd_heads():
    m = tiny(pos_embed="rope2d")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        a = m(x)
        m.rel_pos.sin.zero_()
        m.rel_pos.cos.fill_(1.0)  # no rotation: the model loses its position information
        b = m(x)
    assert not torch.allclose(a, b, atol=1e-5)
    with pytest.raises(ConfigError, match="head dimension.*divisible by 4"):
        tiny(pos_embed="rope2d", embed_dim=24, num_heads=4)  # head dimension 6
    with pytest.raises(ConfigError, match="dynamic_img_size"):
        tiny(pos_embed="rope2d", dynamic_img_size=True)


def test_relative_bias_reaches_attention():
    m = tiny(pos_embed="relative")
    with torch.no_grad():
        m.rel_pos.table.zero_()
        a = m(torch.ones(1, 3, 16, 16))
        m.rel_pos.table.normal_()
        b = m(torch.ones(1, 3, 16, 16))
    assert not torch.allclose(a, b)


def test_linear_patch_embedding_flattens_p1_p2_c():
    m = tiny(patch_embed="linear")
    names = {n for n, _ in m.named_parameters() if n.startswith("patch_embed")}
    assert names == {f"patch_embed.{p}.{t}" for p in ("norm_in", "proj", "norm_out") for t in ("weight", "bias")}
    assert m.patch_embed.proj.weight.shape == (32, 4 * 4 * 3)
    seen = {}
    m.patch_embed.norm_in.register_forward_hook(lambda mod, inp, out: seen.setdefault("x", inp[0]))
    x = torch.randn(2, 3, 16, 16)
    m(x)
    # 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)' by hand for patch (row 1, column 2)
    patch = x[:, :, 4:8, 8:12]  # (B, c, p1, p2)
    torch.testing.assert_close(seen["x"][:, 1 * 4 + 2], patch.permute(0, 2, 3, 1).reshape(2, -1))


def test_pre_logits():
    m = tiny(pre_logits=True)
    assert m.pre_logits.fc.weight.shape == (32, 32)
    x = torch.randn(2, 3, 16, 16)
    z = m.forward_features(x)
    feats = m.forward_head(z, pre_logits=True)
    torch.testing.assert_close(feats, torch.tanh(m.pre_logits.fc(z[:, 0])))
    torch.testing.assert_close(m(x), m.head(feats))


def test_drop_path_schedule_is_linear_over_depth():
    assert drop_path_schedule(0.1, 5) == pytest.approx([0.0, 0.025, 0.05, 0.075, 0.1])
    assert drop_path_schedule(0.3, 1) == [0.0]
    m = tiny(depth=4, drop_path_rate=0.3)
    assert isinstance(m.blocks[0].drop_path, torch.nn.Identity)
    assert [m.blocks[i].drop_path.p for i in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.3])


def test_dropouts_reach_the_blocks_and_train_mode_is_stochastic():
    m = tiny(drop_rate=0.1, attn_drop_rate=0.2, drop_path_rate=0.1)
    b = m.blocks[1]
    assert b.drop1.p == 0.1 and b.ff.drop.p == 0.1 and b.self_attn.dropout == 0.2 and m.pos_drop.p == 0.1
    x = torch.randn(2, 3, 16, 16)
    m.train()
    assert not torch.allclose(m(x), m(x))
    m.eval()
    torch.testing.assert_close(m(x), m(x))


def test_norm_eps_and_qkv_bias():
    m = tiny(norm_eps=1e-5, qkv_bias=False)
    assert m.blocks[0].norm1.eps == 1e-5 and m.norm.eps == 1e-5
    assert m.blocks[0].self_attn.qkv.bias is None and m.blocks[0].self_attn.proj.bias is not None


def test_weight_init_modes():
    t = tiny(weight_init="trunc_normal", embed_dim=64)
    assert t.cls_token.abs().max() < 1e-4
    assert 0.015 < t.blocks[0].ff.fc1.weight.std() < 0.025 and t.blocks[0].ff.fc1.bias.abs().max() == 0
    assert t.head.weight.abs().max() > 0
    j = tiny(weight_init="jax", embed_dim=64, pre_logits=True)
    assert j.cls_token.abs().max() == 0 and j.head.weight.abs().max() == 0 and j.head.bias.abs().max() == 0
    fc1 = j.blocks[0].ff.fc1
    assert 0 < fc1.bias.abs().max() < 1e-4 and j.blocks[0].self_attn.qkv.bias.abs().max() == 0
    bound = math.sqrt(6 / (64 + 256))  # xavier uniform of the 64 -> 256 MLP layer
    assert fc1.weight.abs().max() <= bound and fc1.weight.abs().max() > 0.9 * bound
    q = j.blocks[0].self_attn.qkv.weight[:64]  # each of q, k, v is its own 64 x 64 matrix
    assert q.abs().max() <= math.sqrt(6 / 128) and q.abs().max() > 0.9 * math.sqrt(6 / 128)
    conv = j.patch_embed.proj.weight  # LeCun normal: variance 1 / fan_in (fan_in = 3*4*4)
    assert abs(conv.std().item() - math.sqrt(1 / 48)) < 0.02
    with pytest.raises(ConfigError):
        j.init_weights("orthogonal")


def test_no_weight_decay_names():
    assert tiny().no_weight_decay() == {"cls_token", "pos_embed.weight"}
    assert tiny(pos_embed="relative").no_weight_decay() == {"cls_token", "rel_pos.table"}


# ---------------------------------------------------------------------- forward API
def test_forward_is_features_then_head():
    m = tiny()
    x = torch.randn(3, 3, 16, 16)
    z = m.forward_features(x)
    assert z.shape == (3, 17, 32)
    torch.testing.assert_close(m(x), m.forward_head(z))
    torch.testing.assert_close(m.forward_head(z), m.head(z[:, 0]))


def test_forward_reads_like_the_paper():
    """Eq. 1-4 written out by hand from the model's parts."""
    m = tiny()
    x = torch.randn(2, 3, 16, 16)
    p = x.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).reshape(2, 16, 48)  # x_p (B, N, P²·C)
    e = m.patch_embed.proj.weight.reshape(32, 48)
    z = torch.cat([m.cls_token.expand(2, -1, -1), p @ e.T + m.patch_embed.proj.bias], 1) + m.pos_embed.weight
    for b in m.blocks:
        z = z + b.self_attn(b.norm1(z))
        z = z + b.ff(b.norm2(z))
    y = m.norm(z[:, 0])
    torch.testing.assert_close(m(x), m.head(y), atol=1e-5, rtol=1e-5)


def test_forward_intermediates():
    """timm's contract (more in test_timm_contract.py): maps of the patch tokens, block order."""
    m = tiny(depth=3)
    x = torch.randn(2, 3, 16, 16)
    last2 = m.forward_intermediates(x, 2, intermediates_only=True)
    assert len(last2) == 2 and all(t.shape == (2, 32, 4, 4) for t in last2)
    picked = m.forward_intermediates(x, [-1, 0], output_fmt="NLC", intermediates_only=True)  # block order
    torch.testing.assert_close(picked[1], last2[1].flatten(2).transpose(1, 2))
    final, inter = m.forward_intermediates(x, [2], norm=True, output_fmt="NLC", return_prefix_tokens=True)
    torch.testing.assert_close(final, m.forward_features(x))
    tokens, prefix = inter[0]
    torch.testing.assert_close(torch.cat([prefix, tokens], 1), final)
    with pytest.raises(ConfigError, match="out of range"):
        m.forward_intermediates(x, [3])
    with pytest.raises(ConfigError, match="last n of 3"):
        m.forward_intermediates(x, 4)
    with pytest.raises(ConfigError, match="output_fmt='NHWC' is not allowed"):
        m.forward_intermediates(x, output_fmt="NHWC")


def test_reset_classifier():
    m = tiny()
    x = torch.randn(2, 3, 16, 16)
    m.reset_classifier(0)
    assert m(x).shape == (2, 32) and m.cfg.num_classes == 0
    m.reset_classifier(7, global_pool="avg")
    assert m(x).shape == (2, 7) and m.cfg.global_pool == "avg"
    assert isinstance(m.norm, torch.nn.Identity) and isinstance(m.fc_norm, torch.nn.LayerNorm)
    # the layout matches what the config would build
    fresh = VisionTransformer(m.cfg)
    assert set(fresh.state_dict()) == set(m.state_dict())
    with pytest.raises(ConfigError, match="class_token"):
        tiny(class_token=False, global_pool="avg").reset_classifier(3, global_pool="token")


# ---------------------------------------------------------------------- input checks
def test_wrong_channels_and_sizes_raise_shape_errors():
    m = tiny()
    with pytest.raises(ShapeError, match=r"expects images \(B, 3, 16, 16\), got \(2, 1, 16, 16\)"):
        m(torch.randn(2, 1, 16, 16))
    with pytest.raises(ShapeError, match=r"got \(2, 3, 20, 20\).*dynamic_img_size=True"):
        m(torch.randn(2, 3, 20, 20))
    with pytest.raises(ShapeError):
        m(torch.randn(3, 16, 16))
    with pytest.raises(ShapeError, match="not a multiple of the patch size 4"):
        tiny(dynamic_img_size=True)(torch.randn(1, 3, 18, 16))


# ---------------------------------------------------------------------- dynamic image size, resampling
def test_dynamic_img_size_learned():
    m = tiny(dynamic_img_size=True)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(m(x), tiny()(x))  # native size: nothing resampled
    assert m(torch.randn(2, 3, 24, 20)).shape == (2, 5)
    # a larger image equals a model whose embedding was resampled ahead of time
    big = tiny(img_size=24)
    sd = m.state_dict()
    sd["pos_embed.weight"] = resample_pos_embed(sd["pos_embed.weight"], 6, num_prefix=1)
    big.load_state_dict(sd)
    x24 = torch.randn(2, 3, 24, 24)
    torch.testing.assert_close(m(x24), big(x24))


@pytest.mark.parametrize("kind", ["sincos2d", "none"])
def test_dynamic_img_size_fixed_encodings(kind):
    m = tiny(pos_embed=kind, dynamic_img_size=True)
    big = tiny(pos_embed=kind, img_size=24)
    big.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 24, 24)
    torch.testing.assert_close(m(x), big(x))


def test_resample_pos_embed_14_to_24():
    torch.manual_seed(0)
    pe = torch.randn(1, 1 + 14 * 14, 8)
    out = resample_pos_embed(pe, (24, 24), num_prefix=1)
    assert out.shape == (1, 1 + 24 * 24, 8)
    assert torch.equal(out[:, 0], pe[:, 0])
    const = torch.cat([torch.randn(1, 1, 8), torch.full((1, 196, 8), 0.7)], dim=1)
    torch.testing.assert_close(resample_pos_embed(const, 24)[:, 1:], torch.full((1, 576, 8), 0.7))
    assert resample_pos_embed(pe[0], 24).shape == (577, 8)  # 2-D input too
    with pytest.raises(ShapeError):
        resample_pos_embed(torch.randn(1, 1 + 15, 8), 24)


# ---------------------------------------------------------------------- attention maps and rollout
def _manual_attention(block, z, num_heads):
    h = block.norm1(z)
    b, n, c = h.shape
    q, k, _ = block.self_attn.qkv(h).reshape(b, n, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4)
    return (q @ k.transpose(-2, -1) / math.sqrt(c // num_heads)).softmax(-1)


@pytest.mark.parametrize("kind", ["learn", "relative"])
def test_attention_maps_equal_manual_computation_and_keep_logits(kind):
    m = tiny(depth=3, pos_embed=kind)
    x = torch.randn(2, 3, 16, 16)
    logits, maps = m.get_attention_maps(x, return_logits=True)
    assert len(maps) == 3 and all(a.shape == (2, 4, 17, 17) for a in maps)
    torch.testing.assert_close(logits, m(x), atol=1e-5, rtol=1e-5)
    pairs = m.forward_intermediates(x, [0, 1], output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True)
    inputs = [m.embed(x)] + [torch.cat([prefix, tokens], 1) for tokens, prefix in pairs]  # (B, N, C)
    for i, (a, z) in enumerate(zip(maps, inputs)):
        ref = _manual_attention(m.blocks[i], z, 4)
        if kind == "relative":
            ref = (ref.log() + m.rel_pos.bias(17, 17)).softmax(-1)
        torch.testing.assert_close(a, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 4, 17))
    only = m.get_attention_maps(x, blocks=[2, 0])
    torch.testing.assert_close(only[0], maps[2])
    torch.testing.assert_close(only[1], maps[0])


def test_default_forward_uses_the_fused_kernel(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    m = tiny(depth=3)
    x = torch.randn(1, 3, 16, 16)
    m(x)
    assert len(calls) == 3
    calls.clear()
    m.get_attention_maps(x, blocks=[1], return_logits=True)
    assert len(calls) == 2  # only the block asked for takes the explicit path


@pytest.mark.parametrize("class_token", [True, False])
@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_rows_sum_to_one_and_map_is_the_grid(class_token, fusion):
    m = tiny(depth=3, class_token=class_token, global_pool="token" if class_token else "avg")
    x = torch.randn(2, 3, 16, 16)
    maps = m.get_attention_maps(x)
    n = 17 if class_token else 16
    for ratio in (0.0, 0.5):
        r = attention_rollout(maps, ratio, fusion, num_prefix=m.num_prefix_tokens)
        assert r.shape == (2, n, n) and (r >= 0).all()
        torch.testing.assert_close(r.sum(-1), torch.ones(2, n))
        grid = m.attention_rollout(maps, discard_ratio=ratio, head_fusion=fusion)
        assert grid.shape == (2, 4, 4)
        k = m.num_prefix_tokens
        row = r[:, 0, k:] if class_token else r[:, k:, k:].mean(1)
        torch.testing.assert_close(grid.flatten(1), row)


def test_rollout_of_one_block_by_hand():
    a = torch.softmax(torch.randn(1, 2, 5, 5), -1)
    fused = a.mean(1)
    expect = (fused + torch.eye(5)) / 2  # rows of fused sum to 1, so renormalising halves them
    torch.testing.assert_close(attention_rollout([a]), expect)
    two = attention_rollout([a, a])
    torch.testing.assert_close(two, expect @ expect)


def test_rollout_rejects_bad_arguments():
    a = torch.softmax(torch.randn(1, 2, 5, 5), -1)
    with pytest.raises(ConfigError, match="head_fusion"):
        attention_rollout([a], head_fusion="median")
    with pytest.raises(ConfigError, match="discard_ratio"):
        attention_rollout([a], discard_ratio=1.0)
    with pytest.raises(ShapeError):
        attention_rollout([a[0]])
    with pytest.raises(ConfigError):
        attention_rollout([])


# ---------------------------------------------------------------------- compile
def test_forward_captures_as_one_graph():
    """No data-dependent Python branching: dynamo captures the whole forward (no graph breaks)."""
    m = tiny()
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(m, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), m(x))
