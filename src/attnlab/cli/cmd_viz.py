"""``attnlab viz``: pictures of models.

Each picture is a subcommand added by one ``add_<name>(subparsers)`` function listed in
:data:`SUBCOMMANDS`. Every picture that reads a model takes a registered name (random init), a
checkpoint file or a run directory (``RUN_DIR``, ``RUN_DIR:last``).
"""

from __future__ import annotations

import argparse

from attnlab.cli.common import add_output_arguments, one_line_errors
from attnlab.errors import ConfigError
from attnlab.train.config import positive_int

EPILOG = """examples:
  attnlab viz posembed vit_base_patch16_224 -o posembed.png        (random init: a smoke test)
  attnlab viz posembed runs/image-vit_digits-... -o posembed.png      (a trained run or checkpoint file)
  attnlab viz attention runs/image-vit_cifar-... cat.jpg -o attention.png --block 5
  attnlab viz attention runs/lm-transformer_lm_char-... "ROMEO: But soft" -o attention.png
  attnlab viz attention runs/translate-... "Ein Hund rennt." -o alignment.png
  attnlab viz gradients runs/rnn runs/lstm runs/transformer -o gradients.png
"""

_MODEL_HELP = ("a model name (random init, e.g. vit_tiny_patch16_224; see 'attnlab models'), a checkpoint file that "
               "carries its config, or a run directory (RUN_DIR, RUN_DIR:last)")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "viz", help="pictures: position-embedding similarity, attention maps and rollout, gradient norms",
        description="Draw pictures of a model as PNG files.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="picture", metavar="PICTURE")
    for add in SUBCOMMANDS:
        add(sub)
    from attnlab.cli.viz_explore import add_parser as add_explore  # issue 14: `viz explore`, owned by cli/viz_explore.py

    add_explore(sub)
    for sp in sub.choices.values():
        one_line_errors(sp)
    one_line_errors(p)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def load_vit(spec: str, seed: int = 0, what: str = "these pictures"):
    """The run layer's :func:`attnlab.runs.open` of ``spec``, refused unless it is a Vision Transformer
    (:class:`attnlab.models.capabilities.PatchTransformer`)."""
    from attnlab import runs
    from attnlab.models.capabilities import PatchTransformer

    run = runs.open(spec, seed=seed)
    if not isinstance(run.model, PatchTransformer):
        raise ConfigError(f"{spec!r} is a {type(run.model).__name__}; {what} need a Vision Transformer")
    return run


# ---------------------------------------------------------------------- posembed
def add_posembed(sub) -> None:
    p = sub.add_parser(
        "posembed", help="cosine similarity of the patches' position embeddings (ViT paper, Fig. 7)",
        description="For every patch, the cosine similarity of its position embedding with those of all "
                    "patches, as a grid of small maps (the ViT paper's Fig. 7).",
    )
    p.add_argument("checkpoint", metavar="MODEL", help=_MODEL_HELP)
    add_output_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the random init when MODEL is a model name (default: 0)")
    p.set_defaults(func=run_posembed)


def run_posembed(args) -> int:
    from attnlab.viz.common import check_dpi, check_picture_path, save_figure
    from attnlab.viz.vit import plot_posembed_similarity

    check_picture_path(args.output)
    check_dpi(args.dpi)
    run = load_vit(args.checkpoint, args.seed, "position-embedding pictures")
    fig = plot_posembed_similarity(run.model)
    if run.random_init:
        fig.suptitle(f"{args.checkpoint} (random init, seed {args.seed})", fontsize=10)
    print(f"wrote {save_figure(fig, args.output, dpi=args.dpi)}")
    return 0


