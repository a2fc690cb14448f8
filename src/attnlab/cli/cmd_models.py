"""``attnlab models [PATTERN]``: the model registry, with parameter counts."""

from __future__ import annotations

import re
import shutil
import textwrap

from attnlab.cli.common import one_line_errors

ABBREVIATIONS = ("e.g.", "i.e.", "et al.", "cf.", "vs.", "approx.")


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="list the registered models (names for --model) with parameter counts",
                              description="List the registered model names matching PATTERN (shell-style, e.g. "
                                          "'vit_*', '*_lm*'), with their parameter counts and what they are.")
    p.add_argument("pattern", nargs="?", default="*", metavar="PATTERN", help="a shell-style pattern (default: *)")
    one_line_errors(p)
    p.set_defaults(func=run)


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, on one line, without reST's double
    backquotes. A period ends it only outside parentheses, after no abbreviation ("et al.",
    "e.g."), before a space and a capital letter or at the paragraph's end."""
    para = " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "")
    depth = 0
    for i, ch in enumerate(para):
        depth += (ch == "(") - (ch == ")")
        if ch != "." or depth > 0 or para[: i + 1].endswith(ABBREVIATIONS):
            continue
        if i + 1 == len(para) or re.match(r"\s+[A-Z]", para[i + 1:]):
            return para[: i + 1]
    return para


def describe(name: str) -> tuple[int, str]:
    """(parameter count, first sentence of the builder's docstring), built on the meta device."""
    from attnlab.models.registry import count_parameters, model_doc, probe_model

    return count_parameters(probe_model(name)), first_sentence(model_doc(name))


def run(args) -> int:
    from attnlab.errors import ConfigError
    from attnlab.models import list_models

    names = list_models(args.pattern)
    if not names:
        raise ConfigError(f"no registered model matches {args.pattern!r}; 'attnlab models' lists them all")
    w = max(map(len, names))
    rows = [(f"{name:<{w}}  {n / 1e6:9.2f}M  ", doc) for name in names for n, doc in [describe(name)]]
    indent = " " * len(rows[0][0])  # the description column
    width = max(shutil.get_terminal_size((100, 24)).columns, len(indent) + 30)  # at least 30 characters of text
    for head, doc in rows:
        print(textwrap.fill(doc, width=width, initial_indent=head, subsequent_indent=indent, break_on_hyphens=False)
              if doc else head.rstrip())
    return 0
