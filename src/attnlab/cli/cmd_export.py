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

SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "ctranslate2": ".ct2"}


def register(subparsers) -> None:
    from attnlab.cli.common import add_which_argument, one_line_errors
    from attnlab.train.config import positive_int

    p = subparsers.add_parser("export", help="export a run or a registered model to ONNX or a torch.export program (.pt2)",
                              description="Export a trained run's model (or a registered model with freshly initialised "
                                          "weights) as ONNX or as a torch.export program, with a dynamic batch "
                                          "dimension; --int8 stores int8 Linear weights. The exported graph is run "
                                          "once and compared with the eager model.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="RUN|MODEL_NAME", help="a run directory of 'attnlab train', a checkpoint with its "
                                                            "config, or a registered model name ('attnlab models')")
    p.add_argument("--format", choices=tuple(SUFFIX), default=None,
                   help="onnx, pt2 or ctranslate2 (default: from the suffix of -o: .onnx, .pt2, .ct2; else onnx)")
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
    import torch

    from attnlab.cli.common import log_line
    from attnlab.export.graph import export_model, graphs_of, load_graph, piece_path

    model, name, default_dir, extras = _load(args)
    fmt = args.format or _format_of(args.output)
    out = Path(args.output) if args.output else default_dir / f"{name}{'.int8' if args.int8 else ''}{SUFFIX[fmt]}"
    if fmt == "ctranslate2":
        return _export_ctranslate2(model, name, out, args.int8, extras)
    graphs = graphs_of(model, window=args.window)
    for g in graphs:  # refuse a bad target before the (slow) export
        _check_target(piece_path(out, g.name), fmt)
    log_line(f"exporting {name} to {fmt}{' (int8)' if args.int8 else ''} ...")
    written = export_model(model, out, fmt, int8=args.int8, window=args.window)
    for path, g in zip(written, graphs):
        with torch.no_grad():
            want = g.module(*g.args)
        got = load_graph(path)(*g.args)
        want = want if isinstance(want, tuple) else (want,)
        err = max((a.float() - b.float()).abs().max().item() for a, b in zip(got, want) if a.is_floating_point())
        size = sum(f.stat().st_size for f in (path, path.with_name(path.name + ".data")) if f.exists()) / 2**20
        print(f"{path}  {size:.1f} MiB  (max |difference| from the fp32 eager model on an example batch: {err:.2g})")
    return 0


def _format_of(output: str | None) -> str:
    from attnlab.errors import ConfigError

    if output is None:
        return "onnx"
    for fmt, sfx in SUFFIX.items():
        if output.endswith(sfx):
            return fmt
    raise ConfigError(f"cannot tell the format from {output!r}: give --format onnx, pt2 or ctranslate2, or end -o with "
                      ".onnx, .pt2 or .ct2")


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


def _check_target(path: Path, fmt: str) -> None:
    """Refuse a directory, a suffix that is not the format's, or an existing file that attnlab did
    not export (recognised by the record every export writes into its graphs, not by its layout)."""
    from attnlab.errors import ConfigError
    from attnlab.export.graph import read_export_record

    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give -o a file name ending in {SUFFIX[fmt]}")
    if path.suffix != SUFFIX[fmt]:
        raise ConfigError(f"{path}: a {fmt} file must end in {SUFFIX[fmt]}")
    if path.exists() and read_export_record(path) is None:
        raise ConfigError(f"{path} exists and was not exported by attnlab; it is left untouched: choose another -o")


def _export_ctranslate2(model, name: str, out: Path, int8: bool, extras: dict) -> int:
    """Write the CTranslate2 folder, then check that its greedy tokens on a few example sources
    equal the eager fp32 model's (fp32) or say how many agree (int8)."""
    import torch

    from attnlab.cli.common import log_line
    from attnlab.decode.search import SearchConfig, greedy_search
    from attnlab.export.ctranslate2 import check_supported, check_target, ct2_greedy, to_ctranslate2

    check_supported(model)
    check_target(out)
    tok = extras.get("tgt_tokenizer")
    ids = dict(bos=tok.bos_id, eos=tok.eos_id) if tok is not None else {}
    log_line(f"exporting {name} to ctranslate2{' (int8)' if int8 else ''} ...")
    to_ctranslate2(model, out, "int8" if int8 else None, unk=tok.unk_id if tok is not None else None, **ids)
    src = torch.randint(4, model.cfg.src_vocab_size, (4, 12), generator=torch.Generator().manual_seed(0))
    want = greedy_search(model, src, SearchConfig(**ids, max_len_a=0, max_len_b=16))
    got = ct2_greedy(out, src, 16, **ids)
    same = sum(a == b for w, g in zip(want, got) for a, b in zip(w, g))
    total = sum(max(len(w), len(g)) for w, g in zip(want, got))
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"{out}/  {size:.1f} MiB  (greedy tokens on 4 example sources: {same} of {total} equal to the fp32 eager model's)")
    return 0
