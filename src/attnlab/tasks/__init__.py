"""Tasks: what is learned and from which data, on top of the engine (:mod:`attnlab.train.engine`);
the run layer (:mod:`attnlab.runs`) trains and re-opens them.

Each module here is one task and is found automatically: it defines ``SPEC``, a
:class:`~attnlab.tasks.spec.TaskSpec` (its data options, how to load its data, the engine's
``Task``, what it can do with a trained run). A new task needs one module here and, if it has
a command of its own, one ``cli/cmd_*.py``. A task declared elsewhere (an experiment's) is
registered where it is declared, ``SPEC = register_spec(TaskSpec(...), __name__)``: its runs
record that module, so every command re-opens them.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import replace

from attnlab.errors import UnsupportedError
from attnlab.tasks.spec import LoadedRun, TaskData, TaskSpec

__all__ = ["LoadedRun", "TaskData", "TaskSpec", "get_spec", "register_spec", "task_specs"]

_REGISTERED: dict[tuple[str, str], TaskSpec] = {}  # (name, module) -> spec


def task_specs() -> dict[str, TaskSpec]:
    """Every task of this package, by name: ``{"image": TaskSpec, ...}`` (the tasks of
    ``attnlab train``)."""
    import attnlab.tasks as pkg

    out = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not info.name.startswith("_") and info.name != "spec":
            spec = getattr(importlib.import_module(f"attnlab.tasks.{info.name}"), "SPEC", None)
            if spec is not None:
                out[spec.name] = spec
    return out


def register_spec(spec: TaskSpec, module: str) -> TaskSpec:
    """Declare a task outside this package (``module``: the declaring module's ``__name__``) and
    return it, to keep as the module's ``SPEC``. It may share a name with a task of this package
    whose runs its runs are (an image task on other data: ``attnlab eval`` reads both alike)."""
    spec = replace(spec, module=module)
    _REGISTERED[(spec.name, module)] = spec
    return spec


def get_spec(name: str, module: str | None = None) -> TaskSpec:
    """The task ``name`` of this package, or the one declared in ``module`` (what a run of a task
    declared elsewhere records; it is imported to register its task)."""
    if not module:
        specs = task_specs()
        if name not in specs:
            raise UnsupportedError(f"this attnlab has no task {name!r} (it knows {', '.join(sorted(specs))})")
        return specs[name]
    if (name, module) not in _REGISTERED:
        if not module.startswith("attnlab."):
            raise UnsupportedError(f"task {name!r} is declared in {module!r}, outside attnlab: it is not imported")
        try:
            importlib.import_module(module)
        except ImportError:
            raise UnsupportedError(f"task {name!r} is declared in {module}, which this attnlab does not have") from None
    if (name, module) not in _REGISTERED:
        raise UnsupportedError(f"{module} declares no task {name!r}")
    return _REGISTERED[(name, module)]
