"""Tasks: what is learned and from which data, on top of the shared run layer
(:mod:`attnlab.train.runs`) and engine (:mod:`attnlab.train.engine`).

Each module here is one task and is found automatically: it defines ``SPEC``, a
:class:`~attnlab.train.runs.TaskSpec` (its data options, how to load its data, the engine's
``Task``, what it can do with a trained run). A new task needs one module here and, if it has
a command of its own, one ``cli/cmd_*.py``.
"""

from __future__ import annotations

import importlib
import pkgutil

from attnlab.errors import UnsupportedError


def task_specs() -> dict:
    """Every task of this package, by name: ``{"image": TaskSpec, ...}``."""
    import attnlab.tasks as pkg

    out = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            spec = getattr(importlib.import_module(f"attnlab.tasks.{info.name}"), "SPEC", None)
            if spec is not None:
                out[spec.name] = spec
    return out


def get_spec(name: str):
    specs = task_specs()
    if name not in specs:
        raise UnsupportedError(f"this attnlab has no task {name!r} (it knows {', '.join(sorted(specs))})")
    return specs[name]