# ---------------------------------------------------------------------- attention
def add_attention(sub) -> None:
    p = sub.add_parser(
        "attention", help="attention of a model on one input: ViT rollout + heads, LM heads x layers, translation "
                          "alignment",
        description="A ViT on an IMAGE: the image with its attention rollout (Abnar & Zuidema 2020) laid over it, and "
                    "each head's attention from the class token to the patches in one block (the image is resized to "
                    "the model's input size; a run's own normalisation is used, else the model's pretrained_cfg: 0.5 "
                    "for timm's ViT names, ImageNet's mean/std for other RGB models and [0, 1] pixels for 1-channel "
                    "models, unless --mean/--std say otherwise). A language-"
                    "model run on a TEXT: the self-attention of every layer and head over its tokens. A translation "
                    "run on a source SENTENCE: the cross-attention between the source and its translation (greedy, "
                    "or --target), target tokens x source tokens (Bahdanau et al. 2015, Fig. 3).",
    )
    p.add_argument("checkpoint", metavar="MODEL", help=_MODEL_HELP)
    p.add_argument("input", metavar="INPUT", help="an image file (ViT), a text (language model) or a source sentence "
                                                  "(translation)")
    add_output_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the random init when MODEL is a model name (default: 0)")
    p.add_argument("--block", type=int, default=-1, help="ViT: the block whose heads to draw, 0-based; negative counts "
                                                          "from the end (default: -1, the last)")
    p.add_argument("--layer", type=int, default=-1, help="translation: the decoder layer whose cross-attention to draw "
                                                          "(default: -1, the last)")
    p.add_argument("--target", help="translation: the target sentence (default: the model's greedy translation)")
    p.add_argument("--discard-ratio", type=float, default=0.0,
                   help="ViT rollout: drop this fraction of each row's smallest weights, in [0, 1) (default: 0)")
    p.add_argument("--head-fusion", choices=("mean", "max", "min"), default="mean",
                   help="ViT rollout: how to combine the heads of a block (default: mean)")
    p.add_argument("--mean", type=float, nargs="+", help="ViT: per-channel mean to normalise the image with")
    p.add_argument("--std", type=float, nargs="+", help="ViT: per-channel std (> 0) to normalise the image with")
    p.set_defaults(func=run_attention)


def run_attention(args) -> int:
    from attnlab.viz.common import check_dpi, check_picture_path, save_figure

    check_picture_path(args.output)
    check_dpi(args.dpi)
    if not 0.0 <= args.discard_ratio < 1.0:
        raise ConfigError(f"--discard-ratio {args.discard_ratio} must be in [0, 1)")
    from attnlab import runs
    from attnlab.models.capabilities import QueryDetector

    run = runs.open(args.checkpoint, seed=args.seed)
    model, task = run.model, (run.spec.name if run.spec is not None else None)
    if task == "lm":
        fig = _lm_attention(run, args.input)
    elif task == "translate":
        fig = _alignment(run, args.input, args.target, args.layer)
    elif isinstance(model, QueryDetector):
        from attnlab.tasks.detect import seen_image
        from attnlab.viz.detection import attention_figure  # DETR Fig. 6 and Fig. 3

        trained = run if run.spec is not None else None
        image, seen = seen_image(trained, args.input, convert=True) if trained is not None else (None, "")
        fig = attention_figure(model, trained, args.input, image, seen)
    else:
        fig = _vit_attention(model, run, args)
    print(f"wrote {save_figure(fig, args.output, dpi=args.dpi)}")
    return 0


def _vit_attention(model, run, args):
    from attnlab.data.images import read_model_images
    from attnlab.data.transforms import choose_normalization
    from attnlab.models.capabilities import PatchTransformer
    from attnlab.viz.vit import plot_attention

    if not isinstance(model, PatchTransformer):
        raise ConfigError(f"{args.checkpoint!r} is a {type(model).__name__}; attention pictures are drawn for Vision "
                          "Transformers, language-model runs and translation runs")
    extras = run.extras  # a run's own normalisation and class names
    normalize = choose_normalization(model, extras.get("normalize"), args.mean, args.std)
    image = read_model_images([args.input], model, convert=True)[0]
    return plot_attention(model, image, normalize, block=args.block, discard_ratio=args.discard_ratio,
                          head_fusion=args.head_fusion, class_names=extras.get("labels"))


def _lm_attention(run, text: str):
    import torch

    from attnlab.errors import DataError
    from attnlab.viz.text import MAX_TOKENS, lm_attention, plot_lm_attention, token_labels

    tok = run.extras["tokenizer"]
    ids = tok.encode(text)[:MAX_TOKENS]
    if not ids:
        raise DataError(f"the text {text!r} gives no tokens")
    maps = lm_attention(run.model, torch.tensor([ids]))
    return plot_lm_attention(maps, token_labels(tok, ids), f"{run.name}: self-attention, layers x heads "
                             f"({len(ids)} tokens{', cut' if len(ids) == MAX_TOKENS else ''})")


