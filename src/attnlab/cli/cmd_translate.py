"""``attnlab translate RUN_DIR < source.txt > hypotheses.txt``: translate standard input line by
line with a trained translation run (greedy, beam search or mask-predict)."""

from __future__ import annotations


def register(subparsers) -> None:
    from attnlab.train.config import one_line_errors, positive_int

    p = subparsers.add_parser(
        "translate", help="translate standard input line by line with a trained translation run",
        description="Translate standard input, one sentence per line, to standard output (one line per input line; "
                    "an empty line gives an empty line). Lines are decoded in batches when input comes from a "
                    "file or pipe, one by one at a terminal.",
        epilog="example:\n  attnlab translate runs/translate-transformer-train --beam 5 < test.de > hyp.en",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'attnlab train translate'")
    p.add_argument("--which", choices=("best", "last"), default="best", help="which checkpoint (default: best)")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                   help="sentences decoded together when reading a file or pipe (default: 32)")
    from attnlab.tasks.translate import add_decode_arguments

    add_decode_arguments(p)
    one_line_errors(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from attnlab.tasks.translate import run_translate_stream

    return run_translate_stream(args.run_dir, args)
