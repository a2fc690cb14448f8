"""Decoding: turning a model's next-token scores into sequences, through one step protocol
(:mod:`attnlab.decode.stepper`: ``step(new) -> logits``, ``select(index)``).

- :mod:`attnlab.decode.sampling`: greedy decoding and sampling (temperature, top-k, top-p);
- :mod:`attnlab.decode.search`: batched greedy and beam search for translation models;
- :mod:`attnlab.decode.mask_predict`: non-autoregressive decoding (mask-predict).
"""

from attnlab.decode.sampling import filter_logits, generate, greedy, sample_next, validate_sampling
from attnlab.decode.stepper import Stepper, make_stepper
from attnlab.nn.transformer import TransformerStepper

__all__ = ["Stepper", "TransformerStepper", "filter_logits", "generate", "greedy", "make_stepper", "sample_next",
           "validate_sampling"]
