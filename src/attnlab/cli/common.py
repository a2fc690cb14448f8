"""What the command-line modules share: one-line option errors, the log line, model options."""

from __future__ import annotations

import argparse
import ast
import sys

from attnlab.errors import ConfigError


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` report a bad option in one line (no usage block) and exit with 2. An
    unknown option is reported by the (sub)command that was given it, not passed up to the
    top-level parser, which would print its usage."""
    parse_known_args = parser.parse_known_args

    def error(message: str):
        sys.stderr.write(f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")
        raise SystemExit(2)

    def parse_known(args=None, namespace=None):
        namespace, extras = parse_known_args(args, namespace)
        if extras:
            error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    parser.error = error  # type: ignore[method-assign]
    parser.parse_known_args = parse_known  # type: ignore[method-assign]
    return parser


def log_line(s: str) -> None:
    """Print a line above any progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(s, file=sys.stdout)
    sys.stdout.flush()


def add_model_arguments(parser, default: str | None, pattern: str) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", metavar="NAME", default=None,
                   help=f"registered model name ('attnlab models {pattern}' lists them)"
                        + (f" (default: {default})" if default else " (required)"))
    g.add_argument("--model-arg", action="append", default=None, metavar="KEY=VALUE",
                   help="override a field of the model's config, e.g. --model-arg depth=4 (repeatable)")


def parse_model_args(items) -> dict:
    """``["depth=4", "qkv_bias=false", "img_size=32"]`` -> ``{"depth": 4, ...}``."""
    out = {}
    for item in items or ():
        key, eq, val = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise ConfigError(f"--model-arg {item!r} is not KEY=VALUE")
        low = val.strip().lower()
        if low in ("true", "false"):
            out[key] = low == "true"
        elif low in ("none", "null"):
            out[key] = None
        else:
            try:
                out[key] = ast.literal_eval(val.strip())
            except (ValueError, SyntaxError):
                out[key] = val.strip()
    return out


def add_output_arguments(parser, what: str = "the PNG file to write") -> None:
    from attnlab.train.config import positive_int

    parser.add_argument("-o", "--output", required=True, metavar="FILE", help=what)
    parser.add_argument("--dpi", type=positive_int, default=120, metavar="N", help="resolution of the picture (default: 120)")


def add_which_argument(parser, default: str = "best") -> None:
    """``--which best|last``: the checkpoint of a run, when RUN_DIR does not name it (RUN_DIR:last)."""
    parser.add_argument("--which", choices=("best", "last"), default=None,
                        help=f"which checkpoint of the run (default: {default}; RUN_DIR:best or RUN_DIR:last says the "
                             "same, give one of the two)")


def add_int8_arguments(parser) -> None:
    parser.add_argument("--int8", action="store_true",
                        help="run the model's Linear layers with int8 weights and activations: a quarter of the "
                             "weight bytes, slightly different numbers. The backend (fbgemm or torchao) is the one "
                             "measured fastest on this CPU at first use (cached); if neither beats fp32 here the "
                             "model stays fp32. A line on stderr says which; ATTNLAB_INT8_BACKEND=torchao|fbgemm "
                             "forces one. Speeds per processor: BENCHMARKS.md")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each Linear layer (fuses torchao's int8 kernels; fbgemm's int8 layers "
                             "are not compiled). Each layer compiles on its first call, which takes seconds, so it "
                             "pays on long jobs; whether it is faster depends on the processor: BENCHMARKS.md")


def note_int8(run) -> None:
    """With ``--int8``: one line on stderr saying which int8 backend runs (or that fp32 was kept)."""
    if run.int8:
        sys.stderr.write(run.int8_choice + "\n")
