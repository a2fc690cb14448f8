"""``attnlab viz``: pictures of models.

Each picture is a subcommand added by one ``add_<name>(subparsers)`` function listed in
:data:`SUBCOMMANDS`; to add a picture, write such a function (parser + ``func``) and list it.
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from attnlab.errors import CheckpointError, ConfigError

EPILOG = """examples:
  attnlab viz posembed vit_base_patch16_224 -o posembed.png        (random init: a smoke test)
  attnlab viz posembed runs/vit_digits -o posembed.png               (a trained run or checkpoint file)
  attnlab viz attention runs/vit_cifar cat.jpg -o attention.png --block 5
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "viz", help="pictures: position-embedding similarity, attention maps and rollout",
        description="Draw pictures of a model as PNG files.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="picture", metavar="PICTURE")
    for add in SUBCOMMANDS:
        add(sub)
    from attnlab.cli.viz_explore import add_parser as add_explore  # issue 14: `viz explore`, owned by cli/viz_explore.py

    add_explore(sub)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, type=Path, help="the PNG file to write")
    p.add_argument("--dpi", type=int, default=120, help="resolution of the PNG (default: 120)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init when CHECKPOINT is a model name (default: 0)")


_CHECKPOINT_HELP = ("a model name (random init, e.g. vit_tiny_patch16_224; see the registry) or a checkpoint file / "
                    "run directory that carries its config")


def load_vit(spec: str, seed: int = 0):
    """A Vision Transformer from a registered model name (random init, seeded) or from a
    checkpoint file or run directory (via :func:`attnlab.checkpoints.load_model`)."""
    import torch

    from attnlab.models import VisionTransformer, create_model, is_model, list_models

    if is_model(spec):
        torch.manual_seed(seed)
        model = create_model(spec)
    elif Path(spec).exists():
        try:
            from attnlab.checkpoints import load_model
        except ImportError as e:
            raise CheckpointError(f"cannot load {spec!r}: attnlab.checkpoints.load_model is missing ({e})") from None
        model = load_model(spec)
        if isinstance(model, tuple):  # (model, report)
            model = model[0]
    else:
        close = difflib.get_close_matches(spec, list_models(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; attnlab.list_models() lists the names"
        raise ConfigError(f"{spec!r} is neither a model name nor an existing checkpoint file or run directory{hint}")
    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"{spec!r} is a {type(model).__name__}; these pictures need a Vision Transformer")
    return model.eval()


# ---------------------------------------------------------------------- posembed
def add_posembed(sub) -> None:
    p = sub.add_parser(
        "posembed", help="cosine similarity of the patches' position embeddings (ViT paper, Fig. 7)",
        description="For every patch, the cosine similarity of its position embedding with those of all "
                    "patches, as a grid of small maps (the ViT paper's Fig. 7).",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help=_CHECKPOINT_HELP)
    _common(p)
    p.set_defaults(func=run_posembed)


def run_posembed(args) -> int:
    from attnlab.viz.vit import plot_posembed_similarity, save_figure

    model = load_vit(args.checkpoint, args.seed)
    path = save_figure(plot_posembed_similarity(model), args.output, dpi=args.dpi)
    print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------- attention
def add_attention(sub) -> None:
    p = sub.add_parser(
        "attention", help="attention rollout over an image and the per-head maps of one block",
        description="The image with its attention rollout (Abnar & Zuidema 2020) laid over it, and each head's "
                    "attention from the class token to the patches in one block. The image is resized to the "
                    "model's input size; RGB models get ImageNet mean/std normalisation unless --mean/--std say "
                    "otherwise, 1-channel models get pixels in [0, 1].",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help=_CHECKPOINT_HELP)
    p.add_argument("image", metavar="IMAGE", type=Path, help="an image file Pillow can read (PNG, JPEG, ...)")
    _common(p)
    p.add_argument("--block", type=int, default=-1, help="the block whose heads to draw, 0-based; negative counts "
                                                          "from the end (default: -1, the last)")
    p.add_argument("--discard-ratio", type=float, default=0.0,
                   help="rollout: drop this fraction of each row's smallest weights (default: 0)")
    p.add_argument("--head-fusion", choices=("mean", "max", "min"), default="mean",
                   help="rollout: how to combine the heads of a block (default: mean)")
    p.add_argument("--mean", type=float, nargs="+", help="per-channel mean to normalise the image with")
    p.add_argument("--std", type=float, nargs="+", help="per-channel std to normalise the image with")
    p.set_defaults(func=run_attention)


def run_attention(args) -> int:
    from attnlab.viz.vit import load_image, plot_attention, save_figure

    model = load_vit(args.checkpoint, args.seed)
    image = load_image(args.image, model.cfg.img_size, model.cfg.in_chans)
    fig = plot_attention(model, image, block=args.block, mean=args.mean, std=args.std,
                         discard_ratio=args.discard_ratio, head_fusion=args.head_fusion)
    path = save_figure(fig, args.output, dpi=args.dpi)
    print(f"wrote {path}")
    return 0


def add_gradients(sub) -> None:  # language models: the picture lives with its logic in attnlab.viz.gradients
    from attnlab.viz.gradients import add_gradients as add

    add(sub)


SUBCOMMANDS = [add_posembed, add_attention, add_gradients]
