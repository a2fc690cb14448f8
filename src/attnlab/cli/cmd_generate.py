"""``attnlab generate RUN_DIR --prompt TEXT``: continue a text with a trained language model."""

from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  attnlab generate runs/lm-transformer-input-char --prompt "ROMEO:" --max-new-tokens 300
  attnlab generate RUN_DIR --prompt "the company said" --temperature 0.8 --top-k 40 --seed 1
  attnlab generate RUN_DIR --prompt "KING" --temperature 0        (greedy)
"""


def _top_p(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"{s} must be in (0, 1]")
    return v


def register(subparsers) -> None:
    from attnlab.cli.common import add_int8_arguments, add_which_argument, one_line_errors
    from attnlab.train.config import nonneg_float, nonneg_int, positive_int

    p = subparsers.add_parser("generate", help="continue a prompt with a trained language model (attnlab train lm)",
                              description="Sample a continuation of --prompt from a language-model run directory. "
                                          "The Transformer decodes with its key/value cache.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'attnlab train lm'")
    p.add_argument("--prompt", default=None, help="the text to continue (default: a newline for character models, "
                                                  "an end-of-line token for word models)")
    p.add_argument("--max-new-tokens", type=nonneg_int, default=200, metavar="N", help="tokens to add (default: 200)")
    p.add_argument("--temperature", type=nonneg_float, default=1.0, metavar="T",
                   help="divide the scores by T before sampling; 0 = greedy (default: 1.0)")
    p.add_argument("--top-k", type=positive_int, default=None, metavar="K", help="sample among the K most likely tokens")
    p.add_argument("--top-p", type=_top_p, default=None, metavar="P",
                   help="nucleus sampling: among the most likely tokens holding probability P, in (0, 1]")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same text (default: 0)")
    add_which_argument(p, default="last")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context at every step (slow; for comparison)")
    add_int8_arguments(p)
    one_line_errors(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from attnlab import runs
    from attnlab.cli.common import note_int8
    from attnlab.decode.sampling import generate, validate_sampling
    from attnlab.errors import ConfigError, DataError

    validate_sampling(args.temperature, args.top_k, args.top_p)
    if runs.task_of(args.run_dir).name != "lm":
        raise ConfigError(f"{args.run_dir} is not a language-model run ('attnlab train lm'); 'attnlab generate' "
                          "continues text with one")
    run_ = runs.open(args.run_dir, args.which, default="last", int8=args.int8, compile=args.compile)
    note_int8(run_)
    tok = run_.extras["tokenizer"]
    prompt = "\n" if args.prompt is None else args.prompt
    ids = tok.encode(prompt)
    if not ids:
        raise DataError(f"the prompt {prompt!r} gives no tokens; give some text with --prompt")
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    out = generate(run_.model.stepper(cached=not args.no_cache), torch.tensor([ids]), args.max_new_tokens,
                   temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=g)
    text = tok.decode(out[0].tolist())
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0
