"""``attnlab predict RUN_DIR INPUT...``: the task's predictions for each input, as text or JSON."""

from __future__ import annotations

import json

from attnlab.cli.common import add_int8_arguments, add_which_argument, note_int8, one_line_errors


def register(subparsers) -> None:
    from attnlab.train.config import positive_int

    p = subparsers.add_parser("predict", help="run a trained image or detection run on images: classes or boxes",
                              description="Run a run directory's model on input files (images) and print its "
                                          "predictions: for an image run the most likely classes with their "
                                          "probabilities; for a detection run the boxes with labels and scores, "
                                          "also drawn on each image. A box is [x0, y0, x1, y1]: left, top, right, "
                                          "bottom in pixels of the image file as given (not of the model's resized "
                                          "input), origin at the top-left corner. 'attnlab data canvas -o canvas.png' "
                                          "writes an image for a digit-canvas detection run.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'attnlab train', or the name of a model "
                                                    "that ships trained weights (attnlab.checkpoints.shipped)")
    p.add_argument("inputs", metavar="IMAGE", nargs="+", help="image files (any format Pillow reads)")
    p.add_argument("--top-k", type=positive_int, default=5, metavar="K", help="how many classes to show (default: 5)")
    add_which_argument(p)
    p.add_argument("--convert", action="store_true", help="convert colour images to greyscale for greyscale models "
                                                          "(otherwise they are refused)")
    p.add_argument("--device", default="cpu", metavar="DEV", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    # detection runs (attnlab train detect): tasks/detect.py
    p.add_argument("--threshold", type=float, default=0.7, metavar="P",
                   help="detection runs: keep detections scoring at least P (default: 0.7)")
    p.add_argument("--output-dir", metavar="DIR", help="detection runs: where to draw each image with its boxes, "
                                                      "IMAGE_STEM.boxes.png, or for images sharing a stem their path "
                                                      "below a common folder, e.g. a_same.png.boxes.png (default: "
                                                      "RUN_DIR/predictions)")
    add_int8_arguments(p)
    one_line_errors(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from attnlab import runs
    from attnlab.errors import ConfigError
    from attnlab.train import distributed as dist

    spec = runs.task_of(args.run_dir)
    if spec.predict is None:
        raise ConfigError(f"'attnlab predict' does not support {spec.name!r} runs")
    run_ = runs.open(args.run_dir, args.which, device=dist.resolve_device(args.device), int8=args.int8,
                     compile=args.compile)
    note_int8(run_)
    options, fmt = PER_TASK.get(spec.name, (_no_options, _as_json))
    preds = spec.predict(run_, args.inputs, **options(args))
    if spec.name in DRAW:
        DRAW[spec.name](run_, preds, args)
    print(json.dumps(preds, indent=2) if args.json else fmt(preds))
    return 0


def format_predictions(preds: list[dict]) -> str:
    lines = []
    for p in preds:
        lines.append(p["image"])
        w = max(len(t["label"]) for t in p["top"])
        for t in p["top"]:
            bar = "█" * max(0, round(24 * t["probability"]))
            lines.append(f"  {t['label']:<{w}}  {100 * t['probability']:6.2f}%  {bar}")
    return "\n".join(lines)


def format_detections(preds: list[dict]) -> str:
    lines = []
    for p in preds:
        lines.append(f"{p['image']}: {len(p['detections'])} detections (drawn in {p['picture']})")
        for d in p["detections"]:
            x0, y0, x1, y1 = d["box"]
            lines.append(f"  {d['label']:<12} {d['score']:.3f}  box x0={x0:g} y0={y0:g} x1={x1:g} y1={y1:g}")
    return "\n".join(lines)


def _no_options(args) -> dict:
    return {}


def _as_json(preds: list[dict]) -> str:
    return json.dumps(preds, indent=2)


#: each task's predict options from the command line, and its text format; a task with
#: ``predict`` but no entry here gets no options and prints its predictions as JSON
PER_TASK = {
    "image": (lambda a: dict(top_k=a.top_k, convert=a.convert), format_predictions),
    "detect": (lambda a: dict(threshold=a.threshold, convert=a.convert), format_detections),
}


def _draw_detections(run_, preds: list[dict], args) -> None:
    from attnlab.viz.detection import save_prediction_pictures

    save_prediction_pictures(run_, preds, args.threshold, args.convert, args.output_dir)


#: the tasks whose predictions are also drawn: each one's drawing, which adds the picture to each prediction
DRAW = {"detect": _draw_detections}
