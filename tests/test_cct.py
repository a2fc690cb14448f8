"""Compact vision Transformers and the small-data tricks, each checked against its definition:
ViT-Lite, CVT and CCT (Hassani et al. 2021) against the authors' parameter counts and layout;
Shifted Patch Tokenization and Locality Self-Attention (Lee et al. 2021) as switches of the ViT."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.checkpoints.load import load_model
from attnlab.checkpoints.save import save_checkpoint
from attnlab.cli.common import parse_model_args
from attnlab.errors import ConfigError, ShapeError
from attnlab.models import create_model
from attnlab.models.compact import CompactTransformer
from attnlab.models.vit import ShiftedPatchEmbed
from attnlab.nn import MultiHeadAttention
from attnlab.nn.masks import off_diagonal_mask
from attnlab.viz.record import AttentionRecorder


def nparams(m) -> int:
    return sum(p.numel() for p in m.parameters())


def test_off_diagonal_mask_hides_each_query_from_itself_right_aligned():
    assert torch.equal(off_diagonal_mask(4), ~torch.eye(4, dtype=torch.bool))
    # two queries at the last two of four positions (as in cached decoding): 2 and 3
    assert off_diagonal_mask(2, 4).tolist() == [[True, True, False, True], [True, True, True, False]]


def _lsa_by_hand(mha: MultiHeadAttention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LSA(x) = softmax(s_h · Q Kᵀ with the diagonal at -inf) V per head, then W_O; step by step."""
    b, t, c = x.shape
    h, d = mha.num_heads, mha.head_dim
    q, k, v = (x @ mha.qkv.weight.T + mha.qkv.bias).split(c, dim=-1)
    q, k, v = (z.reshape(b, t, h, d).transpose(1, 2) for z in (q, k, v))  # (B, H, T, D)
    scores = (q @ k.transpose(-2, -1)) * mha.scale[None, :, None, None]  # (B, H, T, T)
    scores = scores.masked_fill(torch.eye(t, dtype=torch.bool), float("-inf"))
    w = scores.softmax(-1)
    out = (w @ v).transpose(1, 2).reshape(b, t, c)
    return out @ mha.proj.weight.T + mha.proj.bias, w


def test_locality_self_attention_matches_its_definition():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, learned_scale=True, exclude_self=True).eval()
    # the learned scale starts at 1/sqrt(d_k), one per head
    assert torch.allclose(mha.scale.detach(), torch.full((2,), 1 / math.sqrt(4)))
    with torch.no_grad():
        mha.scale.copy_(torch.tensor([0.3, 1.7]))  # learned away from the start, different per head
    x = torch.randn(3, 5, 8)
    want, want_w = _lsa_by_hand(mha, x)
    fast = mha(x)  # the fused kernel
    out, w = mha(x, need_weights=True)  # the explicit path
    assert torch.allclose(fast, want, atol=1e-5) and torch.allclose(out, want, atol=1e-5)
    assert torch.allclose(w, want_w, atol=1e-6)
    assert torch.all(w.diagonal(dim1=-2, dim2=-1) == 0)


def test_the_learned_scale_gets_a_gradient_and_the_options_are_off_by_default():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2, learned_scale=True)
    mha(torch.randn(2, 4, 8)).square().sum().backward()
    assert mha.scale.grad is not None and torch.all(mha.scale.grad != 0)
    plain = MultiHeadAttention(8, 2)
    assert set(plain.state_dict()) == {"qkv.weight", "qkv.bias", "proj.weight", "proj.bias"}
    _, w = plain(torch.randn(1, 4, 8), need_weights=True)
    assert torch.all(w.diagonal(dim1=-2, dim2=-1) > 0)


