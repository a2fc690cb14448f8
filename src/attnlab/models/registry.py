"""The model registry: every named configuration is a function registered with
:func:`register_model`; :func:`create_model` builds one by name with field overrides and
:func:`list_models` lists the names.

A registered function takes keyword overrides and returns the model. It should build its
config with :func:`config_from`, which turns unknown field names into a clear
:class:`~attnlab.errors.ConfigError`.

Every module of the :mod:`attnlab.models` package is imported on first use of the registry,
so a new model family only needs a module there that uses :func:`register_model`.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from attnlab.errors import ConfigError
from attnlab.models.features import FEATURE_ARGS, as_features

_REGISTRY: dict[str, Callable[..., Any]] = {}
_loaded = False
#: optional packages a model family may need; without one its models are not registered
OPTIONAL = ("torchvision",)
_UNAVAILABLE: dict[str, str] = {}  # module -> the optional package it needs and this environment lacks


def register_model(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``@register_model("vit_tiny_patch16_224")`` on a function ``fn(**overrides)``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        old = _REGISTRY.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ConfigError(f"model name {name!r} is registered twice ({old.__module__}.{old.__qualname__} "
                              f"and {fn.__module__}.{fn.__qualname__})")
        _REGISTRY[name] = fn
        return fn

    return deco


def _load_all() -> None:
    """Import every module of attnlab.models so that their registrations run."""
    global _loaded
    if _loaded:
        return
    import attnlab.models as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "registry" and not info.name.startswith("_"):
            try:
                importlib.import_module(f"attnlab.models.{info.name}")
            except ModuleNotFoundError as e:  # the small CPU build of torch has no torchvision
                if (e.name or "").split(".")[0] not in OPTIONAL:
                    raise
                _UNAVAILABLE[info.name] = e.name.split(".")[0]
    _loaded = True


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the shell-style ``pattern`` (fnmatch), sorted."""
    _load_all()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def close_names(name: str, n: int = 5) -> list[str]:
    """Registered names close to ``name``, at most ``n``: those it begins or names a
    ``_``-separated part of (``gru`` -> ``gru_lm_small``), else difflib's close matches (typos)."""
    _load_all()
    names = sorted(_REGISTRY)
    key = name.lower()
    parts = [m for m in names if key and (m.startswith(key) or f"_{key}_" in f"_{m}_")]
    return parts[:n] or difflib.get_close_matches(key, names, n=n, cutoff=0.5)


def _check_name(name: str) -> None:
    """ConfigError for a name that is not registered, naming the close ones and where the list is."""
    _load_all()
    if name in _REGISTRY:
        return
    close = close_names(name)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    missing = "".join(f" (attnlab.models.{m}'s models need {pkg}, not installed here)" for m, pkg in _UNAVAILABLE.items())
    raise ConfigError(f"unknown model {name!r}; {hint}'attnlab models' lists every name (in Python: list_models())"
                      + missing)


def is_model(name: str) -> bool:
    """True if ``name`` is a registered model name."""
    _load_all()
    return name in _REGISTRY


def create_model(name: str, **overrides: Any) -> Any:
    """Build the registered model ``name``; ``overrides`` replace fields of its config
    (e.g. ``create_model("vit_tiny_patch16_224", num_classes=10)``). ``features_only=True``
    (with ``out_indices``, ``output_fmt``) returns it as a backbone of feature maps instead:
    :func:`attnlab.models.features.as_features`.

    Build on another device with a device context: ``with torch.device("meta"): ...``.
    """
    features = {k: overrides.pop(k) for k in FEATURE_ARGS if k in overrides}
    _check_name(name)
    model = _REGISTRY[name](**overrides)
    if getattr(model, "name", None) is None:
        model.name = name  # what a checkpoint records so that load_model can rebuild it
    return as_features(model, **features)


def probe_model(name: str, **overrides: Any) -> Any:
    """``create_model(name, **overrides)`` on the meta device: its type, config and parameter
    count without allocating weights."""
    import torch

    try:
        with torch.device("meta"):
            return create_model(name, **overrides)
    except (RuntimeError, NotImplementedError):  # a builder that cannot run on "meta"
        return create_model(name, **overrides)


def model_doc(name: str) -> str:
    """The docstring of the registered builder ``name`` (what the configuration is)."""
    _check_name(name)
    return (_REGISTRY[name].__doc__ or "").strip()


def model_config(name: str, **overrides: Any) -> Any:
    """The config ``create_model(name, **overrides)`` would have, without allocating weights."""
    return probe_model(name, **overrides).cfg


def config_dict(model: Any) -> dict[str, Any]:
    """``model.cfg`` as the keyword overrides that rebuild it: ``create_model(model.name, **config_dict(model))``."""
    cfg = getattr(model, "cfg", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"{type(model).__name__} has no config dataclass (.cfg); it cannot be rebuilt by name")
    return dataclasses.asdict(cfg)


def count_parameters(model: Any) -> int:
    """Parameters, a shared (tied) matrix counted once (``parameters()`` yields it once)."""
    return sum(p.numel() for p in model.parameters())


def config_from(cls: type, base: dict[str, Any], overrides: dict[str, Any], model: str = "") -> Any:
    """``cls(**{**base, **overrides})`` for a config dataclass, refusing unknown field names
    with a ConfigError that names them and the closest real fields."""
    fields = [f.name for f in dataclasses.fields(cls)]
    bad = [k for k in overrides if k not in fields]
    if bad:
        parts = []
        for k in bad:
            close = difflib.get_close_matches(k, fields, n=3, cutoff=0.5)
            parts.append(f"{k!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        where = f" for {model}" if model else ""
        raise ConfigError(f"unknown config field{'s' if len(bad) > 1 else ''}{where}: {', '.join(parts)}; "
                          f"{cls.__name__} has: {', '.join(fields)}")
    return cls(**{**base, **overrides})
