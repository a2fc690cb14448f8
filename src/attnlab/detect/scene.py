"""A scene: one photograph at its own resolution with its objects, and cutting a window out of it.

The VOC reader (:mod:`attnlab.data.voc`) gives scenes; tiling (:mod:`attnlab.detect.tiles`) and
the validation split by region (:func:`attnlab.data.voc.split_by_region`) cut them into smaller
scenes, each remembering where it lies in the photograph it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.detect.boxes import torchvision_ops
from attnlab.errors import ShapeError


@dataclass
class Scene:
    """image uint8 (C, H, W); labels (M,) class indices; boxes (M, 4) x0, y0, x1, y1 in pixels of
    this image; ``origin`` (x, y): where this image's pixel (0, 0) lies in the photograph it was
    cut from ((0, 0) for a whole photograph)."""

    image: Tensor
    labels: Tensor
    boxes: Tensor
    name: str = ""
    origin: tuple[int, int] = (0, 0)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])

    def crop(self, window: Sequence[int], keep: Tensor) -> Scene:
        """The part inside ``window`` (x0, y0, x1, y1) in pixels, with the objects ``keep`` (bool (M,))
        in its coordinates, clipped to it. Its name is ``NAME@x0,y0``."""
        x0, y0, x1, y1 = (int(v) for v in window)
        h, w = self.size
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise ShapeError(f"window {[x0, y0, x1, y1]} is not inside {self.name or 'the image'} ({w}x{h})")
        shift = torch.tensor([x0, y0, x0, y0], dtype=self.boxes.dtype)
        boxes = torchvision_ops().clip_boxes_to_image(self.boxes[keep] - shift, (y1 - y0, x1 - x0))
        return Scene(self.image[:, y0:y1, x0:x1], self.labels[keep], boxes, f"{self.name}@{x0},{y0}",
                     (self.origin[0] + x0, self.origin[1] + y0))
