"""The examples in ``attnlab viz --help`` and ``attnlab viz explore --help`` are true: each parses,
and its --layer/--block/--head exist in the model the example names."""

from __future__ import annotations

import re
import shlex

import pytest
import torch

from attnlab.cli import cmd_viz, viz_explore
from attnlab.cli.main import build_parser
from attnlab.models import create_model, is_model


def examples() -> list[list[str]]:
    out = []
    for epilog in (cmd_viz.EPILOG, viz_explore.EPILOG):
        for line in epilog.splitlines()[1:]:
            words = shlex.split(line)
            if words:
                cut = next((i for i, w in enumerate(words) if w.startswith("(")), len(words))  # a trailing comment
                out.append(words[1:cut])
    return out


def named_model(spec: str) -> str | None:
    """The registered model an example's MODEL names: itself, or the model in a run's default name."""
    m = re.fullmatch(r"runs/[a-z]+-([a-z0-9_]+)-\.\.\.", spec)
    name = m.group(1) if m else spec
    return name if is_model(name) else None


def depths(model) -> tuple[int, int]:
    """(layers an example's --layer/--block counts, heads per layer)."""
    if hasattr(model, "blocks"):  # a ViT
        return len(model.blocks), model.cfg.num_heads
    return len(model.decoder), model.cfg.num_heads  # DETR: the decoder layers


@pytest.mark.parametrize("argv", examples(), ids=lambda a: " ".join(a[:3]))
def test_help_example_is_true(argv):
    args = build_parser().parse_args(argv)
    name = named_model(args.checkpoint if hasattr(args, "checkpoint") else getattr(args, "model", ""))
    layer = getattr(args, "block", -1) if argv[1] == "attention" else getattr(args, "layer", -1)
    if name is None:
        assert layer == -1 and getattr(args, "head", 0) == 0, "an example choosing a layer names its model"
        return
    with torch.device("meta"):
        layers, heads = depths(create_model(name))
    assert -layers <= layer < layers, f"{' '.join(argv)}: {name} has {layers} layers"
    assert 0 <= getattr(args, "head", 0) < heads, f"{' '.join(argv)}: {name} has {heads} heads"


def test_the_examples_are_read():
    assert len(examples()) >= 10 and ["viz", "explore", "vit_tiny_patch16_224", "cat.jpg", "-o", "cat.html"] in examples()
