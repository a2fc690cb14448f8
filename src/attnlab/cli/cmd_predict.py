"""``attnlab predict RUN_DIR INPUT...``: the top classes of each input, as text or JSON."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    from attnlab.train.config import one_line_errors, positive_int

    p = subparsers.add_parser("predict", help="classify images with a trained run: top-5 classes and probabilities",
                              description="Classify image files with a run directory's model and print the most likely "
                                          "classes with their probabilities.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'attnlab train'")
    p.add_argument("inputs", metavar="IMAGE", nargs="+", help="image files (any format Pillow reads)")
    p.add_argument("--top-k", type=positive_int, default=5, metavar="K", help="how many classes to show (default: 5)")
    p.add_argument("--which", choices=("best", "last"), default="best", help="which checkpoint (default: best)")
    p.add_argument("--convert", action="store_true", help="convert colour images to greyscale for greyscale models "
                                                          "(otherwise they are refused)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    one_line_errors(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from attnlab.tasks import task_of_run

    mod = task_of_run(args.run_dir, args.which, "predict_run", "predict")
    preds = mod.predict_run(args.run_dir, args.inputs, args)
    print(json.dumps(preds, indent=2) if args.json else mod.format_predictions(preds))
    return 0
