"""The papers' building blocks, no task logic."""

from attnlab.nn.attention import AdditiveAttention, KVCache, MultiHeadAttention, scaled_dot_product_attention
from attnlab.nn.layers import DecoderLayer, DropPath, EncoderLayer, FeedForward
from attnlab.nn.masks import causal_mask, from_torch_mask, padding_mask, window_mask
from attnlab.nn.position import (
    LearnedPositionalEmbedding,
    PositionEncoding,
    RelativePositionBias,
    RelativePositionBias2D,
    RotaryEmbedding,
    SinCos2DPositionalEncoding,
    SinusoidalPositionalEncoding,
    make_position,
)
from attnlab.nn.transformer import Decoder, Encoder, EncoderDecoder, Transformer, TransformerConfig

__all__ = [
    "AdditiveAttention", "KVCache", "MultiHeadAttention", "scaled_dot_product_attention",
    "DecoderLayer", "DropPath", "EncoderLayer", "FeedForward",
    "causal_mask", "from_torch_mask", "padding_mask", "window_mask",
    "LearnedPositionalEmbedding", "PositionEncoding", "RelativePositionBias", "RelativePositionBias2D",
    "RotaryEmbedding", "SinCos2DPositionalEncoding", "SinusoidalPositionalEncoding", "make_position",
    "Decoder", "Encoder", "EncoderDecoder", "Transformer", "TransformerConfig",
]
