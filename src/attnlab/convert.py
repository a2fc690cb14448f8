"""Move ``torch.nn`` Transformer code over: :func:`from_torch` turns PyTorch's modules into
ours with the same weights and the same outputs.

Ours are always batch-first: for a module built with ``batch_first=False`` feed ours the
transposed (B, T, C) inputs. Masks must be converted to our convention
(:func:`attnlab.nn.masks.from_torch_mask`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from attnlab.errors import UnsupportedError
from attnlab.nn.attention import MultiHeadAttention
from attnlab.nn.layers import DecoderLayer, EncoderLayer
from attnlab.nn.transformer import Decoder, Encoder, EncoderDecoder


def _mha(src: nn.MultiheadAttention) -> MultiHeadAttention:
    if not src._qkv_same_embed_dim:
        raise UnsupportedError("from_torch: nn.MultiheadAttention with kdim/vdim different from embed_dim is not supported")
    if src.bias_k is not None or src.add_zero_attn:
        raise UnsupportedError("from_torch: nn.MultiheadAttention with add_bias_kv or add_zero_attn is not supported")
    bias = src.in_proj_bias is not None
    dst = MultiHeadAttention(src.embed_dim, src.num_heads, bias=bias, dropout=src.dropout)
    dst.qkv.weight.data.copy_(src.in_proj_weight.data)
    dst.proj.weight.data.copy_(src.out_proj.weight.data)
    if bias:
        dst.qkv.bias.data.copy_(src.in_proj_bias.data)
        dst.proj.bias.data.copy_(src.out_proj.bias.data)
    return dst.to(src.in_proj_weight.dtype)


def _activation(layer) -> str:
    act = layer.activation
    if act is F.relu or isinstance(act, nn.ReLU):
        return "relu"
    if act is F.gelu or (isinstance(act, nn.GELU) and act.approximate == "none"):
        return "gelu"
    raise UnsupportedError(f"from_torch: activation {act!r} is not supported (relu or gelu)")


def _layer_kwargs(src) -> dict:
    return dict(
        dropout=src.dropout.p, activation=_activation(src), norm_first=src.norm_first,
        norm_eps=src.norm1.eps, bias=src.linear1.bias is not None,
    )


def _copy(dst: nn.Module, src: nn.Module) -> None:
    dst.load_state_dict(src.state_dict())


def _copy_common(dst, src) -> None:
    _copy(dst.ff.fc1, src.linear1)
    _copy(dst.ff.fc2, src.linear2)
    _copy(dst.norm1, src.norm1)
    _copy(dst.norm2, src.norm2)


def _encoder_layer(src: nn.TransformerEncoderLayer) -> EncoderLayer:
    sa = src.self_attn
    dst = EncoderLayer(sa.embed_dim, sa.num_heads, src.linear1.out_features, **_layer_kwargs(src))
    dst.self_attn = _mha(sa)
    _copy_common(dst, src)
    return dst


def _decoder_layer(src: nn.TransformerDecoderLayer) -> DecoderLayer:
    sa = src.self_attn
    dst = DecoderLayer(sa.embed_dim, sa.num_heads, src.linear1.out_features, **_layer_kwargs(src))
    dst.self_attn = _mha(sa)
    dst.self_attn.causal = True
    dst.cross_attn = _mha(src.multihead_attn)
    _copy_common(dst, src)
    _copy(dst.norm3, src.norm3)
    return dst


def _norm(src_norm):
    if src_norm is None:
        return None
    if not isinstance(src_norm, nn.LayerNorm):
        raise UnsupportedError(f"from_torch: final norm {type(src_norm).__name__} is not supported (LayerNorm)")
    dst = nn.LayerNorm(src_norm.normalized_shape, eps=src_norm.eps, elementwise_affine=src_norm.elementwise_affine,
                       bias=src_norm.bias is not None)
    _copy(dst, src_norm)
    return dst


def from_torch(module: nn.Module) -> nn.Module:
    """Convert ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``/``DecoderLayer``,
    ``nn.TransformerEncoder``/``Decoder`` or ``nn.Transformer`` into the attnlab equivalent
    (``MultiHeadAttention``, ``EncoderLayer``/``DecoderLayer``, ``Encoder``/``Decoder``,
    ``EncoderDecoder``) with copied weights. The result is in the source's train/eval mode."""
    if isinstance(module, nn.MultiheadAttention):
        out = _mha(module)
    elif isinstance(module, nn.TransformerEncoderLayer):
        out = _encoder_layer(module)
    elif isinstance(module, nn.TransformerDecoderLayer):
        out = _decoder_layer(module)
    elif isinstance(module, nn.TransformerEncoder):
        out = Encoder([_encoder_layer(m) for m in module.layers], _norm(module.norm))
    elif isinstance(module, nn.TransformerDecoder):
        out = Decoder([_decoder_layer(m) for m in module.layers], _norm(module.norm))
    elif isinstance(module, nn.Transformer):
        out = EncoderDecoder(from_torch(module.encoder), from_torch(module.decoder))
    else:
        raise UnsupportedError(
            f"from_torch: cannot convert {type(module).__name__}; supported: MultiheadAttention, "
            "TransformerEncoderLayer, TransformerDecoderLayer, TransformerEncoder, TransformerDecoder, Transformer"
        )
    return out.train(module.training)
