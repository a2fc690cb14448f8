"""The ``attnlab`` command. Each subcommand lives in its own module ``attnlab.cli.cmd_<name>``
with ``register(subparsers)`` (adds its parser and sets ``func``). Library errors become one
line on stderr and exit code 2; nothing else here prints."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import attnlab
from attnlab.errors import AttnlabError

EPILOG = """examples:
  attnlab demo                      the main job: a quick tour that trains and explains
  attnlab <command> --help          every option of a command
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnlab",
        description="The Transformer story from NLP to CV: attention, Transformers and Vision Transformers "
        "you can train, inspect and compare.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"attnlab {attnlab.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import attnlab.cli as pkg

    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"attnlab.cli.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except AttnlabError as e:
        print(f"attnlab: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (attnlab ... | head): stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # a read-only directory, a full disk...: what failed, where, in one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"attnlab: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attnlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
