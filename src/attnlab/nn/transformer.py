"""Stacks of layers and the encoder–decoder Transformer of *Attention Is All You Need*."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.nn.attention import KVCache
from attnlab.nn.layers import DecoderLayer, EncoderLayer
from attnlab.nn.masks import padding_mask
from attnlab.nn.position import PositionEncoding, make_position


class Encoder(nn.Module):
    """N encoder layers, then an optional final LayerNorm (needed by pre-LN stacks)."""

    def __init__(self, layers: list[EncoderLayer], norm: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm if norm is not None else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None = None, *, causal: bool = False, pos=None) -> Tensor:
        for layer in self.layers:
            x = layer(x, mask, causal=causal, pos=pos)
        return self.norm(x)


class Decoder(nn.Module):
    """N decoder layers, then an optional final LayerNorm. ``cache`` comes from :meth:`new_cache`."""

    def __init__(self, layers: list[DecoderLayer], norm: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm if norm is not None else nn.Identity()

    def new_cache(self) -> list[tuple[KVCache, KVCache]]:
        return [(KVCache(), KVCache()) for _ in self.layers]

    def forward(self, x: Tensor, memory: Tensor, self_mask: Tensor | None = None, memory_mask: Tensor | None = None,
                *, causal: bool | None = None, pos=None, cache: list[tuple[KVCache, KVCache]] | None = None) -> Tensor:
        """``causal=None``: each layer's default (causal, except layers converted from PyTorch)."""
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, self_mask, memory_mask, causal=causal, pos=pos, cache=None if cache is None else cache[i])
        return self.norm(x)


class EncoderDecoder(nn.Module):
    """The encoder and decoder stacks on embeddings: the twin of ``nn.Transformer``
    (what :func:`attnlab.convert.from_torch` returns for it). Batch-first."""

    def __init__(self, encoder: Encoder, decoder: Decoder) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Tensor | None = None, tgt_mask: Tensor | None = None,
                memory_mask: Tensor | None = None, *, causal: bool | None = None) -> Tensor:
        """src (B, Ts, C), tgt (B, Tt, C) -> (B, Tt, C). Masks are boolean, True = may attend:
        ``src_mask`` for encoder self-attention, ``tgt_mask`` for decoder self-attention (on top
        of the causal mask when ``causal``), ``memory_mask`` for cross-attention. ``causal=None``:
        the decoder layers' default, which for a conversion of ``nn.Transformer`` is not causal
        (as ``nn.Transformer`` without ``tgt_mask``)."""
        memory = self.encoder(src, src_mask)
        return self.decoder(tgt, memory, tgt_mask, memory_mask, causal=causal)


@dataclass
class TransformerConfig:
    """The encoder–decoder Transformer. Defaults are the paper's base model (Table 3)."""

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1
    attn_dropout: float | None = None  # None: same as dropout
    activation: str = "relu"
    norm_first: bool = False  # False: post-LN as in the paper; True: pre-LN
    final_norm: bool | None = None  # LayerNorm after each stack; None: only for pre-LN
    norm_eps: float = 1e-5
    position: str = "sinusoidal"  # see attnlab.nn.position.POSITION_KINDS
    max_len: int = 1024
    share_embeddings: bool = False  # one embedding for source and target (joint vocabulary)
    tie_output: bool = True  # output projection = target embedding matrix (§3.4)
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ConfigError("share_embeddings needs one joint vocabulary: src_vocab_size == tgt_vocab_size")


def build_stacks(cfg: TransformerConfig) -> EncoderDecoder:
    kw = dict(dropout=cfg.dropout, attn_dropout=cfg.attn_dropout, activation=cfg.activation,
              norm_first=cfg.norm_first, norm_eps=cfg.norm_eps)
    final = cfg.norm_first if cfg.final_norm is None else cfg.final_norm
    norm = (lambda: nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps)) if final else (lambda: None)
    enc = Encoder([EncoderLayer(cfg.d_model, cfg.num_heads, cfg.d_ff, **kw) for _ in range(cfg.num_encoder_layers)], norm())
    dec = Decoder([DecoderLayer(cfg.d_model, cfg.num_heads, cfg.d_ff, **kw) for _ in range(cfg.num_decoder_layers)], norm())
    return EncoderDecoder(enc, dec)


