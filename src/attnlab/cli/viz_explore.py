"""``attnlab viz explore MODEL INPUT -o page.html``: the offline attention explorer
(:mod:`attnlab.viz.explore`). ``cmd_viz`` calls :func:`add_parser`; :func:`run` is its ``func``."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from attnlab.errors import ConfigError

DESCRIPTION = """\
Write one self-contained HTML page (inline JS and CSS, the image as a data URI, no request to
any server) to explore a model's attention on one input:
  a ViT (a registered name, a checkpoint or a run) on an IMAGE: where each patch attends, per
    block and head, over the image; the attention rollout; the position-embedding similarity;
  a Transformer language model on a prompt: head view, model view (layers x heads);
  a translation model on a source sentence: encoder, decoder and cross-attention, one decoding
    step at a time (the target is the model's greedy translation, or --target);
  a DETR (a run, or a registered name) on an IMAGE: each confident query's box with its decoder
    cross-attention over the image (DETR Fig. 6), the encoder self-attention of any feature-map
    cell (Fig. 3);
and in each, a worked head: Q·Kᵀ, ÷√d_k, softmax and ·V with the model's real numbers.
A registered name builds a random-init model (the page says so) unless --weights fills it
(timm, torchvision, Hugging Face, JAX or attnlab files); text models named by the
registry or read from a checkpoint file need their tokenizer (--tokenizer, or --src-tokenizer
and --tgt-tokenizer). The page stays under --max-mb: larger models keep evenly spaced layers."""

EPILOG = """examples:
  attnlab viz explore vit_tiny_patch16_224 cat.jpg -o cat.html             (random init)
  attnlab viz explore vit_base_patch16_224 cat.jpg -o cat.html --weights vit_base.pth   (timm weights)
  attnlab viz explore runs/image-vit_digits-... digit.png -o digit.html --layer 3 --head 2   (blocks 0..3, heads 0..3)
  attnlab viz explore runs/lm-transformer_lm_char-... "ROMEO: But soft" -o romeo.html
  attnlab viz explore runs/translate-... "Ein Hund läuft." -o mt.html --target "A dog runs."
  attnlab viz explore runs/detect-detr_digits-... canvas.png -o detr.html --threshold 0.5
"""


def add_parser(sub) -> None:
    p = sub.add_parser("explore", help="one offline HTML page to explore a model's attention (ViT, LM, translation, DETR)",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="a registered model name (random init), a checkpoint file that carries "
                                                  "its config, or a run directory (RUN_DIR, RUN_DIR:last)")
    p.add_argument("input", metavar="INPUT", help="an image file (ViT, DETR), a prompt (language model) or a source sentence "
                                                  "(translation)")
    p.add_argument("-o", "--output", required=True, type=Path, help="the HTML file to write (an existing file must be HTML)")
    p.add_argument("--weights", type=Path, help="weights to load into the registered MODEL: a timm, torchvision, Hugging Face, "
                                                "JAX .npz or attnlab checkpoint (default: none, random init)")
    p.add_argument("--target", help="translation: the target sentence to force (default: the model's greedy translation)")
    p.add_argument("--tokenizer", type=Path, help="the tokenizer JSON of a language model (or the joint one of a translation "
                                                  "model) when MODEL is not a run")
    p.add_argument("--src-tokenizer", type=Path, help="translation: the source tokenizer JSON when MODEL is not a run")
    p.add_argument("--tgt-tokenizer", type=Path, help="translation: the target tokenizer JSON when MODEL is not a run")
    p.add_argument("--layer", type=int, default=-1, help="the worked head's layer (ViT block, LM block, translation: a layer "
                                                          "of --attention, DETR: a decoder layer's cross-attention), "
                                                          "negative counts from the end (default: -1)")
    p.add_argument("--head", type=int, default=0, help="the worked head's head (default: 0)")
    p.add_argument("--attention", choices=("enc", "dec", "cross"), default="cross",
                   help="translation: the worked head's attention: encoder self, decoder self or cross (default: cross)")
    p.add_argument("--mean", type=float, nargs="+", help="ViT, DETR: per-channel mean to normalise the image with "
                                                         "(default: a run's own, else the one the checkpoint's layout "
                                                         "fixes, else the model's pretrained_cfg: 0.5 for timm's ViT "
                                                         "names, ImageNet's for other RGB models, [0, 1] for grey)")
    p.add_argument("--std", type=float, nargs="+", help="ViT, DETR: per-channel std (> 0) to normalise the image with")
    p.add_argument("--threshold", type=float, default=0.7, help="DETR: show the queries whose score reaches this (the three "
                                                                "best when none does; default: 0.7)")
    p.add_argument("--max-mb", type=float, default=3.0, help="size budget of the page in MB; past it, evenly spaced layers "
                                                             "are kept and the page says so (default: 3.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init when MODEL is a registered name (default: 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    from attnlab.viz import explore

    explore.check_output(args.output)  # before any work: refuse a directory or a non-HTML file
    if not 0 < args.max_mb < math.inf:
        raise ConfigError(f"--max-mb must be a finite number > 0, got {args.max_mb}")
    model, tokenizers, random_init, extras, run = load(args)
    kind = family(model)
    if args.target is not None and kind != "translation":
        raise ConfigError("--target is for translation models only")
    worked, budget = (args.layer, args.head), int(args.max_mb * 1e6)
    label = args.model
    if kind in ("vit", "detr"):
        from attnlab.data.images import read_model_images
        from attnlab.data.transforms import choose_normalization

        normalize = choose_normalization(model, extras.get("normalize"), args.mean, args.std)
        if kind == "detr" and run is not None and run.spec is not None:
            from attnlab.tasks.detect import seen_image

            image = seen_image(run, args.input, convert=True)[0]  # as trained: a tile, resized as DETR, or squashed
        else:
            image = read_model_images([args.input], model, convert=True)[0]
        if kind == "vit":
            data = explore.explore_vit(model, image, normalize, label=label, random_init=random_init, worked=worked,
                                       class_names=extras.get("labels"), budget=budget)
        else:
            data = explore.explore_detr(model, image, normalize, extras.get("labels"), label=label,
                                        random_init=random_init, threshold=args.threshold, worked=worked, budget=budget)
    elif kind == "lm":
        data = explore.explore_lm(model, tokenizers, args.input, label=label, random_init=random_init,
                                  worked=worked, budget=budget)
    else:
        src_tok, tgt_tok = tokenizers
        data = explore.explore_translation(model, src_tok, tgt_tok, args.input, args.target, label=label,
                                           random_init=random_init, worked=worked, worked_set=args.attention, budget=budget)
    path = explore.write_page(data, args.output)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def family(model) -> str:
    """"vit", "lm", "translation" or "detr"; one line for a model the explorer cannot show."""
    from attnlab.models.capabilities import AUTOREGRESSIVE, LanguageModel, PatchTransformer, QueryDetector, Translator

    if isinstance(model, PatchTransformer):
        return "vit"
    if isinstance(model, QueryDetector):
        return "detr"
    if isinstance(model, LanguageModel) and not model.is_recurrent:
        return "lm"
    if isinstance(model, Translator) and model.decoding == AUTOREGRESSIVE:
        return "translation"
    if isinstance(model, LanguageModel):
        raise ConfigError(f"{getattr(model, 'name', 'this model')} is a recurrent language model: it has no attention to explore")
    if isinstance(model, Translator):
        raise ConfigError("the explorer does not show the non-autoregressive mask-predict model; use a Transformer run")
    raise ConfigError(f"the explorer cannot show a {type(model).__name__}; "
                      "it shows ViTs, Transformer LMs, translation models and DETR")


def load(args):
    """(model in eval mode, tokenizers, random_init, extras, the LoadedRun or None for a registered
    name) from :func:`attnlab.runs.open`: a
    registered name (with its tokenizers' vocabulary sizes for a text model, and --weights if
    given), a run directory (RUN_DIR, RUN_DIR:last) or a checkpoint file; text models get their
    tokenizer(s) from the run or the options. ``extras``: a run's own normalisation and class
    names, or the normalisation a checkpoint's layout fixes."""
    import torch

    from attnlab import runs
    from attnlab.models import create_model, is_model

    spec = args.model
    if is_model(spec) and not Path(spec).exists():
        with torch.device("meta"):  # the family (and so which tokenizers) before allocating weights
            kind = family(create_model(spec))
        tokenizers = _tokenizers(args, kind)
        model = runs.open(spec, seed=args.seed, model_args=_vocab_overrides(kind, tokenizers)).model
        if args.weights is not None:
            from attnlab.checkpoints import load_checkpoint

            stats = load_checkpoint(model, args.weights)["normalize"]
            from attnlab.data.transforms import Normalize

            return model, tokenizers, False, {} if stats is None else {"normalize": Normalize(**stats)}, None
        return model, tokenizers, True, {}, None
    if args.weights is not None:
        raise ConfigError("--weights goes with a registered model name (MODEL builds the model, --weights fills it)")
    run = runs.open(spec, seed=args.seed)
    kind = family(run.model)
    if kind == "lm" and "tokenizer" in run.extras:
        return run.model, run.extras["tokenizer"], False, run.extras, run
    if kind == "translation" and "src_tokenizer" in run.extras:
        return run.model, (run.extras["src_tokenizer"], run.extras["tgt_tokenizer"]), False, run.extras, run
    return run.model, _tokenizers(args, kind), False, run.extras, run


def _tokenizers(args, kind: str):
    """The tokenizer(s) a text model needs, from --tokenizer / --src-tokenizer / --tgt-tokenizer."""
    from attnlab.data.tokenizers import load_tokenizer

    if kind in ("vit", "detr"):
        return None
    if kind == "lm":
        if args.tokenizer is None:
            raise ConfigError(f"{args.model!r} is a language model: give its tokenizer with --tokenizer FILE, "
                              "or pass a run directory")
        return load_tokenizer(args.tokenizer)
    src, tgt = args.src_tokenizer or args.tokenizer, args.tgt_tokenizer or args.tokenizer
    if src is None or tgt is None:
        raise ConfigError(f"{args.model!r} is a translation model: give --tokenizer FILE (joint) or --src-tokenizer and "
                          "--tgt-tokenizer, or pass a run directory")
    s = load_tokenizer(src)
    return s, (s if tgt == src else load_tokenizer(tgt))


def _vocab_overrides(kind: str, tokenizers) -> dict:
    if kind == "lm":
        return {"vocab_size": tokenizers.vocab_size}
    if kind == "translation":
        s, t = tokenizers
        return {"src_vocab_size": s.vocab_size, "tgt_vocab_size": t.vocab_size, "share_embeddings": s is t,
                "pad_id": s.pad_id if s.pad_id is not None else 0}
    return {}
