"""Greedy decoding and sampling (temperature, top-k, top-p), over any stepper
(:mod:`attnlab.decode.stepper`): ``stepper.step(new_tokens (B, t)) -> logits (B, V)`` is first
called with the whole prompt, then with each chosen token (B, 1). The stepper keeps whatever
state it needs (a hidden state, a key/value cache, an encoder memory), so the same loop serves
language models and sequence-to-sequence decoders.

Sampling from softmax(logits / T) after two optional filters (Holtzman et al. 2020 for top-p):

- top-k keeps the k largest scores;
- top-p keeps the smallest set of most likely tokens whose probability reaches p (always at
  least the most likely one).

Temperature 0 means greedy (argmax). A ``torch.Generator`` makes sampling reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from attnlab.decode.stepper import Stepper
from attnlab.errors import ConfigError, ShapeError


def validate_sampling(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> None:
    """Raise :class:`ConfigError` for a temperature < 0, top-k < 1, or top-p outside (0, 1]."""
    if not temperature >= 0.0:  # also catches NaN
        raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top-k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top-p must be in (0, 1], got {top_p}")


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """logits (B, V) with the scores outside the top-k / top-p set replaced by -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability mass of the more likely tokens
        drop_sorted = before >= top_p          # the first token always has before = 0 < p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """logits (B, V) → next token ids (B,)."""
    if temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(stepper: Stepper, prompt: Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             eos_id: int | None = None, on_token: Callable[[Tensor], None] | None = None) -> Tensor:
    """Extend ``prompt`` (B, T0) by up to ``max_new_tokens`` tokens → (B, T0 + n).

    Stops early when every row has produced ``eos_id`` (rows that finished keep getting
    ``eos_id``). ``on_token`` is called with each new (B,) token, e.g. to stream text.
    """
    validate_sampling(temperature, top_k, top_p)
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ShapeError(f"the prompt must be token ids (B, T0) with T0 >= 1, got shape {tuple(prompt.shape)}")
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    out = [prompt]
    new = prompt
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    for _ in range(max_new_tokens):
        nxt = sample_next(stepper.step(new), temperature, top_k, top_p, generator)
        if eos_id is not None:
            nxt = nxt.masked_fill(done, eos_id)
            done |= nxt == eos_id
        new = nxt[:, None]
        out.append(new)
        if on_token is not None:
            on_token(nxt)
        if eos_id is not None and bool(done.all()):
            break
    return torch.cat(out, dim=1)


def greedy(stepper: Stepper, prompt: Tensor, max_new_tokens: int, *, eos_id: int | None = None) -> Tensor:
    """Always the most likely next token (``generate`` with temperature 0)."""
    return generate(stepper, prompt, max_new_tokens, temperature=0.0, eos_id=eos_id)
