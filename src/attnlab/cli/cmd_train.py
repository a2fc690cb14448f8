"""``attnlab train TASK ...``: one sub-command per task module of :mod:`attnlab.tasks` (a new
task only needs its module there: see that package's docstring)."""

from __future__ import annotations

import argparse
import sys
from functools import partial

EPILOG = """examples:
  attnlab train image --model vit_digits --epochs 30
  attnlab train image --model vit_mnist --dataset mnist --epochs 5 --batch-size 128 --lr 1e-3
  attnlab train image --model vit_cifar --dataset cifar10:../shared/data/cifar10 --ema-decay 0.999
  attnlab train image --resume runs/vit_digits-digits-20250101-120000
  torchrun --nproc_per_node=2 -m attnlab train image --model vit_digits   (data-parallel)

Outputs go to the run directory: checkpoints (last.json, best.json, checkpoints/), metrics.csv,
metrics.json and curves.png. Evaluate with 'attnlab eval RUN_DIR', classify images with
'attnlab predict RUN_DIR IMAGE...'.
"""


def register(subparsers) -> None:
    from attnlab.tasks import task_modules
    from attnlab.train.config import one_line_errors

    p = subparsers.add_parser("train", help="train a model: 'attnlab train image --help'",
                              description="Train a model. Each task has its own options: attnlab train TASK --help.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="task", metavar="TASK")
    for name, mod in task_modules().items():
        if not hasattr(mod, "add_train_arguments"):
            continue
        helptext = getattr(mod, "HELP", "")
        tp = sub.add_parser(name, help=helptext, description=getattr(mod, "DESCRIPTION", helptext),
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_train_arguments(tp)
        add_run_arguments(tp)
        one_line_errors(tp)
        tp.set_defaults(func=partial(run, mod))
    one_line_errors(p)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def add_run_arguments(parser) -> None:
    g = parser.add_argument_group("run directory and output")
    g.add_argument("--run-dir", metavar="DIR", help="where to write the run (default: runs/<model>-<dataset>-<date>-<time>)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run directory (otherwise it is refused)")
    g.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint, exactly as if it had "
                                                   "not stopped (its saved options are used)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines, only the final summary")


def log_line(s: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(s, file=sys.stdout)
    sys.stdout.flush()


def run(mod, args) -> int:
    from attnlab.train import distributed as dist

    args.argv = ["attnlab"] + sys.argv[1:]
    try:
        summary = mod.train_from_args(args, log=None if args.quiet else log_line, progress=not args.quiet)
    finally:
        dist.shutdown()
    if not dist.is_main():
        return 0
    best, m = summary.get("best"), summary.get("metrics") or {}
    print(f"done in {summary['elapsed']:.0f} s ({summary['steps']} steps): {summary.get('title', '')}")
    metric = best["metric"] if best else None
    if metric and f"val_{metric}" in m:
        pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
        print(f"  final validation {metric} {pct(m[f'val_{metric}'])}; best {pct(best['value'])} at epoch {best['epoch']}")
    print(f"  run directory: {summary['run_dir']}")
    return 0
