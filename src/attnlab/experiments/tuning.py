"""Each arm at its own learning rate, chosen on validation (issue 21, point 3).

Where the question is about optimisation (a normalisation, a read-out), one rate for every arm
favours whichever arm that rate happens to suit. Two protocols:

- :func:`best_rate` over every seed of a grid (``cls-vs-gap``: the grid is the experiment);
- :func:`tune`: the grid at the first seed only, then the remaining seeds at the rate that seed
  chose (``layernorm-vs-batchnorm``: a grid over every seed would not fit the budget).

Either way the rate is chosen on validation data and the arms are reported on a test split,
which chooses nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from attnlab.experiments.numbers import mean_std


def best_rate(val: dict[str, list[float]], better: str = "higher") -> str:
    """The rate (key) with the best mean validation value over seeds; a rate with a non-finite
    value (a diverged run) is never chosen unless every rate has one."""
    sign = 1.0 if better == "higher" else -1.0

    def score(lr: str) -> float:
        return sign * mean_std(val[lr])[0] if all(map(math.isfinite, val[lr])) else -math.inf

    return max(val, key=score)


@dataclass
class Tuned:
    """One arm tuned by :func:`tune`: the first seed's validation value at each rate (``grid``),
    the rate chosen (``best``, a key of ``grid``) and one trained run per seed at that rate."""

    grid: dict[str, float]
    best: str
    runs: list[dict]


def tune(seeds: list[int], lrs: list[float], train_at: Callable[[float, int], dict],
         score: Callable[[dict], float], better: str) -> Tuned:
    """Train ``train_at(lr, seeds[0])`` at every rate, choose the rate with the best
    ``score`` (a validation value), then train the other seeds at that rate."""
    first = {f"{lr:g}": train_at(lr, seeds[0]) for lr in lrs}
    grid = {k: score(r) for k, r in first.items()}
    best = best_rate({k: [v] for k, v in grid.items()}, better)
    return Tuned(grid, best, [first[best]] + [train_at(float(best), s) for s in seeds[1:]])
