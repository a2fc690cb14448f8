"""The encoder–decoder Transformer as two exportable graphs, and greedy decoding with them.

An exported graph is a pure function of tensors, so the decoder's key/value cache (a Python
:class:`~attnlab.nn.KVCache` per layer in eager mode) becomes explicit inputs and outputs:

- :class:`EncoderGraph`: src (B, Ts) -> memory_mask (B, 1, 1, Ts) bool, and the
  cross-attention keys/values of every decoder layer, cross_k / cross_v (L, B, H, Ts, D),
  computed once per sentence as the eager decoder does.
- :class:`DecoderStepGraph`: one new token per sentence, tokens (B, 1), with the mask, the
  cross keys/values and the self-attention cache self_k / self_v (L, B, H, T, D) of the T
  tokens so far (T = 0 at the first step) -> logits (B, V) of the next token and the cache
  grown to T + 1.

Both call the model's own modules (embedding, positions, decoder layers, output layer) in the
order :class:`attnlab.nn.transformer.TransformerStepper` does, through :class:`TensorCache`, so
the exported step computes what the eager cached step computes. :func:`greedy_decode` runs
the two pieces (an ONNX Runtime session, a ``.pt2`` program or the wrappers themselves).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from attnlab.decode.search import SearchConfig, forbid_special
from attnlab.nn.attention import KVCache
from attnlab.nn.transformer import Transformer


class TensorCache:
    """The :class:`KVCache` interface over explicit tensors k, v (B, H, T, D), for export:
    ``append`` concatenates (no preallocated buffer, no Python state that a graph cannot hold)."""

    def __init__(self, k: Tensor, v: Tensor) -> None:
        self.k, self.v = k, v

    def __len__(self) -> int:
        return self.k.shape[-2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k, self.v = torch.cat([self.k, k], dim=-2), torch.cat([self.v, v], dim=-2)
        return self.k, self.v


class EncoderGraph(nn.Module):
    """src (B, Ts) -> (memory_mask (B, 1, 1, Ts), cross_k, cross_v (L, B, H, Ts, D))."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        memory, mask = self.model.encode(src)  # (B, Ts, C), (B, 1, 1, Ts)
        ks, vs = [], []
        for layer in self.model.decoder.layers:
            cache = KVCache()  # cross-attention fills it with the memory's keys/values (its output is unused)
            layer.cross_attn(memory[:, :1], memory, cache=cache)
            ks.append(cache.k)
            vs.append(cache.v)
        return mask, torch.stack(ks), torch.stack(vs)


class DecoderStepGraph(nn.Module):
    """(tokens (B, 1), memory_mask, self_k, self_v, cross_k, cross_v) -> (logits (B, V), self_k, self_v)."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, memory_mask: Tensor, self_k: Tensor, self_v: Tensor, cross_k: Tensor,
                cross_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m = self.model
        cache = [(TensorCache(self_k[i], self_v[i]), TensorCache(cross_k[i], cross_v[i])) for i in range(len(m.decoder.layers))]
        # No target padding mask: greedy decoding feeds the start token and generated tokens, and
        # search never generates the pad token (decode.search.forbid_special).
        x = m.embed(m.tgt_embed, tokens, self_k.shape[-2])  # (B, 1, C) at position T
        # Cross-attention reads the cached keys/values; the memory argument only has its shape
        # checked, so an empty (B, 0, C) stand-in keeps it out of the graph's inputs.
        memory = x.new_zeros(x.shape[0], 0, x.shape[-1])
        # One query that may see every cached position: no causal mask (as the eager cached step).
        x = m.decoder(x, memory, None, memory_mask, causal=False, pos=m.pos, cache=cache)
        logits = m.out(x)[:, -1]  # (B, V)
        return logits, torch.stack([c.k for c, _ in cache]), torch.stack([c.v for c, _ in cache])


def self_cache_zeros(model: Transformer, batch: int, length: int = 0) -> tuple[Tensor, Tensor]:
    """A self-attention cache of zeros, two (L, B, H, length, D) tensors; length 0: before the first step."""
    mha = model.decoder.layers[0].self_attn
    z = torch.zeros(len(model.decoder.layers), batch, mha.num_heads, length, mha.head_dim)
    return z, z.clone()


@torch.inference_mode()
def greedy_decode(encoder: Callable[..., tuple[Tensor, ...]], step: Callable[..., tuple[Tensor, ...]], src: Tensor,
                  self_cache: tuple[Tensor, Tensor], cfg: SearchConfig | None = None, **kw) -> list[list[int]]:
    """Greedy decoding with the two pieces (each called with tensors, returning a tuple of tensors).

    Same stopping rules as :func:`attnlab.decode.search.greedy_search` (the end token, at most
    ``max_len_a * source length + max_len_b`` new tokens); every sentence stays in the batch
    until all are done, and the tokens after its end are dropped. ``self_cache``: the empty cache,
    :func:`self_cache_zeros`; ``kw``: :class:`~attnlab.decode.search.SearchConfig` fields.
    """
    cfg = SearchConfig(**kw) if cfg is None else cfg
    b = src.shape[0]
    limits = (cfg.max_len_a * (src != cfg.pad).sum(1).float() + cfg.max_len_b).long().clamp(min=1)
    if cfg.max_len is not None:
        limits = limits.clamp(max=cfg.max_len)
    mask, cross_k, cross_v = encoder(src)
    self_k, self_v = self_cache
    tok = torch.full((b, 1), cfg.bos, dtype=torch.long)
    out = torch.empty(b, 0, dtype=torch.long)
    done = torch.zeros(b, dtype=torch.bool)
    for t in range(1, int(limits.max()) + 1):
        logits, self_k, self_v = step(tok, mask, self_k, self_v, cross_k, cross_v)
        tok = forbid_special(logits.float(), cfg).argmax(-1, keepdim=True)  # (B, 1), as greedy_search
        out = torch.cat([out, tok], dim=1)
        done |= limits <= t
        if cfg.eos is not None:
            done |= tok[:, 0] == cfg.eos
        if bool(done.all()):
            break
    result = []
    for row, lim in zip(out.tolist(), limits.tolist()):
        row = row[:lim]
        if cfg.eos is not None and cfg.eos in row:
            row = row[:row.index(cfg.eos)]
        result.append(row)
    return result
