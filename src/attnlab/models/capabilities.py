"""What a model family can do, declared once on its class (issue 22 item 3): code above
``models/`` asks these, it does not ``isinstance`` a family.

- :class:`ImageClassifier`: the family classifies images, (B, C, H, W) -> logits (B, K), and
  says which images through its ``image_input`` property (an :class:`ImageInput`). The image
  task trains such a model (``TaskSpec.model_kinds``) and export writes it as one graph
  images -> logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ImageInput:
    """The images a classifier takes: (B, channels, H, W)."""

    channels: int
    size: tuple[int, int]  # (H, W) it was built for
    multiple_of: int | None = None  # H and W may be any multiple of this (a dynamic_img_size ViT); None: exactly size


@runtime_checkable
class ImageClassifier(Protocol):
    """A model that classifies images; ``isinstance(model, ImageClassifier)`` asks it."""

    @property
    def image_input(self) -> ImageInput: ...