class Transformer(nn.Module):
    """Token embeddings (×√d_model) + positions -> encoder; shifted target -> decoder -> logits.

    ``encode`` and ``decode`` are separate so decoders (greedy, beam) run the encoder once and
    the decoder step by step with a key/value cache (:meth:`stepper`).
    """

    # What the family can do (attnlab.models.capabilities): it translates token by token, and
    # its stacks are the layout that the exported encoder/decoder graphs and CTranslate2 read.
    decoding = "autoregressive"
    layout = "transformer"

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.src_embed = nn.Embedding(cfg.src_vocab_size, cfg.d_model)
        self.tgt_embed = self.src_embed if cfg.share_embeddings else nn.Embedding(cfg.tgt_vocab_size, cfg.d_model)
        self.pos: PositionEncoding = make_position(cfg.position, dim=cfg.d_model, num_heads=cfg.num_heads, max_len=cfg.max_len)
        self.drop = nn.Dropout(cfg.dropout)
        stacks = build_stacks(cfg)
        self.encoder, self.decoder = stacks.encoder, stacks.decoder
        self.out = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        self.reset_parameters()
        if cfg.tie_output:
            self.out.weight = self.tgt_embed.weight

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        # Embeddings are scaled by √d_model on use, so start them at unit scale / √d_model.
        for emb in {self.src_embed, self.tgt_embed}:
            nn.init.normal_(emb.weight, std=self.cfg.d_model ** -0.5)

    def embed(self, emb: nn.Embedding, tokens: Tensor, offset: int = 0) -> Tensor:
        """§3.4-3.5: dropout(E[tokens]·√d_model + PE) for tokens starting at position ``offset``;
        ``emb`` is ``src_embed`` or ``tgt_embed``.  (B, T) -> (B, T, C)"""
        return self.drop(self.pos.add(emb(tokens) * math.sqrt(self.cfg.d_model), offset))

    def src_mask(self, src: Tensor) -> Tensor:
        return padding_mask(src != self.cfg.pad_id)  # (B, 1, 1, Ts)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, Ts) token ids -> memory (B, Ts, C) and its padding mask (B, 1, 1, Ts)."""
        mask = self.src_mask(src)
        return self.encoder(self.embed(self.src_embed, src), mask, pos=self.pos), mask

    def decode(self, tgt: Tensor, memory: Tensor, memory_mask: Tensor | None,
               cache: list[tuple[KVCache, KVCache]] | None = None, *, causal: bool = True) -> Tensor:
        """tgt (B, Tt) -> logits (B, Tt, V); target positions holding ``pad_id`` are masked keys.

        With ``cache`` (:meth:`Decoder.new_cache`), ``tgt`` holds only the new tokens; the cache
        remembers which earlier positions were padding, so the logits equal an uncached pass over
        the whole target. ``causal=False``: each position sees the whole target (mask-predict).
        """
        offset = 0 if cache is None else len(cache[0][0])
        valid = tgt != self.cfg.pad_id  # (B, Tt)
        if cache is not None:
            valid = cache[0][0].record_valid(valid)  # (B, offset + Tt)
        x = self.embed(self.tgt_embed, tgt, offset)
        self_mask = None if bool(valid.all()) else padding_mask(valid)  # no padding (decoding): the unmasked kernel
        x = self.decoder(x, memory, self_mask, memory_mask, causal=causal, pos=self.pos, cache=cache)
        return self.out(x)

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        """Teacher forcing: src (B, Ts), tgt (B, Tt) = target shifted right (starts with START)."""
        memory, mask = self.encode(src)
        return self.decode(tgt, memory, mask)

    def stepper(self, src: Tensor, cached: bool = True) -> TransformerStepper:
        """The decoding stepper for the source batch ``src`` (B, Ts) (:mod:`attnlab.decode.stepper`)."""
        return TransformerStepper(self, src, cached)


class TransformerStepper:
    """Incremental decoding of a :class:`Transformer`: the encoder runs once; with ``cached``
    each step feeds only the new token through ``model.decode`` with a key/value cache per
    layer (cross-attention computes the memory's keys and values once); without it each step
    re-runs the decoder on the whole prefix (the baseline the cache is measured against, and
    its test: both give the same logits)."""

    def __init__(self, model: Transformer, src: Tensor, cached: bool = True) -> None:
        self.model = model
        self.memory, self.mask = model.encode(src)  # (B, Ts, C), (B, 1, 1, Ts)
        if bool(self.mask.all()):
            self.mask = None  # no padding in the batch: nothing to mask in cross-attention
        self.cache = model.decoder.new_cache() if cached else None
        self.prefix: Tensor | None = None  # the tokens so far (uncached decoding only)

    def step(self, new: Tensor) -> Tensor:
        if self.cache is not None:
            return self.model.decode(new, self.memory, self.mask, cache=self.cache)[:, -1].float()
        self.prefix = new if self.prefix is None else torch.cat([self.prefix, new], dim=1)
        return self.model.decode(self.prefix, self.memory, self.mask)[:, -1].float()

    def select(self, index: Tensor) -> None:
        self.memory = self.memory.index_select(0, index)
        self.mask = None if self.mask is None else self.mask.index_select(0, index)
        if self.prefix is not None:
            self.prefix = self.prefix.index_select(0, index)
        if self.cache is not None:
            for self_cache, cross_cache in self.cache:
                self_cache.reorder(index)
                cross_cache.reorder(index)
