"""``attnlab demo``: the main job — train a small ViT on the bundled 8x8 digits and write an
illustrated report. (First version: a placeholder until the engine and the ViT land.)"""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train a small ViT on the bundled digits and write an illustrated report")
    p.set_defaults(func=run)


def run(args) -> int:
    print("attnlab demo: the training engine is being built; nothing to show yet.")
    return 0
