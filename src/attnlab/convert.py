"""Move ``torch.nn`` Transformer code over: :func:`from_torch` turns PyTorch's modules into
ours with the same weights and the same outputs.

Ours are always batch-first: for a module built with ``batch_first=False`` feed ours the
transposed (B, T, C) inputs. Masks must be converted to our convention
(:func:`attnlab.nn.masks.from_torch_mask`). The conversion is called as the source is: a
converted ``nn.TransformerDecoder*``/``nn.Transformer`` is not causal unless given a target
mask (``from_torch_mask(tgt_mask)``) or ``causal=True``, as PyTorch's without ``tgt_mask``;
our own decoders (:class:`attnlab.nn.Transformer`) are causal by default.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.errors import UnsupportedError
from attnlab.nn.attention import MultiHeadAttention
from attnlab.nn.layers import DecoderLayer, EncoderLayer
from attnlab.nn.transformer import Decoder, Encoder, EncoderDecoder


def _assign(dst: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    """``dst`` with copies of ``state``'s tensors, each keeping its dtype and device."""
    dst.load_state_dict({k: v.detach().clone() for k, v in state.items()}, assign=True)
    return dst


def _mha(src: nn.MultiheadAttention) -> MultiHeadAttention:
    if not src._qkv_same_embed_dim:
        raise UnsupportedError("from_torch: nn.MultiheadAttention with kdim/vdim different from embed_dim is not supported")
    if src.bias_k is not None or src.add_zero_attn:
        raise UnsupportedError("from_torch: nn.MultiheadAttention with add_bias_kv or add_zero_attn is not supported")
    bias = src.in_proj_bias is not None
    state = {"qkv.weight": src.in_proj_weight, "proj.weight": src.out_proj.weight}
    if bias:
        state.update({"qkv.bias": src.in_proj_bias, "proj.bias": src.out_proj.bias})
    return _assign(MultiHeadAttention(src.embed_dim, src.num_heads, bias=bias, dropout=src.dropout), state)


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


def _copy_common(dst, src) -> None:
    """Feed-forward and norms; norms are replaced, so a LayerNorm without bias (``bias=False``) stays one."""
    _assign(dst.ff.fc1, src.linear1.state_dict())
    _assign(dst.ff.fc2, src.linear2.state_dict())
    dst.norm1, dst.norm2 = _norm(src.norm1), _norm(src.norm2)


def _encoder_layer(src: nn.TransformerEncoderLayer) -> EncoderLayer:
    sa = src.self_attn
    dst = EncoderLayer(sa.embed_dim, sa.num_heads, src.linear1.out_features, **_layer_kwargs(src))
    dst.self_attn = _mha(sa)
    _copy_common(dst, src)
    return dst


def _decoder_layer(src: nn.TransformerDecoderLayer) -> DecoderLayer:
    sa = src.self_attn
    dst = DecoderLayer(sa.embed_dim, sa.num_heads, src.linear1.out_features, **_layer_kwargs(src))
    dst.self_attn = _mha(sa)  # not causal by default, as nn.TransformerDecoderLayer without tgt_mask
    dst.cross_attn = _mha(src.multihead_attn)
    _copy_common(dst, src)
    dst.norm3 = _norm(src.norm3)
    return dst


def _norm(src_norm):
    if src_norm is None:
        return None
    if not isinstance(src_norm, nn.LayerNorm):
        raise UnsupportedError(f"from_torch: norm {type(src_norm).__name__} is not supported (LayerNorm)")
    dst = nn.LayerNorm(src_norm.normalized_shape, eps=src_norm.eps, elementwise_affine=src_norm.elementwise_affine,
                       bias=src_norm.bias is not None)
    return _assign(dst, src_norm.state_dict())


def from_torch(module: nn.Module) -> nn.Module:
    """Convert ``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``/``DecoderLayer``,
    ``nn.TransformerEncoder``/``Decoder`` or ``nn.Transformer`` into the attnlab equivalent
    (``MultiHeadAttention``, ``EncoderLayer``/``DecoderLayer``, ``Encoder``/``Decoder``,
    ``EncoderDecoder``) with copied weights, each in the source's dtype and on its device. The
    result is in the source's train/eval mode; converted decoders are not causal unless asked (see
    the module docstring)."""
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
