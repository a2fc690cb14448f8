"""``attnlab data canvas -o canvas.png``: write a sample of the built-in data, such as a digit
canvas to run a detection run on (``attnlab predict``, ``attnlab viz attention``)."""

from __future__ import annotations

from attnlab.cli.common import one_line_errors


def register(subparsers) -> None:
    from attnlab.train.config import nonneg_int, positive_int

    p = subparsers.add_parser("data", help="write samples of the built-in data: 'attnlab data canvas -o canvas.png'",
                              description="Write samples of the data attnlab generates itself.")
    sub = p.add_subparsers(dest="what", metavar="WHAT")
    c = sub.add_parser("canvas", help="write a digit canvas (the detection data) as a PNG and print its digits' boxes",
                       description="Write one digit canvas, the same on every machine, as a greyscale PNG, and print "
                                   "its digits with their boxes: x0, y0, x1, y1 (left, top, right, bottom) in the "
                                   "PNG's pixels, as 'attnlab predict --json' reports a detection run's boxes.")
    c.add_argument("-o", "--output", required=True, metavar="FILE", help="the PNG file to write")
    c.add_argument("--dataset", default="digits-canvas", metavar="SPEC",
                   help="digits-canvas (built in, the default) or mnist-canvas[:DIR], as for 'attnlab train detect'")
    c.add_argument("--split", choices=("val", "train"), default="val",
                   help="validation canvases (the default: no run trained on them) or training ones")
    c.add_argument("--index", type=nonneg_int, default=0, metavar="N", help="which canvas of the split (default: 0)")
    c.add_argument("--size", type=positive_int, default=64, metavar="PX",
                   help="the canvas side in pixels, at least 28 (default: 64, detr_digits' image size)")
    one_line_errors(c)
    c.set_defaults(func=run_canvas)
    one_line_errors(p)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def run_canvas(args) -> int:
    from attnlab.data.canvases import write_canvas
    from attnlab.tasks.detect import DetectDataConfig, canvas_config

    cfg = canvas_config(DetectDataConfig(dataset=args.dataset), args.size)
    digits = write_canvas(cfg, args.output, args.index, args.split)
    split = "validation" if args.split == "val" else "training"
    print(f"{args.output}: {split} canvas {args.index} of {args.dataset}, {args.size}x{args.size} pixels, "
          f"{len(digits['labels'])} digits")
    for label, (x0, y0, x1, y1) in zip(digits["labels"], digits["boxes"]):
        print(f"  {label:<12} box x0={x0} y0={y0} x1={x1} y1={y1}")
    return 0
