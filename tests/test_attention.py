"""Attention and multi-head attention against PyTorch's twins, with identical weights.

Tolerance: 1e-5 absolute in float32 (both sides run the same kernels up to summation order)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.convert import from_torch
from attnlab.errors import ConfigError, ShapeError
from attnlab.nn import AdditiveAttention, KVCache, MultiHeadAttention, scaled_dot_product_attention
from attnlab.nn.masks import causal_mask, from_torch_mask, padding_mask, random_key_mask, window_mask

ATOL = 1e-5
B, T, S, E, H = 3, 6, 9, 32, 4


def pair(bias=True, batch_first=True):
    ref = nn.MultiheadAttention(E, H, bias=bias, batch_first=batch_first).eval()
    return ref, from_torch(ref)


def kpm(b, t):
    """PyTorch key_padding_mask (True = pad) with different lengths per row."""
    m = torch.zeros(b, t, dtype=torch.bool)
    for i in range(b):
        m[i, t - i:] = True
    return m


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("cross,causal", [(False, False), (False, True), (True, False)])
def test_mha_equals_torch(bias, cross, padding, causal):
    ref, ours = pair(bias)
    x = torch.randn(B, T, E)
    ctx = torch.randn(B, S, E) if cross else x
    tk = ctx.shape[1]
    key_pad = kpm(B, tk) if padding else None
    attn_mask = torch.ones(T, T, dtype=torch.bool).triu(1) if causal else None  # PyTorch: True = masked
    want, want_w = ref(x, ctx, ctx, key_padding_mask=key_pad, attn_mask=attn_mask, average_attn_weights=False)
    mask = from_torch_mask(key_pad, key_padding=True)
    got, got_w = ours(x, ctx if cross else None, mask=mask, causal=causal, need_weights=True)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(got_w, want_w, atol=ATOL, rtol=0)
    fast = ours(x, ctx if cross else None, mask=mask, causal=causal)
    torch.testing.assert_close(fast, got, atol=ATOL, rtol=0)


@pytest.mark.parametrize("shared", ["none", "query=key", "key=value"])
@pytest.mark.parametrize("padding", [False, True])
def test_mha_three_inputs_equal_torch(shared, padding):
    """mha(query, key, value) is nn.MultiheadAttention(query, key, value): three distinct inputs,
    DETR's Attn(x + p, x + p, x) (Q and K from one input) and cross-attention (K and V from one)."""
    ref, ours = pair()
    x, y, z = torch.randn(B, T, E), torch.randn(B, T, E), torch.randn(B, T, E)
    q, k, v = {"none": (x, y, z), "query=key": (x, x, z), "key=value": (x, y, y)}[shared]
    key_pad = kpm(B, T) if padding else None
    want, want_w = ref(q, k, v, key_padding_mask=key_pad, average_attn_weights=False)
    mask = from_torch_mask(key_pad, key_padding=True)
    got, got_w = ours(q, k, v, mask=mask, need_weights=True)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(got_w, want_w, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours(q, k, v, mask=mask), got, atol=ATOL, rtol=0)


def test_mha_self_attention_keeps_one_fused_projection():
    """mha(x) projects Q, K and V in one call of ``qkv`` (the ViT's speed); other inputs use its rows."""
    mha = MultiHeadAttention(E, H).eval()
    calls = []
    mha.qkv.register_forward_hook(lambda m, a, out: calls.append(out.shape))
    x, m = torch.randn(B, T, E), torch.randn(B, S, E)
    mha(x)
    assert calls == [(B, T, 3 * E)]
    torch.testing.assert_close(mha(x, x, x), mha(x), atol=ATOL, rtol=0)  # the same tensor three times: one call too
    assert len(calls) == 3
    mha(x, m)
    mha(x + 1, x + 1, x)
    assert len(calls) == 3
    with pytest.raises(ShapeError, match="key must be"):
        mha(x, torch.randn(B, S, E + 1))
    with pytest.raises(ShapeError, match="value must be"):
        mha(x, m, torch.randn(B, S + 1, E))


def test_mha_seq_first_module_converts():
    ref, ours = pair(batch_first=False)
    x = torch.randn(T, B, E)
    want, _ = ref(x, x, x)
    torch.testing.assert_close(ours(x.transpose(0, 1)).transpose(0, 1), want, atol=ATOL, rtol=0)


def test_sdpa_formula_and_paths_agree():
    q, k, v = torch.randn(2, H, T, 8), torch.randn(2, H, S, 8), torch.randn(2, H, S, 8)
    manual = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(8), -1) @ v
    fast = scaled_dot_product_attention(q, k, v)
    explicit, w = scaled_dot_product_attention(q, k, v, need_weights=True)
    torch.testing.assert_close(fast, manual, atol=ATOL, rtol=0)
    torch.testing.assert_close(explicit, manual, atol=ATOL, rtol=0)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, H, T))


def test_causal_mask_is_right_aligned():
    m = causal_mask(2, 4)
    assert m.tolist() == [[True, True, True, False], [True, True, True, True]]
    assert torch.equal(causal_mask(4), torch.ones(4, 4, dtype=torch.bool).tril())


