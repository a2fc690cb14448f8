"""``attnlab translate RUN_DIR < source.txt > hypotheses.txt``: translate standard input line by
line with a trained translation run (greedy, beam search or mask-predict)."""

from __future__ import annotations

import argparse
import sys

from attnlab.cli.common import add_int8_arguments, add_which_argument, note_int8, one_line_errors


def register(subparsers) -> None:
    from attnlab.tasks.translate import DecodeOptions
    from attnlab.train.config import add_arguments

    p = subparsers.add_parser(
        "translate", help="translate standard input line by line with a trained translation run",
        description="Translate standard input (UTF-8), one sentence per line, to standard output (one line per input "
                    "line; an empty line gives an empty line). Lines are decoded in batches when input comes from a "
                    "file or pipe (with a progress bar on a terminal), one by one at a terminal.",
        epilog="example:\n  attnlab translate runs/translate-transformer_multi30k-... --beam 5 < test.de > hyp.en",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'attnlab train translate'")
    add_which_argument(p)
    add_arguments(p, DecodeOptions, "decoding")
    add_int8_arguments(p)
    one_line_errors(p)
    p.set_defaults(func=run)


def run(args, stdin=None, stdout=None) -> int:
    from attnlab import runs
    from attnlab.errors import ConfigError
    from attnlab.tasks.translate import DecodeOptions, iter_translations, read_utf8_lines
    from attnlab.train.config import from_args

    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout
    if runs.task_of(args.run_dir).name != "translate":
        raise ConfigError(f"{args.run_dir} is not a translation run ('attnlab train translate')")
    opts = from_args(DecodeOptions, args)[0]
    run_ = runs.open(args.run_dir, args.which, int8=args.int8, compile=args.compile)
    note_int8(run_)
    interactive = stdin.isatty()
    for hyp in iter_translations(run_, read_utf8_lines(stdin), opts, 1 if interactive else opts.batch_size,
                                 progress=not interactive):
        stdout.write(hyp + "\n")
        stdout.flush()
    return 0
