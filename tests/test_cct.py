"""Compact vision Transformers and the small-data tricks, each checked against its definition:
Locality Self-Attention (Lee et al. 2021) in MultiHeadAttention."""

from __future__ import annotations

import math

import torch

from attnlab.nn import MultiHeadAttention
from attnlab.nn.masks import off_diagonal_mask


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