def test_causal_fewer_queries_than_keys_matches_full():
    q, k, v = torch.randn(1, H, S, 8), torch.randn(1, H, S, 8), torch.randn(1, H, S, 8)
    full = scaled_dot_product_attention(q, k, v, causal=True)
    last = scaled_dot_product_attention(q[:, :, -3:], k, v, causal=True)
    torch.testing.assert_close(last, full[:, :, -3:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("need_weights", [False, True])
def test_fully_masked_rows_are_zero_not_nan(need_weights):
    q, k, v = torch.randn(2, H, T, 8, requires_grad=True), torch.randn(2, H, T, 8), torch.randn(2, H, T, 8)
    mask = torch.ones(2, 1, T, T, dtype=torch.bool)
    mask[0, :, 2] = False  # query 2 of sample 0 sees nothing
    out = scaled_dot_product_attention(q, k, v, mask=mask, need_weights=need_weights)
    out = out[0] if need_weights else out
    assert torch.isfinite(out).all()
    assert out[0, :, 2].abs().max() == 0
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_topk_keeps_k_largest():
    q, k, v = torch.randn(1, 1, 4, 8), torch.randn(1, 1, 10, 8), torch.randn(1, 1, 10, 8)
    out, w = scaled_dot_product_attention(q, k, v, topk=3, need_weights=True)
    assert ((w > 0).sum(-1) == 3).all()
    scores = q @ k.transpose(-2, -1)
    top = scores.topk(3, -1).indices
    assert torch.equal((w > 0), torch.zeros_like(w, dtype=torch.bool).scatter(-1, top, True))


def test_window_mask():
    m = window_mask(5, 5, window=1)
    assert m.sum().item() == 13 and m[0].tolist() == [True, True, False, False, False]


def test_mha_with_window_matches_explicit_mask():
    mha = MultiHeadAttention(E, H).eval()
    x = torch.randn(B, T, E)
    win = MultiHeadAttention(E, H, window=2).eval()
    win.load_state_dict(mha.state_dict())
    torch.testing.assert_close(win(x), mha(x, mask=window_mask(T, T, 2)), atol=ATOL, rtol=0)


def test_random_key_mask_draws_k_allowed_keys():
    torch.manual_seed(0)
    allowed = torch.rand(4, 3, 7, 9) > 0.4
    m = random_key_mask(allowed, 3)
    assert not (m & ~allowed).any()  # never a disallowed key
    torch.testing.assert_close(m.sum(-1), allowed.sum(-1).clamp(max=3))  # k, or all when fewer are allowed
    assert not torch.equal(m, random_key_mask(allowed, 3))  # drawn anew at every call


def test_mha_random_k_sees_k_visible_keys():
    """random_k: the weights of each query are non-zero at exactly k keys, all of them visible
    (not padding, not in the future)."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(E, H, random_k=2).eval()
    x = torch.randn(B, T, E)
    pad = padding_mask(~kpm(B, T))  # row i has T - i real keys
    _, w = mha(x, mask=pad, causal=True, need_weights=True)  # (B, H, T, T)
    seen = w > 0
    visible = pad & causal_mask(T, T)
    assert not (seen & ~visible).any()
    torch.testing.assert_close(seen.sum(-1), visible.expand_as(seen).sum(-1).clamp(max=2))
    with pytest.raises(ConfigError, match="random_k"):
        MultiHeadAttention(E, H, random_k=0)


def test_attention_weights_do_not_change_output():
    mha = MultiHeadAttention(E, H).eval()
    x = torch.randn(B, T, E)
    out, w = mha(x, need_weights=True)
    assert w.shape == (B, H, T, T)
    torch.testing.assert_close(out, mha(x), atol=ATOL, rtol=0)


def test_attention_dropout_only_in_training():
    mha = MultiHeadAttention(E, H, dropout=0.5)
    x = torch.randn(B, T, E)
    mha.eval()
    torch.testing.assert_close(mha(x), mha(x))
    mha.train()
    assert not torch.allclose(mha(x), mha(x))


def test_additive_attention_is_softmax_of_bahdanau_scores():
    att = AdditiveAttention(5, 7, 11)
    s, h = torch.randn(2, 5), torch.randn(2, 4, 7)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    ctx, w = att(s, h, mask=mask)
    scores = (att.v(torch.tanh(att.w_query(s)[:, None] + att.w_key(h)))).squeeze(-1)
    want = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    torch.testing.assert_close(w, want)
    torch.testing.assert_close(ctx, (want[:, :, None] * h).sum(1))
    assert w[0, 3] == 0


def test_bad_input_errors_name_the_problem():
    with pytest.raises(ValueError, match="not divisible"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ShapeError, match="head dimensions differ"):
        scaled_dot_product_attention(torch.randn(1, 1, 2, 8), torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4))
    mha = MultiHeadAttention(E, H)
    x = torch.randn(B, T, E)
    with pytest.raises(ValueError, match="does not broadcast"):
        mha(x, mask=torch.ones(B, T, T + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="boolean"):
        mha(x, mask=torch.ones(T, T))
    with pytest.raises(ValueError, match="expected input"):
        mha(torch.randn(B, T, E + 1))
    with pytest.raises(ConfigError):
        MultiHeadAttention(E, H, topk=0)
    with pytest.raises(ValueError, match="padding_mask"):
        padding_mask(torch.ones(3, dtype=torch.bool))


def test_from_torch_float_mask_conversion():
    f = torch.tensor([[0.0, float("-inf")], [0.0, 0.0]])
    assert from_torch_mask(f).tolist() == [[True, False], [True, True]]
    with pytest.raises(ValueError, match="biases"):
        from_torch_mask(torch.tensor([[0.5, 0.0]]))


def test_sdpa_bias_is_added_to_scores():
    q, k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    bias = torch.randn(2, 3, 5)
    want = torch.softmax(q @ k.transpose(-2, -1) / 2 + bias, -1) @ v
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, bias=bias), want, atol=ATOL, rtol=0)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=bias), want, atol=ATOL, rtol=0)


def test_mha_and_layers_compile_without_graph_breaks():
    """torch.compile-friendly: dynamo traces the whole forward in one graph (fullgraph=True)."""
    from attnlab.nn import EncoderLayer

    mha = MultiHeadAttention(E, H, window=3).eval()
    layer = EncoderLayer(E, H, 64, norm_first=True).eval()
    x = torch.randn(B, T, E)
    mask = padding_mask(torch.arange(T)[None].expand(B, -1) < 4)
    for mod, kw in ((mha, dict(mask=mask, causal=True)), (layer, dict(mask=mask))):
        torch._dynamo.reset()
        compiled = torch.compile(mod, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x, **kw), mod(x, **kw), atol=ATOL, rtol=0)


def test_kv_cache_buffer_equals_concatenation_across_growth_and_reorder():
    torch.manual_seed(0)
    chunks = [torch.randn(3, 2, t, 4) for t in (5, 1, 1, 20, 1, 7)]  # crosses the first capacities
    cache = KVCache()
    with torch.no_grad():
        for i in range(len(chunks)):
            k, v = cache.append(chunks[i], -chunks[i])
            full = torch.cat(chunks[: i + 1], dim=-2)
            assert torch.equal(k, full) and torch.equal(v, -full) and len(cache) == full.shape[-2]
            if i == 3:
                idx = torch.tensor([2, 0, 0])
                cache.reorder(idx)
                chunks = [c[idx] for c in chunks]
                assert torch.equal(cache.k, torch.cat(chunks[: i + 1], dim=-2))
    # with gradients flowing, appends concatenate (no in-place writes under autograd)
    x = torch.randn(1, 1, 2, 4, requires_grad=True)
    grad_cache = KVCache()
    grad_cache.append(x, x)
    k, _ = grad_cache.append(x * 2, x)
    k.sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0))


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("cached", [False, True])
def test_empty_batch_self_and_cross_attention(cross, cached):
    """B = 0 gives an empty (0, Tq, C) result, with or without a cache, the same as B > 0 does."""
    mha = MultiHeadAttention(E, H).eval()
    x, ctx = torch.randn(0, T, E), torch.randn(0, S, E)
    cache = KVCache() if cached else None
    out = mha(x, ctx if cross else None, cache=cache)
    assert out.shape == (0, T, E)
    if cached:  # a second step reads (cross) or extends (self) the cache
        assert len(cache) == (S if cross else T)
        assert mha(x[:, :1], ctx if cross else None, cache=cache).shape == (0, 1, E)
        assert len(cache) == (S if cross else T + 1)


def test_sdpa_checks_ranks_before_indexing():
    good = torch.randn(1, H, T, 8)
    for q, k, v in ((torch.randn(8), good, good), (good, torch.randn(8), good), (good, good, torch.randn(8)),
                    (torch.randn(1, 1, 1, H, T, 8), good, good)):
        with pytest.raises(ShapeError, match=r"\(B, H, T, D\)"):
            scaled_dot_product_attention(q, k, v)


def test_one_query_causal_attention_needs_no_mask(monkeypatch):
    """A single right-aligned causal query sees every key: the fused kernel gets no mask at all."""
    import attnlab.nn.attention as attention

    seen = []
    fused = F.scaled_dot_product_attention

    def spy(*args, **kw):
        seen.append(kw.get("attn_mask"))
        return fused(*args, **kw)

    q, k, v = torch.randn(2, H, 1, 8), torch.randn(2, H, S, 8), torch.randn(2, H, S, 8)
    want = scaled_dot_product_attention(q, k, v, need_weights=True)[0]
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, causal=True), want, atol=ATOL, rtol=0)
    assert seen == [None]


def test_kv_cache_valid_flags_follow_appends_and_reorder():
    cache = KVCache()
    assert cache.record_valid(torch.tensor([[True], [False]])).tolist() == [[True], [False]]
    cache.append(torch.randn(2, 1, 1, 4), torch.randn(2, 1, 1, 4))
    cache.reorder(torch.tensor([1, 1, 0]))
    assert cache.record_valid(torch.tensor([[True], [True], [False]])).tolist() == [[False, True], [False, True], [True, False]]
