"""``attnlab train TASK ...``: one sub-command per task of :mod:`attnlab.tasks`, each built from
the task's data config, the model options and :class:`~attnlab.train.config.TrainConfig` (with
the task's own defaults), and run by :func:`attnlab.runs.train`."""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

from attnlab.cli.common import add_model_arguments, log_line, one_line_errors, parse_model_args

EPILOG = """examples:
  attnlab train image --model vit_digits --epochs 30
  attnlab train image --model vit_mnist --dataset mnist --epochs 5 --batch-size 128 --lr 1e-3
  attnlab train lm --model transformer_lm_char --text ../shared/data/tinyshakespeare/input.txt --window 64
  attnlab train translate --src train.de --tgt train.en --valid-src val.de --valid-tgt val.en
  attnlab train image --resume runs/image-vit_digits-20250101-120000
  torchrun --nproc_per_node=2 -m attnlab train image --model vit_digits   (data-parallel)

Outputs go to the run directory: checkpoints (last.json, best.json, checkpoints/), metrics.csv,
metrics.json and curves.png. Every command that reads a model reads the run directory:
'attnlab eval RUN_DIR', 'attnlab predict', 'attnlab generate', 'attnlab translate', 'attnlab viz'.
"""

PATTERNS = {"image": "'vit_*'", "lm": "'*_lm*'", "translate": "'*multi30k' 'transformer_*'", "detect": "'detr_*'"}


def register(subparsers) -> None:
    from attnlab.tasks import task_specs
    from attnlab.train.config import TrainConfig, add_arguments

    p = subparsers.add_parser("train", help="train a model: 'attnlab train TASK --help'",
                              description="Train a model. Each task has its own options: attnlab train TASK --help.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="task", metavar="TASK")
    for name, spec in task_specs().items():
        tp = sub.add_parser(name, help=spec.help, description=f"Train: {spec.help}. Options map one to one onto the "
                            f"fields of {spec.data_config.__name__} and TrainConfig.",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(tp, spec.data_config, "data")
        add_model_arguments(tp, spec.default_model, PATTERNS.get(name, "'*'"))
        add_arguments(tp, TrainConfig, "training", defaults=help_defaults(spec.train_defaults))
        add_run_arguments(tp)
        one_line_errors(tp)
        tp.set_defaults(func=partial(run, spec))
    one_line_errors(p)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def help_defaults(train_defaults: dict) -> dict:
    """The task's training defaults as its --help shows them: where the task counts the warm-up in
    steps, --warmup-epochs is unused unless given (giving it drops the task's --warmup-steps)."""
    shown = dict(train_defaults)
    if train_defaults.get("warmup_steps") is not None:
        shown["warmup_epochs"] = f"unused, --warmup-steps {train_defaults['warmup_steps']} applies unless this is given"
    return shown


def add_run_arguments(parser) -> None:
    g = parser.add_argument_group("run directory and output")
    g.add_argument("--run-dir", metavar="DIR", help="where to write the run (default: runs/<task>-<model>-<date>-<time>)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing run directory (otherwise it is refused)")
    g.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint, exactly as if it had "
                                                   "not stopped (its saved options are used)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines, only the final summary")


def options_from_args(spec, args):
    """(data config, train config, model name, model overrides) from the parsed options; a
    resumed run takes its own, and an option given that would change what it computes is refused."""
    from attnlab.errors import ConfigError
    from attnlab.runs import resume_conflicts, saved_options, train_config
    from attnlab.train.config import TrainConfig, from_args

    base = saved_options(spec, args.resume) if args.resume else None
    dc, given_d = from_args(spec.data_config, args, base["data"] if base else None)
    given_t = {k: getattr(args, k) for k in from_args(TrainConfig, args)[1]}
    cfg = train_config(spec, given_t, base["train"] if base else None)
    model, model_args = args.model, parse_model_args(args.model_arg)
    if base:
        changed = resume_conflicts(base, data={k: getattr(dc, k) for k in given_d}, train=given_t, model=model,
                                   model_args={**base["model_args"], **model_args})
        if changed:
            raise ConfigError(f"--resume continues {args.resume} with its own settings; these options differ from the "
                              "run's: " + ", ".join("--" + k.replace("_", "-") for k in changed))
        model, model_args = base["model"], base["model_args"]
    return dc, cfg, model, model_args


def run(spec, args) -> int:
    from attnlab.runs import argv, train
    from attnlab.train import distributed as dist

    dc, cfg, model, model_args = options_from_args(spec, args)
    name = model or spec.default_model
    run_dir = Path(args.resume or args.run_dir or f"runs/{spec.name}-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        summary = train(spec, dc, cfg, run_dir, model=model, model_args=model_args, resume=bool(args.resume),
                        overwrite=args.overwrite, log=None if args.quiet else log_line, progress=not args.quiet,
                        command=argv())
    finally:
        dist.shutdown()
    if dist.is_main():
        print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    """The last lines of ``attnlab train``: time, final and best validation metric, the run."""
    lines = [f"done in {summary['elapsed']:.0f} s ({summary['steps']} steps): {summary.get('title', '')}"]
    best, m = summary.get("best"), summary.get("metrics") or {}
    metric = best["metric"] if best else None
    if metric and f"val_{metric}" in m:
        fmt = (lambda v: f"{100 * v:.2f}%") if summary.get("metric_percent", True) else (lambda v: f"{v:.2f}")
        lines.append(f"  final validation {metric} {fmt(m[f'val_{metric}'])}; best {fmt(best['value'])} at epoch "
                     f"{best['epoch']}")
    if summary.get("stopped_by_time"):
        lines.append("  stopped by --max-minutes; --resume continues where it stopped")
    lines.append(f"  run directory: {summary['run_dir']}")
    return "\n".join(lines)