def _alignment(run, source: str, target: str | None, layer: int):
    import torch

    from attnlab.errors import DataError
    from attnlab.tasks.translate import DecodeOptions, translate_lines
    from attnlab.viz.text import MAX_TOKENS, plot_alignment, token_labels, translation_attention

    src_tok, tgt_tok = run.extras["src_tokenizer"], run.extras["tgt_tokenizer"]
    src_ids = src_tok.encode(source.strip())[:MAX_TOKENS] + [src_tok.eos_id]
    if len(src_ids) < 2:
        raise DataError(f"the sentence {source!r} gives no tokens")
    if target is None:
        target = translate_lines(run.model, src_tok, tgt_tok, [source], DecodeOptions(beam=1))[0]
    tgt_ids = tgt_tok.encode(target.strip())[:MAX_TOKENS] + [tgt_tok.eos_id]
    w = translation_attention(run.model, torch.tensor([src_ids]), torch.tensor([[tgt_tok.bos_id] + tgt_ids[:-1]]), layer)
    title = f"{run.name}: cross-attention (decoder layer {layer}, heads averaged)\n{source.strip()} -> {target.strip()}"
    return plot_alignment(w, token_labels(src_tok, src_ids), token_labels(tgt_tok, tgt_ids), title)


# ---------------------------------------------------------------------- gradients
def add_gradients(sub) -> None:
    p = sub.add_parser(
        "gradients", help="gradient norm vs distance back from the loss (RNN/GRU/LSTM/Transformer runs)",
        description="For language-model runs (attnlab train lm) trained on the same text: the norm of the gradient of "
                    "the loss at the last position of a window with respect to the input embedding (or the recurrent "
                    "hidden state, --wrt hidden) at each earlier position, averaged over windows of the validation "
                    "text: vanishing and exploding gradients as a plot. The copy task (accuracy against lag, "
                    "trained from scratch) is the experiment 'attnlab experiment rnn-forgetting'.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="language-model run directories (same text)")
    add_output_arguments(p)
    p.add_argument("--length", type=positive_int, default=100, metavar="T",
                   help="window length (capped by a Transformer's context) (default: 100)")
    p.add_argument("--windows", type=positive_int, default=16, metavar="N", help="windows to average over (default: 16)")
    p.add_argument("--wrt", choices=("embedding", "hidden"), default="embedding",
                   help="gradient w.r.t. the input embedding (default) or the recurrent hidden state")
    p.add_argument("--seed", type=int, default=0, help="which validation windows (default: 0)")
    p.set_defaults(func=run_gradients)


def run_gradients(args) -> int:
    from attnlab.viz.common import check_dpi, check_picture_path, save_figure

    out = check_picture_path(args.output)
    check_dpi(args.dpi)
    curves = gradient_curves(args.run_dirs, args.length, args.windows, args.wrt, args.seed)
    from attnlab.viz.gradients import plot_gradient_norms

    fig = plot_gradient_norms(curves, subtitle=f"loss at the last of T tokens, mean over {args.windows} validation windows")
    print(f"wrote {save_figure(fig, out, dpi=args.dpi)}")
    return 0


def gradient_curves(run_dirs: list[str], length: int, windows: int, wrt: str, seed: int) -> dict:
    """Gradient norm against distance for each language-model run; the runs must share one text."""
    import torch

    from attnlab import runs
    from attnlab.tasks.lm import LMDataConfig, read_corpus
    from attnlab.viz.gradients import gradient_norms, model_kind, text_windows

    curves, texts = {}, {}
    for rd in run_dirs:
        run = runs.open(rd, default="last")
        if run.spec.name != "lm":
            raise ConfigError(f"{rd} is a {run.spec.name!r} run; 'viz gradients' reads language-model runs")
        d = run.record["data_config"]
        texts[rd] = (d.get("text"), d.get("train"), d.get("valid"), d.get("valid_fraction"))
        if len(set(texts.values())) > 1:
            first = run_dirs[0]
            raise ConfigError(f"{rd} was trained on other text than {first}; the curves compare models on one text")
        dc = LMDataConfig(**{k: v for k, v in d.items() if k in LMDataConfig.__dataclass_fields__})
        ids = torch.tensor(run.extras["tokenizer"].encode(read_corpus(dc).valid), dtype=torch.long)
        kind = model_kind(run.model)
        n = length if kind != "transformer" else min(length, run.model.cfg.max_len)
        on_hidden = wrt == "hidden" and kind != "transformer"
        norms = gradient_norms(run.model, text_windows(ids, n, windows, seed), "hidden" if on_hidden else "embedding")
        curves[f"{kind} (w.r.t. {'hidden state' if on_hidden else 'embedding'}, "
               f"{run.record['model']['parameters']:,} params)"] = norms
        print(f"{rd}: {kind}, gradient norm at distance 0: {float(norms[0]):.3g}, at {n - 1}: {float(norms[-1]):.3g}")
    return curves


SUBCOMMANDS = [add_posembed, add_attention, add_gradients]
