"""Property tests (hypothesis) over random shapes for masks, padding, causality, caching,
sparse/local attention and the sinusoidal table. Tolerance 1e-5 absolute, float32."""

import functools
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.nn import KVCache, MultiHeadAttention, Transformer, TransformerConfig, scaled_dot_product_attention
from attnlab.nn.masks import padding_mask
from attnlab.nn.position import RotaryEmbedding, sinusoidal_table

ATOL = 1e-5
SETTINGS = settings(max_examples=25, deadline=None)
heads = st.sampled_from([1, 2, 4])
head_dims = st.sampled_from([4, 8])
lengths = st.integers(1, 12)


@SETTINGS
@given(b=st.integers(1, 3), h=heads, d=head_dims, tq=lengths, tk=lengths, extra=st.integers(1, 5), seed=st.integers(0, 10**6))
def test_padding_never_changes_real_positions(b, h, d, tq, tk, extra, seed):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, d, generator=g) for t in (tq, tk, tk))
    ref = scaled_dot_product_attention(q, k, v)
    k_pad = torch.cat([k, 100 * torch.randn(b, h, extra, d, generator=g)], 2)
    v_pad = torch.cat([v, 100 * torch.randn(b, h, extra, d, generator=g)], 2)
    valid = torch.arange(tk + extra)[None].expand(b, -1) < tk
    for need_weights in (False, True):
        out = scaled_dot_product_attention(q, k_pad, v_pad, mask=padding_mask(valid), need_weights=need_weights)
        out = out[0] if need_weights else out
        torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)


@SETTINGS
@given(t=st.integers(2, 10), h=heads, seed=st.integers(0, 10**6), window=st.one_of(st.none(), st.integers(0, 4)),
       topk=st.one_of(st.none(), st.integers(1, 6)))
def test_causal_attention_never_leaks_the_future(t, h, seed, window, topk):
    torch.manual_seed(seed)
    mha = MultiHeadAttention(8 * h, h, window=window, topk=topk).eval()
    x = torch.randn(1, t, 8 * h, requires_grad=True)
    out = mha(x, causal=True)
    for i in range(t):
        (g,) = torch.autograd.grad(out[0, i].sum(), x, retain_graph=True)
        assert torch.all(g[0, i + 1:] == 0), f"output {i} depends on later inputs"


@SETTINGS
@given(b=st.integers(1, 3), h=heads, t=lengths, seed=st.integers(0, 10**6), need_weights=st.booleans())
def test_fully_masked_rows_stay_finite(b, h, t, seed, need_weights):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, 4, generator=g) for _ in range(3))
    mask = torch.rand(b, 1, t, t, generator=g) < 0.3  # many rows end up all-False
    out = scaled_dot_product_attention(q, k, v, mask=mask, need_weights=need_weights)
    out = out[0] if need_weights else out
    assert torch.isfinite(out).all()
    dead = ~mask.any(-1)  # (b, 1, t)
    assert torch.all(out.masked_select(dead[..., None].expand_as(out)) == 0)


@SETTINGS
@given(t=st.integers(1, 10), chunks=st.lists(st.integers(1, 4), min_size=1, max_size=4), h=heads,
       seed=st.integers(0, 10**6), rotary=st.booleans())
def test_cached_step_decoding_equals_full_recomputation(t, chunks, h, seed, rotary):
    torch.manual_seed(seed)
    mha = MultiHeadAttention(8 * h, h, causal=True).eval()
    pos = RotaryEmbedding(8) if rotary else None
    total = t + sum(chunks)
    x = torch.randn(2, total, 8 * h)
    full = mha(x, pos=pos)
    cache, outs, start = KVCache(), [], 0
    for n in [t, *chunks]:  # a prompt, then pieces of various sizes
        outs.append(mha(x[:, start:start + n], pos=pos, cache=cache))
        start += n
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=ATOL, rtol=0)


@SETTINGS
@given(tq=lengths, tk=lengths, h=heads, seed=st.integers(0, 10**6), more=st.integers(0, 5))
def test_topk_and_window_at_least_length_equal_dense(tq, tk, h, seed, more):
    torch.manual_seed(seed)
    dense = MultiHeadAttention(8 * h, h).eval()
    sparse = MultiHeadAttention(8 * h, h, topk=tk + more).eval()
    local = MultiHeadAttention(8 * h, h, window=max(tq, tk) + more).eval()
    sparse.load_state_dict(dense.state_dict())
    local.load_state_dict(dense.state_dict())
    x, ctx = torch.randn(2, tq, 8 * h), torch.randn(2, tk, 8 * h)
    want = dense(x, ctx)
    torch.testing.assert_close(sparse(x, ctx), want, atol=ATOL, rtol=0)
    torch.testing.assert_close(local(x, ctx), want, atol=ATOL, rtol=0)


@SETTINGS
@given(length=st.integers(1, 64), half=st.integers(1, 32))
def test_sinusoidal_table_equals_the_formula(length, half):
    d = 2 * half
    table = sinusoidal_table(length, d)
    pos = length - 1
    for i in range(half):
        angle = pos / 10000 ** (2 * i / d)
        assert math.isclose(table[pos, 2 * i].item(), math.sin(angle), abs_tol=1e-6)
        assert math.isclose(table[pos, 2 * i + 1].item(), math.cos(angle), abs_tol=1e-6)


@SETTINGS
@given(shift=st.integers(0, 50), seed=st.integers(0, 10**6))
def test_rotary_scores_depend_only_on_relative_position(shift, seed):
    g = torch.Generator().manual_seed(seed)
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 4, 8, generator=g), torch.randn(1, 1, 4, 8, generator=g)
    q0, k0 = rope.rotate(q, k, 0)
    q1, k1 = rope.rotate(q, k, shift)
    torch.testing.assert_close(q0 @ k0.transpose(-2, -1), q1 @ k1.transpose(-2, -1), atol=1e-4, rtol=0)


@functools.cache
def _tiny_transformer(position: str, norm_first: bool) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(src_vocab_size=7, tgt_vocab_size=7, d_model=16, num_heads=2, num_encoder_layers=1,
                            num_decoder_layers=2, d_ff=32, position=position, norm_first=norm_first, pad_id=0)
    return Transformer(cfg).eval()


@SETTINGS
@given(position=st.sampled_from(["sinusoidal", "rotary", "relative"]), norm_first=st.booleans(),
       chunks=st.lists(st.integers(1, 3), min_size=1, max_size=5), src_len=st.integers(1, 6),
       pads=st.lists(st.integers(0, 14), max_size=4), seed=st.integers(0, 10**6))
def test_cached_transformer_decode_equals_full_decode_with_pads_in_the_prefix(position, norm_first, chunks, src_len,
                                                                             pads, seed):
    """Transformer.decode fed the target piece by piece through its cache gives the logits of one
    uncached pass over the whole target, also where the target holds the pad id (masked keys)."""
    model = _tiny_transformer(position, norm_first)
    g = torch.Generator().manual_seed(seed)
    t = sum(chunks)
    tgt = torch.randint(1, 7, (2, t), generator=g)
    for i in pads:
        tgt[i % 2, i % t] = 0  # the pad id, anywhere in either row
    src = torch.randint(0, 7, (2, src_len), generator=g)
    src[:, 0] = 1  # every source has a real token
    with torch.no_grad():
        memory, mmask = model.encode(src)
        full = model.decode(tgt, memory, mmask)
        cache, steps, start = model.decoder.new_cache(), [], 0
        for n in chunks:
            steps.append(model.decode(tgt[:, start:start + n], memory, mmask, cache=cache))
            start += n
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=ATOL, rtol=0)
