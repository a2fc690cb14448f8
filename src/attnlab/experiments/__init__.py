"""Experiments: each answers one question of the Transformer story by training real models on
real data, and sets the measured figure against the paper that made the claim
(``attnlab experiment NAME``).

Each module here is one experiment, named by its question, and is found automatically: it
defines ``EXPERIMENT``, an :class:`~attnlab.experiments.base.Experiment` (question, anchor,
cost, default seeds, ``run(ctx) -> Result`` and, stated before the run, the ``rule`` that
computes its verdict: :mod:`attnlab.experiments.rules`, whose docstring says how to adopt one).
Training goes through the one run layer (:func:`attnlab.runs.train`); the outputs are
written by :func:`~attnlab.experiments.runner.run_experiment`; EXPERIMENTS.md is rebuilt from the
stored results by :mod:`attnlab.experiments.report` (``attnlab experiment report``).
"""

from __future__ import annotations

import importlib
import pkgutil

from attnlab.errors import ConfigError
from attnlab.experiments.base import Experiment, Result
from attnlab.experiments.runner import run_experiment

__all__ = ["Experiment", "Result", "experiments", "get_experiment", "run_experiment"]


def experiments() -> dict[str, Experiment]:
    """Every experiment of this package, by name, in the order of the story."""
    import attnlab.experiments as pkg

    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "base" and not info.name.startswith("_"):
            mod = importlib.import_module(f"attnlab.experiments.{info.name}")
            exp = getattr(mod, "EXPERIMENT", None)
            if exp is not None:
                found.append((getattr(mod, "ORDER", 99), exp))
    return {e.name: e for _, e in sorted(found, key=lambda x: (x[0], x[1].name))}


def get_experiment(name: str) -> Experiment:
    exps = experiments()
    if name not in exps:
        import difflib

        close = difflib.get_close_matches(name, exps, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"no experiment {name!r}{hint} ('attnlab experiment list' names them all)")
    return exps[name]
