"""``attnlab export RUN|MODEL_NAME --format onnx|pt2|ctranslate2 [-o PATH] [--int8]``: an ONNX
file, a ``torch.export`` program or a CTranslate2 model folder of a trained run (or of a
registered model, with fresh weights)."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  attnlab export runs/mnist-vit --format onnx                   RUN/export/<model>.onnx
  attnlab export runs/mnist-vit --format pt2 --int8 -o vit8.pt2 int8 Linear layers (torchao)
  attnlab export vit_base_patch16_224 --format onnx --int8      a registered model, fresh weights
  attnlab export runs/multi30k-de-en --format onnx -o mt.onnx   writes mt.encoder.onnx, mt.decoder.onnx
  attnlab export runs/multi30k-de-en --format ctranslate2 --int8   RUN/export/<model>.int8.ct2/ (a folder)

The graphs take any batch size. A ViT takes its own image size (a dynamic_img_size model: any
multiple of the patch size); a Transformer language model any window up to its context, and a second graph,
<stem>.step.<format>, runs one generation step with the key/value cache as input and output; a
recurrent one takes --window tokens. An encoder-decoder Transformer gives an encoder graph and a decoder-step graph
whose key/value cache is an input and an output (attnlab.export.greedy_decode runs them).
ctranslate2: an encoder-decoder Transformer as a CTranslate2 model folder (fp32, or int8 weights
with --int8) whose vocabulary is the token ids ('0'..'V-1'): encode with the run's tokenizer and
decode with attnlab.export.ctranslate2.ct2_greedy (the fast CPU path for batched translation:
BENCHMARKS.md). ONNX and CTranslate2 need the optional extra: pip install 'attnlab[export]'.
"""

def register(subparsers) -> None:
    from attnlab.cli.common import add_which_argument, one_line_errors
    from attnlab.export.formats import FORMATS
    from attnlab.train.config import positive_int

    p = subparsers.add_parser("export", help="export a run or a registered model to ONNX or a torch.export program (.pt2)",
                              description="Export a trained run's model (or a registered model with freshly initialised "
                                          "weights) as ONNX or as a torch.export program, with a dynamic batch "
                                          "dimension; --int8 stores int8 Linear weights. The exported graph is run "
                                          "once and compared with the eager model.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="RUN|MODEL_NAME", help="a run directory of 'attnlab train', a checkpoint with its "
                                                            "config, or a registered model name ('attnlab models')")
    p.add_argument("--format", choices=tuple(FORMATS), default=None,
                   help="; ".join(f"{f.name} ({f.suffix}): {f.supports}" for f in FORMATS.values())
                        + f" (default: from the suffix of -o; else {next(iter(FORMATS))})")
    p.add_argument("-o", "--output", metavar="FILE", default=None,
                   help="the file to write (default: RUN/export/<model>[.int8].<format>, or <model>[.int8].<format> "
                        "here for a model name); an existing file is replaced only if attnlab exported it")
    p.add_argument("--int8", action="store_true", help="int8 weights for the Linear layers (pt2: torchao dynamic int8; "
                                                       "onnx: ONNX Runtime dynamic quantization; ctranslate2: its int8)")
    add_which_argument(p)
    p.add_argument("--window", type=positive_int, default=64, metavar="T",
                   help="tokens per window of a recurrent language model's graph (default: 64, at most 1024: "
                        "the graph is unrolled token by token)")
    p.add_argument("--model-arg", action="append", default=None, metavar="KEY=VALUE",
                   help="for a model name only (a run keeps its own settings): override a field of its config, "
                        "e.g. --model-arg num_classes=10 (repeatable)")
    one_line_errors(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from attnlab.cli.common import log_line
    from attnlab.export.adapter import ExportOptions
    from attnlab.export.formats import format_for
    from attnlab.export.inputs import describe_inputs, summary

    model, name, default_dir, extras = _load(args)
    fmt = format_for(args.format, args.output)
    out = Path(args.output) if args.output else default_dir / f"{name}{'.int8' if args.int8 else ''}{fmt.suffix}"
    options = ExportOptions(int8=args.int8, window=args.window, inputs=describe_inputs(model, extras), extras=extras)
    fmt.check(model, out, options)  # a bad target or model is refused before the (slow) export
    log_line(f"exporting {name} to {fmt.name}{' (int8)' if args.int8 else ''} ...")
    for w in fmt.verify(model, fmt.write(model, out, options), options):
        print(f"{w.path}{'/' if fmt.folder else ''}  {w.mib:.1f} MiB  ({w.check})")
    print(f"  {summary(options.inputs)}")
    return 0


def _load(args):
    """(model, name, default output directory, the run's extras such as its tokenizers) of a run
    directory, checkpoint or model name (:func:`attnlab.runs.open`); a model name's config is
    checked exportable before any weights are allocated."""
    from attnlab import runs
    from attnlab.cli.common import parse_model_args
    from attnlab.export.graph import check_exportable
    from attnlab.models.registry import is_model, probe_model

    overrides = parse_model_args(args.model_arg)
    if is_model(args.source) and not Path(args.source).exists():
        check_exportable(probe_model(args.source, **overrides), args.window)
    run_ = runs.open(args.source, args.which, model_args=overrides)
    return run_.model, run_.name, (run_.run_dir / "export" if run_.run_dir else Path(".")), run_.extras
