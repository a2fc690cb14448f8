"""``attnlab models [PATTERN]``: the model registry, with parameter counts."""

from __future__ import annotations

from attnlab.cli.common import one_line_errors


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="list the registered models (names for --model) with parameter counts",
                              description="List the registered model names matching PATTERN (shell-style, e.g. "
                                          "'vit_*', '*_lm*'), with their parameter counts and what they are.")
    p.add_argument("pattern", nargs="?", default="*", metavar="PATTERN", help="a shell-style pattern (default: *)")
    one_line_errors(p)
    p.set_defaults(func=run)


def describe(name: str) -> tuple[int, str]:
    """(parameter count, first line of the builder's docstring), built on the meta device."""
    from attnlab.models.registry import count_parameters, model_doc, probe_model

    return count_parameters(probe_model(name)), model_doc(name).split("\n")[0]


def run(args) -> int:
    from attnlab.errors import ConfigError
    from attnlab.models import list_models

    names = list_models(args.pattern)
    if not names:
        raise ConfigError(f"no registered model matches {args.pattern!r}; 'attnlab models' lists them all")
    w = max(map(len, names))
    for name in names:
        n, doc = describe(name)
        print(f"{name:<{w}}  {n / 1e6:9.2f}M  {doc}")
    return 0
