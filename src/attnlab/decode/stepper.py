"""The one decoding-step protocol, for language models and encoder–decoder models alike.

A *stepper* holds what a model needs between decoding steps for N rows — a recurrent hidden
state, a key/value cache per layer, an encoder memory — and exposes two methods:

    stepper.step(new)       new tokens (N, t) appended to every row -> logits (N, V) of the next token
    stepper.select(index)   keep / reorder / copy rows (finished rows leave; beams are copied)

The first call gives the prompt (a language model) or the start token (a decoder), then each
call one token per row. Greedy search, beam search and sampling (:mod:`attnlab.decode.search`,
:mod:`attnlab.decode.sampling`) are written once against this protocol. Every model that
decodes provides one: language models ``model.stepper(cached=True)``, translation models
``make_stepper(model, src, cached=True)``, which asks the model that declares it decodes token by
token (:class:`attnlab.models.capabilities.Translator`) for ``model.stepper(src, cached)``
(:class:`attnlab.nn.transformer.TransformerStepper` for the Transformer).
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from attnlab.errors import ConfigError
from attnlab.models.capabilities import AUTOREGRESSIVE


class Stepper(Protocol):
    def step(self, new: Tensor) -> Tensor:
        """new tokens (N, t) -> next-token logits (N, V)."""
        ...

    def select(self, index: Tensor) -> None:
        """Keep the rows ``index`` (N',), in that order."""
        ...


def make_stepper(model, src: Tensor, cached: bool = True) -> Stepper:
    """The stepper of an encoder–decoder ``model`` for the source batch ``src`` (B, Ts): its own,
    if it declares that it decodes token by token (:mod:`attnlab.models.capabilities`)."""
    if getattr(model, "decoding", None) != AUTOREGRESSIVE:
        raise ConfigError(f"{type(model).__name__} cannot be decoded step by step (it has no stepper)")
    return model.stepper(src, cached)
