"""A Transformer language model's decoding step as an exportable graph, and greedy generation with it.

:class:`LMStepGraph`: one new token per sequence, tokens (B, 1), with the key/value cache of
the T tokens so far, self_k / self_v (L, B, H, T, D) (T = 0 before the first token) -> logits
(B, V) of the next token and the cache grown to T + 1. It calls the model's own forward with a
:class:`~attnlab.export.seq2seq.TensorCache` per block, so it computes what the eager cached
step computes. :func:`greedy_generate` feeds the prompt one token at a time, then its own picks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.export.seq2seq import TensorCache


class LMStepGraph(nn.Module):
    """(tokens (B, 1), self_k, self_v) -> (logits (B, V), self_k, self_v) of a TransformerLM."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, self_k: Tensor, self_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cache = [TensorCache(self_k[i], self_v[i]) for i in range(len(self.model.blocks))]
        logits = self.model(tokens, cache=cache)[:, -1]  # (B, V)
        return logits, torch.stack([c.k for c in cache]), torch.stack([c.v for c in cache])


def lm_cache_zeros(model: nn.Module, batch: int, length: int = 0) -> tuple[Tensor, Tensor]:
    """A key/value cache of zeros, two (L, B, H, length, D) tensors; length 0: nothing seen yet."""
    mha = model.blocks[0].self_attn
    z = torch.zeros(len(model.blocks), batch, mha.num_heads, length, mha.head_dim)
    return z, z.clone()


@torch.inference_mode()
def greedy_generate(step: Callable[..., tuple[Tensor, ...]], prompt: Tensor, max_new_tokens: int,
                    cache: tuple[Tensor, Tensor], max_len: int) -> Tensor:
    """prompt (B, T0) -> (B, T0 + max_new_tokens), always the most likely next token, with the
    step graph (called with tensors, returning a tuple). ``max_len``: the model's context; the
    cache is not slid, so T0 + max_new_tokens must fit in it."""
    if prompt.shape[1] + max_new_tokens > max_len:
        raise ConfigError(f"{prompt.shape[1]} prompt + {max_new_tokens} new tokens exceed the context of {max_len}")
    k, v = cache
    out = prompt
    for i in range(prompt.shape[1] + max_new_tokens - 1):
        logits, k, v = step(out[:, i:i + 1], k, v)
        if i + 1 >= prompt.shape[1]:
            out = torch.cat([out, logits.argmax(-1, keepdim=True)], dim=1)
    return out
