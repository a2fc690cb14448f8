"""The one decoding-step protocol, for language models and encoder–decoder models alike.

A *stepper* holds what a model needs between decoding steps for N rows — a recurrent hidden
state, a key/value cache per layer, an encoder memory — and exposes two methods:

    stepper.step(new)       new tokens (N, t) appended to every row -> logits (N, V) of the next token
    stepper.select(index)   keep / reorder / copy rows (finished rows leave; beams are copied)

The first call gives the prompt (a language model) or the start token (a decoder), then each
call one token per row. Greedy search, beam search and sampling (:mod:`attnlab.decode.search`,
:mod:`attnlab.decode.sampling`) are written once against this protocol. Every model that
decodes provides one: language models ``model.stepper(cached=True)``, translation models
``make_stepper(model, src, cached=True)`` (:class:`TransformerStepper` for
:class:`attnlab.nn.Transformer`, ``model.stepper(src, cached)`` for the others).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from attnlab.errors import ConfigError


class Stepper(Protocol):
    def step(self, new: Tensor) -> Tensor:
        """new tokens (N, t) -> next-token logits (N, V)."""
        ...

    def select(self, index: Tensor) -> None:
        """Keep the rows ``index`` (N',), in that order."""
        ...


class TransformerStepper:
    """Incremental decoding of an :class:`attnlab.nn.Transformer`: the encoder runs once; with
    ``cached`` each step feeds only the new token through ``model.decode`` with a key/value
    cache per layer (cross-attention computes the memory's keys and values once); without it
    each step re-runs the decoder on the whole prefix (the baseline the cache is measured
    against, and its test: both give the same logits)."""

    def __init__(self, model, src: Tensor, cached: bool = True) -> None:
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


def make_stepper(model, src: Tensor, cached: bool = True) -> Stepper:
    """The stepper of an encoder–decoder ``model`` for the source batch ``src`` (B, Ts)."""
    from attnlab.nn import Transformer

    if isinstance(model, Transformer):
        return TransformerStepper(model, src, cached)
    if hasattr(model, "stepper"):
        return model.stepper(src, cached)
    raise ConfigError(f"{type(model).__name__} cannot be decoded step by step (it has no stepper)")
