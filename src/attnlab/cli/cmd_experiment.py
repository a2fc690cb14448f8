"""``attnlab experiment list`` and ``attnlab experiment NAME``: the questions of the Transformer
story answered by experiment (:mod:`attnlab.experiments`); ``attnlab experiment report``
rebuilds EXPERIMENTS.md from the stored results."""

from __future__ import annotations

import argparse

from attnlab.cli.common import log_line, one_line_errors

EPILOG = """examples:
  attnlab experiment list
  attnlab experiment report [--check]                 rebuild EXPERIMENTS.md from docs/experiments/ (or compare)
  attnlab experiment sqrt-dk                          quick budget (seconds), one seed
  attnlab experiment sqrt-dk --budget full --seeds 3 -o results/sqrt-dk
  attnlab experiment vit-position --budget full --jobs 2 -o results/vit-position   two arms at once

Outputs (in -o DIR, default experiments/NAME/BUDGET): results.json, table.md, verdict.md, the
figures (PNG), README.md, and one run directory per training arm under runs/. DIR must be new,
empty, or written by the same experiment: it writes .attnlab-experiment.json there first, listing
everything it writes, and refuses any other folder (a notes folder, a non-empty '.', another
experiment's outputs). A rerun with the same -o reuses the finished arms and resumes a cut one,
also after DIR was moved (arms compare their data by content); --overwrite removes what the
experiment wrote in DIR and trains every arm afresh, leaving anything else there alone.
"""


def register(subparsers) -> None:
    from attnlab.train.config import nonneg_int, positive_int

    p = subparsers.add_parser("experiment", help="answer a question of the Transformer story by experiment "
                                                 "('attnlab experiment list')",
                              description="Run one experiment: train the arms, write the table, figures and a verdict "
                                          "against the paper's figure. 'attnlab experiment list' names them.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help="an experiment, 'list' to list them, or 'report' to rebuild "
                                                "EXPERIMENTS.md from the stored results")
    p.add_argument("--budget", choices=("quick", "full"), default="quick",
                   help="quick: seconds, to check it runs; full: what the claim needs, up to an hour on 2 CPU cores "
                        "(default: quick)")
    p.add_argument("--seeds", type=positive_int, default=None, metavar="N",
                   help="seeds 0..N-1 per arm (default: the experiment's, shown by 'list')")
    p.add_argument("--threads", type=nonneg_int, default=1, metavar="N",
                   help="CPU threads for PyTorch (0 = PyTorch's default) (default: 1)")
    p.add_argument("--jobs", type=positive_int, default=1, metavar="N",
                   help="arms trained at once, each in a process of its own with --threads threads; the results do "
                        "not depend on it (default: 1)")
    p.add_argument("-o", "--output", metavar="DIR", default=None,
                   help="output directory: new, empty, or one this experiment wrote (default: experiments/NAME/BUDGET)")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in DIR: remove what this experiment wrote there (listed in its "
                        ".attnlab-experiment.json), keep everything else (default: reuse the finished arms)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines, only the verdict")
    p.add_argument("--check", action="store_true",
                   help="with 'report': compare EXPERIMENTS.md with the stored results instead of writing it; exit 1 "
                        "and show the difference when they differ")
    one_line_errors(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from attnlab.experiments import experiments, get_experiment, run_experiment
    from attnlab.runs import argv

    if args.name == "report":
        return report(args.check)
    if args.name == "list":
        exps = experiments()
        w = max(map(len, exps))
        for e in exps.values():
            print(f"{e.name:<{w}}  {e.question}")
            seeds = {b: f"{n} seed{'s' if n > 1 else ''}" for b, n in e.seeds.items()}
            print(f"{'':<{w}}  quick: {e.cost['quick']} ({seeds['quick']}); full: {e.cost['full']} ({seeds['full']})")
        return 0
    exp = get_experiment(args.name)
    res = run_experiment(exp, args.budget, args.seeds, args.threads, args.output,
                         log=None if args.quiet else log_line, progress=not args.quiet, command=argv(),
                         overwrite=args.overwrite, jobs=args.jobs)
    print(f"{exp.name} ({args.budget}, {len(res['seeds'])} seed(s), {res['wall_seconds']:.0f} s)\n")
    print(res["table_markdown"])
    print(res["verdict"])
    print(f"\noutputs: {res['results_dir']}")
    return 0


def report(check: bool) -> int:
    """Rebuild EXPERIMENTS.md from docs/experiments/ (or, with ``check``, compare it)."""
    from attnlab.experiments.report import page_diff, source_root, write_page

    root = source_root()
    if check:
        diff = page_diff(root)
        print(diff or "EXPERIMENTS.md matches the stored results", end="" if diff else "\n")
        return 1 if diff else 0
    print(f"wrote {write_page(root)}")
    return 0
