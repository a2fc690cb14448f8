"""Layers, stacks and the encoder–decoder Transformer against nn.Transformer* with identical
weights (via attnlab.convert.from_torch). Tolerance: 1e-5 absolute, float32, eval mode."""

import math

import pytest
import torch
from torch import nn

from attnlab.convert import from_torch
from attnlab.errors import ConfigError, UnsupportedError
from attnlab.nn import DropPath, FeedForward, Transformer, TransformerConfig
from attnlab.nn.masks import from_torch_mask, padding_mask

ATOL = 1e-5
B, S, T, E, H, FF = 3, 7, 5, 32, 4, 64


def pad(b, t):
    m = torch.zeros(b, t, dtype=torch.bool)
    for i in range(b):
        m[i, t - i:] = True  # PyTorch convention: True = padding
    return m


def causal_t(t):
    return torch.ones(t, t, dtype=torch.bool).triu(1)  # PyTorch convention


def bf(x, batch_first):
    return x if batch_first else x.transpose(0, 1)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_decoder_equals_nn_transformer(norm_first, batch_first, activation):
    ref = nn.Transformer(E, H, 2, 2, FF, dropout=0.1, activation=activation, batch_first=batch_first,
                         norm_first=norm_first).eval()
    ours = from_torch(ref)
    assert not ours.training
    src, tgt = torch.randn(B, S, E), torch.randn(B, T, E)
    spm = pad(B, S)
    want = ref(bf(src, batch_first), bf(tgt, batch_first), tgt_mask=causal_t(T), src_key_padding_mask=spm,
               memory_key_padding_mask=spm)
    m = from_torch_mask(spm, key_padding=True)
    got = ours(src, tgt, src_mask=m, tgt_mask=from_torch_mask(causal_t(T)), memory_mask=m)
    torch.testing.assert_close(got, bf(want, batch_first), atol=ATOL, rtol=0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_layers_and_stacks_equal_torch(norm_first):
    enc_layer = nn.TransformerEncoderLayer(E, H, FF, batch_first=True, norm_first=norm_first).eval()
    dec_layer = nn.TransformerDecoderLayer(E, H, FF, batch_first=True, norm_first=norm_first).eval()
    enc = nn.TransformerEncoder(enc_layer, 2, norm=nn.LayerNorm(E), enable_nested_tensor=False).eval()
    dec = nn.TransformerDecoder(dec_layer, 2).eval()
    x, mem = torch.randn(B, S, E), torch.randn(B, S, E)
    y = torch.randn(B, T, E)
    spm = pad(B, S)
    m = from_torch_mask(spm, key_padding=True)
    torch.testing.assert_close(from_torch(enc_layer)(x, m), enc_layer(x, src_key_padding_mask=spm), atol=ATOL, rtol=0)
    torch.testing.assert_close(from_torch(enc)(x, m), enc(x, src_key_padding_mask=spm), atol=ATOL, rtol=0)
    tm = from_torch_mask(causal_t(T))
    want = dec_layer(y, mem, tgt_mask=causal_t(T), memory_key_padding_mask=spm)
    torch.testing.assert_close(from_torch(dec_layer)(y, mem, tm, memory_mask=m), want, atol=ATOL, rtol=0)
    want = dec(y, mem, tgt_mask=causal_t(T), memory_key_padding_mask=spm)
    torch.testing.assert_close(from_torch(dec)(y, mem, tm, memory_mask=m), want, atol=ATOL, rtol=0)


def test_full_transformer_equals_embeddings_plus_nn_transformer():
    """Our Transformer = Embedding·√d + sinusoids -> nn.Transformer (same weights) -> W_out."""
    cfg = TransformerConfig(src_vocab_size=11, tgt_vocab_size=13, d_model=E, num_heads=H, num_encoder_layers=2,
                            num_decoder_layers=2, d_ff=FF, dropout=0.0, final_norm=True)
    ours = Transformer(cfg).eval()
    ref = nn.Transformer(E, H, 2, 2, FF, dropout=0.0, batch_first=True).eval()
    # our weights -> a structurally identical twin -> the reference
    twin = from_torch(ref)
    twin.encoder.load_state_dict(ours.encoder.state_dict())
    twin.decoder.load_state_dict(ours.decoder.state_dict())
    _copy_ours_into_torch(twin, ref)
    src = torch.randint(1, 11, (B, S))
    src[0, -2:] = 0  # padding
    tgt = torch.randint(1, 13, (B, T))
    pe = ours.pos.table[: max(S, T)]
    src_e = ours.src_embed(src) * math.sqrt(E) + pe[:S]
    tgt_e = ours.tgt_embed(tgt) * math.sqrt(E) + pe[:T]
    h = ref(src_e, tgt_e, tgt_mask=causal_t(T), src_key_padding_mask=src == 0, memory_key_padding_mask=src == 0)
    want = h @ ours.tgt_embed.weight.T  # tied output projection
    torch.testing.assert_close(ours(src, tgt), want, atol=ATOL, rtol=0)
    assert ours.out.weight is ours.tgt_embed.weight


def _copy_ours_into_torch(twin, ref):
    """Write our (twin) weights into the nn.Transformer: the inverse of from_torch's copy."""
    def mha(o, t):
        t.in_proj_weight.data.copy_(o.qkv.weight)
        t.in_proj_bias.data.copy_(o.qkv.bias)
        t.out_proj.load_state_dict(o.proj.state_dict())

    for o, t in zip(twin.encoder.layers, ref.encoder.layers):
        mha(o.self_attn, t.self_attn)
        t.linear1.load_state_dict(o.ff.fc1.state_dict()); t.linear2.load_state_dict(o.ff.fc2.state_dict())  # noqa: E702
        t.norm1.load_state_dict(o.norm1.state_dict()); t.norm2.load_state_dict(o.norm2.state_dict())  # noqa: E702
    for o, t in zip(twin.decoder.layers, ref.decoder.layers):
        mha(o.self_attn, t.self_attn)
        mha(o.cross_attn, t.multihead_attn)
        t.linear1.load_state_dict(o.ff.fc1.state_dict()); t.linear2.load_state_dict(o.ff.fc2.state_dict())  # noqa: E702
        for i in (1, 2, 3):
            getattr(t, f"norm{i}").load_state_dict(getattr(o, f"norm{i}").state_dict())
    ref.encoder.norm.load_state_dict(twin.encoder.norm.state_dict())
    ref.decoder.norm.load_state_dict(twin.decoder.norm.state_dict())


@pytest.mark.parametrize("position", ["sinusoidal", "learned", "rotary", "relative", "none"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_cached_decoding_equals_full(position, norm_first):
    cfg = TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=E, num_heads=H, num_encoder_layers=2,
                            num_decoder_layers=2, d_ff=FF, norm_first=norm_first, position=position, share_embeddings=True)
    model = Transformer(cfg).eval()
    src = torch.randint(1, 20, (2, S))
    src[1, -3:] = 0
    tgt = torch.randint(1, 20, (2, T))
    memory, mmask = model.encode(src)
    full = model.decode(tgt, memory, mmask)
    cache = model.decoder.new_cache()
    steps = [model.decode(tgt[:, i : i + 1], memory, mmask, cache=cache) for i in range(T)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=ATOL, rtol=0)


def test_post_ln_has_no_final_norm_by_default_pre_ln_has():
    base = dict(src_vocab_size=5, tgt_vocab_size=5, d_model=E, num_heads=H, num_encoder_layers=1, num_decoder_layers=1, d_ff=FF)
    assert isinstance(Transformer(TransformerConfig(**base)).encoder.norm, nn.Identity)
    assert isinstance(Transformer(TransformerConfig(**base, norm_first=True)).encoder.norm, nn.LayerNorm)
    assert isinstance(Transformer(TransformerConfig(**base, norm_first=True, final_norm=False)).decoder.norm, nn.Identity)


def test_padding_does_not_change_translation_of_real_tokens():
    cfg = TransformerConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=E, num_heads=H, num_encoder_layers=2,
                            num_decoder_layers=2, d_ff=FF)
    model = Transformer(cfg).eval()
    src = torch.randint(1, 20, (1, S))
    tgt = torch.randint(1, 20, (1, T))
    padded_src = torch.cat([src, torch.zeros(1, 4, dtype=torch.long)], 1)
    padded_tgt = torch.cat([tgt, torch.zeros(1, 2, dtype=torch.long)], 1)
    torch.testing.assert_close(model(padded_src, padded_tgt)[:, :T], model(src, tgt), atol=ATOL, rtol=0)


def test_feedforward_and_droppath():
    ff = FeedForward(8, 16, "gelu")
    x = torch.randn(4, 3, 8)
    torch.testing.assert_close(ff(x), ff.fc2(torch.nn.functional.gelu(ff.fc1(x))))
    dp = DropPath(0.5)
    dp.eval()
    assert torch.equal(dp(x), x)
    dp.train()
    y = dp(torch.ones(2000, 1, 1))
    kept = y.flatten() != 0
    assert torch.allclose(y.flatten()[kept], torch.tensor(2.0)) and 0.4 < kept.float().mean() < 0.6
    with pytest.raises(ValueError):
        DropPath(1.0)


def test_config_errors_and_unsupported_modules():
    with pytest.raises(ConfigError, match="not divisible"):
        TransformerConfig(src_vocab_size=5, tgt_vocab_size=5, d_model=30, num_heads=4)
    with pytest.raises(ConfigError, match="joint vocabulary"):
        TransformerConfig(src_vocab_size=5, tgt_vocab_size=6, share_embeddings=True)
    with pytest.raises(ConfigError, match="unknown position"):
        Transformer(TransformerConfig(src_vocab_size=5, tgt_vocab_size=5, d_model=E, num_heads=H, position="alibi"))
    with pytest.raises(UnsupportedError, match="cannot convert Linear"):
        from_torch(nn.Linear(3, 3))
    with pytest.raises(UnsupportedError, match="kdim"):
        from_torch(nn.MultiheadAttention(E, H, kdim=8, vdim=8))
    with pytest.raises(UnsupportedError, match="activation"):
        from_torch(nn.TransformerEncoderLayer(E, H, FF, activation=torch.tanh))


def test_transformer_masks_target_padding_keys():
    cfg = TransformerConfig(src_vocab_size=9, tgt_vocab_size=9, d_model=E, num_heads=H, num_encoder_layers=1,
                            num_decoder_layers=1, d_ff=FF)
    model = Transformer(cfg)
    assert model.src_mask(torch.tensor([[3, 0]])).tolist() == padding_mask(torch.tensor([[True, False]])).tolist()


def _convertible(**kw):
    """Each convertible nn.Transformer* module (batch-first), built with ``kw``, with how it and its
    conversion are called on (x, mem): encoders on x, decoders on (x, mem), nn.Transformer on (mem, x)."""
    enc_layer = nn.TransformerEncoderLayer(E, H, FF, batch_first=True, **kw)
    dec_layer = nn.TransformerDecoderLayer(E, H, FF, batch_first=True, **kw)
    enc, dec = (lambda m, x, mem: m(x)), (lambda m, x, mem: m(x, mem))
    return [(enc_layer, enc), (dec_layer, dec), (nn.TransformerEncoder(enc_layer, 2, enable_nested_tensor=False), enc),
            (nn.TransformerDecoder(dec_layer, 2), dec),
            (nn.Transformer(E, H, 1, 1, FF, batch_first=True, **kw), lambda m, x, mem: m(mem, x))]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
def test_from_torch_keeps_dtype_and_bias(bias, norm_first):
    """A float64 module converts to float64 everywhere (attention, feed-forward, norms) and gives
    the same outputs to 1e-10; ``bias=False`` modules (no bias in Linear nor LayerNorm) convert."""
    x, mem = torch.randn(B, T, E, dtype=torch.float64), torch.randn(B, S, E, dtype=torch.float64)
    for ref, call in _convertible(bias=bias, norm_first=norm_first, dtype=torch.float64):
        ref.eval()
        ours = from_torch(ref)
        assert {p.dtype for p in ours.parameters()} == {torch.float64}, type(ref).__name__
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
        torch.testing.assert_close(call(ours, x, mem), call(ref, x, mem), atol=1e-10, rtol=0)


def test_from_torch_keeps_device():
    for ref, _ in _convertible(device="meta"):
        assert {p.device.type for p in from_torch(ref).parameters()} == {"meta"}, type(ref).__name__


def test_converted_decoder_attends_like_torch_for_the_same_call():
    """nn.TransformerDecoder* and nn.Transformer without tgt_mask are not causal: neither is the
    conversion called without a mask; a converted mask, or causal=True, makes both causal."""
    x, mem = torch.randn(B, T, E), torch.randn(B, S, E)
    for ref, call in _convertible()[1::2]:  # the decoder layer, the decoder, the transformer
        ref.eval()
        torch.testing.assert_close(call(from_torch(ref), x, mem), call(ref, x, mem), atol=ATOL, rtol=0)
    dec = _convertible()[3][0].eval()
    ours = from_torch(dec)
    want = dec(x, mem, tgt_mask=causal_t(T))
    torch.testing.assert_close(ours(x, mem, from_torch_mask(causal_t(T))), want, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours(x, mem, causal=True), want, atol=ATOL, rtol=0)
    assert not torch.allclose(ours(x, mem), want, atol=1e-3)


def test_decode_without_causal_mask_sees_the_whole_target():
    """decode(causal=False) (mask-predict) is the decoder without its causal mask, padding still
    masked: it equals the stacks run by hand, and an earlier position sees a later token."""
    cfg = TransformerConfig(src_vocab_size=9, tgt_vocab_size=9, d_model=E, num_heads=H, num_encoder_layers=1,
                            num_decoder_layers=2, d_ff=FF, position="rotary")
    model = Transformer(cfg).eval()
    src, tgt = torch.randint(1, 9, (2, S)), torch.randint(1, 9, (2, T))
    tgt[1, -2:] = 0
    memory, mmask = model.encode(src)
    x = model.embed(model.tgt_embed, tgt)
    want = model.out(model.decoder(x, memory, padding_mask(tgt != 0), mmask, causal=False, pos=model.pos))
    got = model.decode(tgt, memory, mmask, causal=False)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    later = tgt.clone()
    later[0, -1] = later[0, -1] % 8 + 1
    assert not torch.allclose(model.decode(later, memory, mmask, causal=False)[0, 0], got[0, 0])
    torch.testing.assert_close(model.decode(later, memory, mmask)[0, 0], model.decode(tgt, memory, mmask)[0, 0])
