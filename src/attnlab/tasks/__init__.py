"""Tasks: what is learned and from which data, on top of the shared engine
(:mod:`attnlab.train`).

Each module here is one task and is found by the CLI automatically. A task module defines:

- ``TASK`` (the name stored in run directories, e.g. ``"image"``) and ``HELP`` (one line);
- ``add_train_arguments(parser)`` and ``train_from_args(args, log) -> summary`` for
  ``attnlab train TASK``;
- optionally ``evaluate_run(run_dir, args) -> results`` and ``format_eval(results) -> str`` for
  ``attnlab eval RUN_DIR`` (dispatched by the ``task`` recorded in the run directory), and
  ``predict_run(run_dir, inputs, args) -> list`` and ``format_predictions(preds) -> str`` for
  ``attnlab predict RUN_DIR``.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from attnlab.errors import UnsupportedError


def task_modules() -> dict[str, ModuleType]:
    """Every task module of this package, by task name."""
    import attnlab.tasks as pkg

    out = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"attnlab.tasks.{info.name}")
        if hasattr(mod, "TASK"):
            out[mod.TASK] = mod
    return out


def get_task(name: str) -> ModuleType:
    mods = task_modules()
    if name not in mods:
        raise UnsupportedError(f"this attnlab has no task {name!r} (it knows {', '.join(sorted(mods))})")
    return mods[name]


def task_of_run(run_dir, which: str, hook: str, command: str) -> ModuleType:
    """The task module that made ``run_dir`` (its ``which`` record, else "last"), checked to
    provide ``hook`` (e.g. ``evaluate_run`` for ``attnlab eval``)."""
    from attnlab.train import checkpoint as ckpt

    rec = ckpt.read_record(run_dir, which if ckpt.has_record(run_dir, which) else "last")
    mod = get_task(rec.get("task", "?"))
    if not hasattr(mod, hook):
        raise UnsupportedError(f"'attnlab {command}' does not support {rec['task']!r} runs")
    return mod