# ---------------------------------------------------------------- SPT and LSA as ViT switches
def _spt_by_hand(x: torch.Tensor, p: int) -> torch.Tensor:
    """The tokens of Shifted Patch Tokenization before its LayerNorm, pixel by pixel: channels
    [x, x shifted by (+s, +s), (+s, -s), (-s, +s), (-s, -s)] (rows down, columns right; zeros
    shifted in), then each P x P patch flattened with the channel fastest, then the column, then the row."""
    b, c, h, w = x.shape
    s = p // 2
    shifts = [(0, 0), (s, s), (s, -s), (-s, s), (-s, -s)]
    cat = torch.zeros(b, 5 * c, h, w)
    for n, (dy, dx) in enumerate(shifts):
        for i in range(h):
            for j in range(w):
                if 0 <= i - dy < h and 0 <= j - dx < w:
                    cat[:, n * c:(n + 1) * c, i, j] = x[:, :, i - dy, j - dx]
    tokens = []
    for gy in range(h // p):
        for gx in range(w // p):
            tokens.append(torch.stack([cat[:, ch, gy * p + r, gx * p + q]
                                       for r in range(p) for q in range(p) for ch in range(5 * c)], dim=-1))
    return torch.stack(tokens, dim=1)  # (B, Gh*Gw, P*P*5C)


def test_shifted_patch_tokenization_matches_its_definition():
    torch.manual_seed(0)
    m = create_model("vit_cifar", img_size=8, patch_size=4, in_chans=2, spt=True).eval()
    pe = m.patch_embed
    assert pe.proj.in_features == 4 * 4 * 5 * 2  # P*P*5*C_in
    with torch.no_grad():  # a LayerNorm that is not the identity at its start, so that its weights count
        pe.norm.weight.normal_()
        pe.norm.bias.normal_()
    x = torch.randn(3, 2, 8, 8)
    flat = _spt_by_hand(x, 4)
    want = F.layer_norm(flat, flat.shape[-1:], pe.norm.weight, pe.norm.bias, eps=1e-5) @ pe.proj.weight.T + pe.proj.bias
    assert torch.allclose(pe(x), want, atol=1e-5)
    assert m(x).shape == (3, 10)


def test_lsa_switch_puts_locality_self_attention_in_every_block():
    torch.manual_seed(0)
    plain = create_model("vit_cifar", depth=2)
    m = create_model("vit_cifar", depth=2, lsa=True).eval()
    # one learned scale per head and block is all LSA adds
    assert nparams(m) == nparams(plain) + 2 * m.cfg.num_heads
    for block in m.blocks:
        assert block.self_attn.exclude_self and block.self_attn.scale.shape == (m.cfg.num_heads,)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = m.get_attention_maps(x)
    for w in maps:  # (B, H, N, N): nothing on the diagonal, rows still sum to 1
        assert torch.all(w.diagonal(dim1=-2, dim2=-1) == 0)
        assert torch.allclose(w.sum(-1), torch.ones(()), atol=1e-5)
    with AttentionRecorder(m) as rec, torch.no_grad():
        logits = m(x)
    assert logits.shape == (2, 10) and all(torch.all(v[0].diagonal(dim1=-2, dim2=-1) == 0) for v in rec.maps.values())


def test_spt_and_lsa_come_from_the_command_line_and_bad_values_are_refused():
    m = create_model("vit_cifar", **parse_model_args(["spt=true", "lsa=true"]))
    assert isinstance(m.patch_embed, ShiftedPatchEmbed) and m.cfg.spt and m.cfg.lsa
    with pytest.raises(ConfigError, match="spt"):
        create_model("vit_cifar", spt=True, patch_embed="linear")
    with pytest.raises(ConfigError, match="patch_size >= 2"):
        create_model("vit_cifar", spt=True, patch_size=1)
    with pytest.raises(ConfigError, match="lsa must be true or false"):
        create_model("vit_cifar", lsa="yes")


# ---------------------------------------------------------------- ViT-Lite, CVT, CCT
# The authors' parameter counts (SHI-Labs/Compact-Transformers, examples/README.md, CIFAR-10
# table, in millions to three decimals; the paper rounds the same counts to two: CCT-2/3x2 0.28M,
# CCT-7/3x2 3.85M, CVT-7/4 and ViT-Lite-7/4 3.72M). CCT-6/3x1's 3.168M is its count without the
# learned position table; with the table (the authors' registry default) it is 3.234M.
PUBLISHED_M = {
    "cct_2_3x2_32": 0.284, "cct_4_3x2_32": 0.482, "cct_6_3x2_32": 3.327, "cct_7_3x2_32": 3.853,
    "cct_7_3x1_32": 3.760, "cvt_6_4_32": 3.190, "cvt_7_4_32": 3.717, "vitlite_6_4_32": 3.191, "vitlite_7_4_32": 3.717,
}
COMPACT = sorted(PUBLISHED_M) + ["cct_6_3x1_32"]


def reference_count(depth: int, dim: int, mlp: int, tokens: int, *, convs: int = 0, patch: int = 0,
                    cls: bool = False, learned_pos: bool = True, classes: int = 10, c_in: int = 3) -> int:
    """The parameters of the authors' model, module by module (src/cct.py, cvt.py, vit.py and
    utils/ of SHI-Labs/Compact-Transformers): convolutions 3x3 without bias through 64 channels,
    or a P x P patch convolution with bias; class token; learned positions; per block LayerNorm,
    QKV without bias, projection, LayerNorm, two MLP linears; final LayerNorm; SeqPool's linear
    (without a class token); the head."""
    if convs:
        chans = [c_in] + [64] * (convs - 1) + [dim]
        tokenizer = sum(9 * a * b for a, b in zip(chans, chans[1:]))
    else:
        tokenizer = patch * patch * c_in * dim + dim
    n = tokens + cls
    block = 2 * dim + 3 * dim * dim + (dim * dim + dim) + 2 * dim + (dim * mlp * dim + mlp * dim) + (mlp * dim * dim + dim)
    pool = 0 if cls else dim + 1
    return (tokenizer + cls * dim + learned_pos * n * dim + depth * block + 2 * dim + pool
            + dim * classes + classes)


REFERENCE = {
    "cct_2_3x2_32": reference_count(2, 128, 1, 64, convs=2),
    "cct_4_3x2_32": reference_count(4, 128, 1, 64, convs=2),
    "cct_6_3x1_32": reference_count(6, 256, 2, 256, convs=1),
    "cct_6_3x2_32": reference_count(6, 256, 2, 64, convs=2),
    "cct_7_3x1_32": reference_count(7, 256, 2, 256, convs=1),
    "cct_7_3x2_32": reference_count(7, 256, 2, 64, convs=2),
    "cvt_6_4_32": reference_count(6, 256, 2, 64, patch=4),
    "cvt_7_4_32": reference_count(7, 256, 2, 64, patch=4),
    "vitlite_6_4_32": reference_count(6, 256, 2, 64, patch=4, cls=True),
    "vitlite_7_4_32": reference_count(7, 256, 2, 64, patch=4, cls=True),
}


@pytest.mark.parametrize("name", COMPACT)
def test_parameter_counts_equal_the_reference_and_the_published_table(name):
    with torch.device("meta"):
        m = create_model(name)
    assert nparams(m) == REFERENCE[name]
    if name in PUBLISHED_M:
        assert round(nparams(m) / 1e6, 3) == PUBLISHED_M[name]


def test_exact_counts_of_the_headline_models():
    assert REFERENCE["cct_2_3x2_32"] == 283_723 and REFERENCE["cct_7_3x2_32"] == 3_853_259
    assert REFERENCE["cvt_7_4_32"] == 3_716_619 and REFERENCE["vitlite_7_4_32"] == 3_716_874
    with torch.device("meta"):  # CCT-6/3x1 without its position table: the published 3.168M
        assert round(nparams(create_model("cct_6_3x1_32", pos_embed="none")) / 1e6, 3) == 3.168
        assert nparams(create_model("cct_6_3x1_32", pos_embed="sine")) == REFERENCE["cct_6_3x1_32"] - 256 * 256


@pytest.mark.parametrize("name", COMPACT)
def test_every_compact_model_builds_and_classifies_32x32_images(name):
    with torch.device("meta"):
        m = create_model(name)
        out = m(torch.empty(2, 3, 32, 32))
    assert isinstance(m, CompactTransformer) and m.name == name and out.shape == (2, 10)
    assert m.cfg.attn_drop_rate == 0.1 and m.cfg.drop_path_rate == 0.1 and m.cfg.drop_rate == 0.0


def test_cct_7_3x2_tokeniser_is_two_3x3_convolutions_each_with_relu_and_max_pool():
    m = create_model("cct_7_3x2_32")
    layers = m.tokenizer.layers
    assert len(layers) == 2
    for (conv, act, pool), (c_in, c_out) in zip(layers, [(3, 64), (64, 256)]):
        assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.bias) == (
            c_in, c_out, (3, 3), (1, 1), (1, 1), None)
        assert isinstance(act, torch.nn.ReLU)
        assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    assert m.tokenizer(torch.randn(2, 3, 32, 32)).shape == (2, 64, 256)  # 32 -> 16 -> 8: an 8x8 grid
    assert create_model("cct_7_3x1_32").tokenizer(torch.randn(1, 3, 32, 32)).shape == (1, 256, 256)  # 16x16
    for block in m.blocks:
        assert block.self_attn.qkv.bias is None and block.ff.fc1.out_features == 512
    assert [getattr(b.drop_path, "p", 0.0) for b in m.blocks] == pytest.approx([0.1 * i / 6 for i in range(7)])


def test_vit_lite_has_a_class_token_and_cvt_pools_the_sequence():
    lite, cvt = create_model("vitlite_7_4_32"), create_model("cvt_7_4_32")
    assert lite.cls_token.shape == (1, 1, 256) and lite.seq_pool is None and lite.pos_embed.weight.shape == (1, 65, 256)
    assert cvt.cls_token is None and cvt.pos_embed.weight.shape == (1, 64, 256)
    conv = cvt.tokenizer.proj  # P x P patches: a 4x4 convolution of stride 4 with a bias
    assert (conv.kernel_size, conv.stride, conv.bias is not None) == ((4, 4), (4, 4), True)
    z = torch.randn(2, 65, 256)
    assert torch.equal(lite.forward_head(z, pre_logits=True), z[:, 0])


def test_seq_pool_is_the_softmax_weighted_sum_of_the_tokens():
    torch.manual_seed(0)
    m = create_model("cct_2_3x2_32")
    z = torch.randn(3, 64, 128)
    w, b = m.seq_pool.score.weight[0], m.seq_pool.score.bias[0]
    a = torch.exp(z @ w + b)
    a = a / a.sum(dim=1, keepdim=True)  # (B, N): softmax over the sequence
    want = (a[..., None] * z).sum(dim=1)
    assert torch.allclose(m.forward_head(z, pre_logits=True), want, atol=1e-5)
    assert torch.allclose(m.forward_head(z), want @ m.head.weight.T + m.head.bias, atol=1e-5)


def test_the_block_is_the_authors_layout():
    """z = z + MSA(LN0(z)); z = LN1(z); z = z + MLP(z), by hand (eval mode: no dropout, no drop path)."""
    torch.manual_seed(0)
    m = create_model("cct_2_3x2_32").eval()
    blk = m.blocks[1]
    with torch.no_grad():
        for ln in (blk.pre_norm, blk.norm1):
            ln.weight.normal_()
            ln.bias.normal_()
    z0 = torch.randn(2, 64, 128)
    h = F.layer_norm(z0, (128,), blk.pre_norm.weight, blk.pre_norm.bias)
    q, k, v = (h @ blk.self_attn.qkv.weight.T).split(128, dim=-1)
    q, k, v = (t.reshape(2, 64, 2, 64).transpose(1, 2) for t in (q, k, v))  # 2 heads of 64
    att = ((q @ k.transpose(-2, -1)) / 8.0).softmax(-1) @ v
    z = z0 + att.transpose(1, 2).reshape(2, 64, 128) @ blk.self_attn.proj.weight.T + blk.self_attn.proj.bias
    z = F.layer_norm(z, (128,), blk.norm1.weight, blk.norm1.bias)
    want = z + blk.ff.fc2(F.gelu(blk.ff.fc1(z)))
    assert torch.allclose(blk(z0), want, atol=1e-5)


def test_sine_positions_are_the_fixed_sinusoids_and_no_parameter():
    m = create_model("cct_7_3x2_32", pos_embed="sine")
    p, i = torch.arange(64.0)[:, None], torch.arange(256)[None, :]
    angle = p / 10000 ** (2 * (i // 2) / 256)
    want = torch.where(i % 2 == 0, angle.sin(), angle.cos())
    assert torch.allclose(m.pos_embed.add(torch.zeros(1, 64, 256))[0], want, atol=1e-5)
    assert nparams(m) == REFERENCE["cct_7_3x2_32"] - 64 * 256
    assert nparams(create_model("cct_7_3x2_32", **parse_model_args(["pos_embed=none"]))) == nparams(m)


def test_intermediates_heads_and_attention_maps():
    torch.manual_seed(0)
    m = create_model("cct_4_3x2_32").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = m.forward_features(x)  # (B, 64, 128): CCT's two convolutions make an 8x8 grid
        final, outs = m.forward_intermediates(x, [-1, 0], output_fmt="NLC")  # block order
        last = m.forward_intermediates(x, 1, norm=True, output_fmt="NLC", intermediates_only=True)
        with AttentionRecorder(m) as rec:
            logits = m(x)
    assert torch.allclose(final, feats) and [o.shape for o in outs] == [(2, 64, 128)] * 2
    assert torch.allclose(last[0], feats, atol=1e-6)
    assert torch.allclose(logits, m.forward_head(feats))
    assert sorted(rec.maps) == [f"blocks.{i}.self_attn" for i in range(4)]
    assert all(v[0].shape == (2, 2, 64, 64) for v in rec.maps.values())
    features = create_model("cct_4_3x2_32", num_classes=0)
    assert features(x).shape == (2, 128)
    with pytest.raises(ConfigError, match="level index 4 out of range for 4 levels"):
        m.forward_intermediates(x, [4])
    with pytest.raises(ConfigError, match="output_fmt"):
        m.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("name, grid, prefix", [("cct_7_3x2_32", 8, 0), ("cct_7_3x1_32", 16, 0),
                                                ("cvt_6_4_32", 8, 0), ("vitlite_6_4_32", 8, 1)])
def test_forward_intermediates_are_maps_over_the_token_grid(name, grid, prefix):
    """timm's contract: NCHW maps (B, C, Gh, Gw) are the grid tokens of the blocks, in raster
    order, ViT-Lite's class token apart; stop_early runs no block after the last taken."""
    torch.manual_seed(0)
    m = create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        z = m.embed(x)
        for block in m.blocks[:3]:
            z = block(z)  # (B, prefix + grid*grid, C)
        (nchw,) = m.forward_intermediates(x, [2], intermediates_only=True)
        ((nlc, pre),) = m.forward_intermediates(x, [2], output_fmt="NLC", return_prefix_tokens=True,
                                                intermediates_only=True)
        early, _ = m.forward_intermediates(x, [2], stop_early=True)
    assert nchw.shape == (2, m.embed_dim, grid, grid) and m.feature_info[2]["reduction"] == 32 // grid
    assert torch.allclose(nchw.flatten(2).transpose(1, 2), z[:, prefix:], atol=1e-6)
    assert torch.allclose(nlc, z[:, prefix:], atol=1e-6) and pre.shape == (2, prefix, m.embed_dim)
    assert torch.allclose(early, m.norm(z), atol=1e-6)


def test_a_compact_model_is_a_features_only_backbone():
    torch.manual_seed(0)
    m = create_model("cct_7_3x2_32").eval()
    torch.manual_seed(0)
    bb = create_model("cct_7_3x2_32", features_only=True, out_indices=(1, 3)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = bb(x)
        want = m.forward_intermediates(x, [1, 3], intermediates_only=True)
    assert [tuple(t.shape) for t in maps] == [(2, 256, 8, 8)] * 2
    assert all(torch.equal(a, b) for a, b in zip(maps, want))
    assert bb.feature_info.channels() == [256, 256] and bb.feature_info.reduction() == [4, 4]
    assert len(bb.model.blocks) == 4 and isinstance(bb.model.head, torch.nn.Identity) and bb.model.cfg.depth == 4
    nlc = create_model("cvt_6_4_32", features_only=True, output_fmt="NLC")
    assert [tuple(t.shape) for t in nlc(x)] == [(2, 64, 256)] * 3  # the last three blocks, 8x8 patches


def test_bad_configs_and_inputs_are_refused_with_one_clear_error():
    with pytest.raises(ConfigError, match="tokenizer"):
        create_model("cct_7_3x2_32", tokenizer="pixels")
    with pytest.raises(ConfigError, match="not divisible by the patch size"):
        create_model("cvt_7_4_32", img_size=30)
    with pytest.raises(ConfigError, match="no token"):
        create_model("cct_7_3x2_32", img_size=2, conv_padding=0)
    with pytest.raises(ConfigError, match="unknown config field"):
        create_model("cct_7_3x2_32", patch_size=4)
    with pytest.raises(ShapeError, match=r"expects images \(B, 3, 32, 32\)"):
        create_model("cct_2_3x2_32")(torch.randn(1, 3, 28, 28))


def test_a_compact_model_round_trips_through_our_checkpoint(tmp_path):
    torch.manual_seed(0)
    m = create_model("cct_2_3x2_32", pos_embed="sine", num_classes=3).eval()
    m2 = load_model(save_checkpoint(m, tmp_path / "m.safetensors")).eval()
    x = torch.randn(2, 3, 32, 32)
    assert isinstance(m2, CompactTransformer) and m2.name == "cct_2_3x2_32" and m2.cfg == m.cfg
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
