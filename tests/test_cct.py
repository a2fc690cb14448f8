"""Compact vision Transformers and the small-data tricks, each checked against its definition:
Shifted Patch Tokenization and Locality Self-Attention (Lee et al. 2021) as switches of the ViT."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from attnlab.cli.common import parse_model_args
from attnlab.errors import ConfigError
from attnlab.models import create_model
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
