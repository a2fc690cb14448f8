"""Decoding: turning a model's next-token scores into sequences.

:mod:`attnlab.decode.sampling` — greedy decoding and sampling with temperature, top-k and top-p
(nucleus), generic over a *step function* ``step(new_tokens (B, t)) -> logits (B, V)`` that the
model provides (language models: ``model.stepper(cached=True)``).
"""

from attnlab.decode.sampling import filter_logits, generate, greedy, sample_next, validate_sampling

__all__ = ["filter_logits", "generate", "greedy", "sample_next", "validate_sampling"]
