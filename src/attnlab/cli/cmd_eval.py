"""``attnlab eval RUN_DIR``: evaluate a trained run; dispatched to the task recorded in the run."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    from attnlab.train.config import one_line_errors, positive_int

    p = subparsers.add_parser("eval", help="evaluate a trained run: accuracy, top-5, per-class accuracy, confusion matrix",
                              description="Evaluate a run directory's model on a test set (by default the one it was "
                                          "trained with) and write the results and pictures under RUN_DIR/eval/.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'attnlab train'")
    p.add_argument("--dataset", metavar="SPEC", help="evaluate on this dataset's test split instead (same spec as for training)")
    p.add_argument("--which", choices=("best", "last"), default="best", help="which checkpoint (default: best)")
    p.add_argument("--batch-size", type=positive_int, default=500, metavar="N", help="evaluation batch size (default: 500)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--out", metavar="DIR", help="write results.json and the pictures here (default: RUN_DIR/eval/<dataset>)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    from attnlab.tasks import task_modules

    for mod in task_modules().values():  # task-specific options (e.g. translation's --src/--ref/--beam)
        if hasattr(mod, "add_eval_arguments"):
            mod.add_eval_arguments(p)
    one_line_errors(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from attnlab.tasks import task_of_run

    mod = task_of_run(args.run_dir, args.which, "evaluate_run", "eval")
    results = mod.evaluate_run(args.run_dir, args)
    print(json.dumps(results, indent=2) if args.json else mod.format_eval(results))
    return 0
