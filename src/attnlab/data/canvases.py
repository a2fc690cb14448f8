"""Digit canvases: a detection dataset that needs no download.

Each canvas is a square greyscale image with one to several digits pasted at random scales and
places, drawn from scikit-learn's 8x8 digits (built in) or MNIST (``$ATTNLAB_DATA/mnist``).
A canvas depends only on (seed, index): it is generated on the fly, never stored, and the same
on every machine. Training canvases take their digits from the source's training split,
validation canvases from its test split.

Boxes are exact: each is the tight box around the pixels its digit put on the canvas
(x0, y0 at the first such pixel's corner, x1, y1 past the last one), and digits never share
box area, so no box holds another digit's pixels. Targets follow DETR: ``labels`` (M,) and
``boxes`` (M, 4) as (cx, cy, w, h) divided by the canvas size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.detect.boxes import xyxy_to_cxcywh
from attnlab.errors import DataError

SOURCES = ("digits", "mnist")


@dataclass(frozen=True)
class CanvasConfig:
    size: int = 64  # canvas side, pixels
    min_digits: int = 1
    max_digits: int = 3
    min_scale: int = 14  # side of a pasted digit (before its blank margin is cut), pixels
    max_scale: int = 28
    source: str = "digits"  # digits (scikit-learn, built in) or mnist[:DIR]

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits:
            raise DataError(f"canvas digits: need 1 <= min_digits <= max_digits, got {self.min_digits}..{self.max_digits}")
        if not 4 <= self.min_scale <= self.max_scale <= self.size:
            raise DataError(f"canvas digit scale {self.min_scale}..{self.max_scale} must lie in 4..{self.size} (the canvas)")
        if self.source.split(":")[0] not in SOURCES:
            raise DataError(f"unknown canvas source {self.source!r}; use digits or mnist[:DIR]")


@dataclass
class DetectionSet:
    """Detection images in memory (canvases, a COCO or VOC set, or tiles of VOC photographs):
    images (N, C, H, W) uint8 — square canvases, or photographs resized as DETR and padded at
    the bottom and right to the largest of the set — per image labels (M,) and boxes (M, 4)
    (cx, cy, w, h as fractions of the image's own pixels), and each image's (height, width): its
    real pixels inside the padding (what :func:`attnlab.detect.batching.pixel_mask` keeps)."""

    images: Tensor
    labels: list[Tensor]
    boxes: list[Tensor]
    sizes: list[tuple[int, int]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # file names (COCO), empty for canvases

    def __post_init__(self) -> None:
        if not self.sizes:
            self.sizes = [tuple(self.images.shape[-2:])] * len(self.images)

    def __len__(self) -> int:
        return len(self.images)

    def targets(self, idx=None) -> list[dict]:
        idx = range(len(self)) if idx is None else idx
        return [{"labels": self.labels[int(i)], "boxes": self.boxes[int(i)]} for i in idx]

    def subset(self, idx) -> DetectionSet:
        idx = [int(i) for i in idx]
        return DetectionSet(self.images[idx], [self.labels[i] for i in idx], [self.boxes[i] for i in idx],
                            [self.sizes[i] for i in idx], [self.names[i] for i in idx] if self.names else [])


class DigitCanvases:
    """Canvas ``i`` of ``split`` ("train" or "val") for a seed, drawn on demand."""

    def __init__(self, cfg: CanvasConfig, split: str = "train", seed: int = 0) -> None:
        from attnlab.data import images as D

        self.cfg, self.seed = cfg, seed
        self.split_id = {"train": 0, "val": 1}[split]
        splits = D.load(cfg.source, progress=False)
        part = splits.train if split == "train" else splits.test
        self.digits = part.images[:, 0].float() / 255  # (n, h, w) in [0, 1]
        self.digit_labels = part.labels
        self.classes = list(splits.classes)

    def draw(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        """(image (1, S, S) uint8, labels (M,), boxes (M, 4) cx, cy, w, h in [0, 1])."""
        c = self.cfg
        rng = np.random.default_rng([self.seed, self.split_id, int(i)])
        canvas = torch.zeros(c.size, c.size)
        labels, boxes = [], []
        for _ in range(int(rng.integers(c.min_digits, c.max_digits + 1))):
            for _attempt in range(20):  # a place whose digit box overlaps no earlier one
                j = int(rng.integers(len(self.digits)))
                s = int(rng.integers(c.min_scale, c.max_scale + 1))
                patch = F.interpolate(self.digits[j][None, None], size=(s, s), mode="bilinear", align_corners=False,
                                      antialias=True)[0, 0]
                patch = (patch * 255).round().clamp(0, 255) / 255
                ys, xs = (patch > 0).nonzero(as_tuple=True)
                if len(ys) == 0:
                    break
                y0, x0 = int(rng.integers(0, c.size - s + 1)), int(rng.integers(0, c.size - s + 1))
                box = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
                if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
                    region = canvas[y0:y0 + s, x0:x0 + s]
                    torch.maximum(region, patch, out=region)
                    labels.append(int(self.digit_labels[j]))
                    boxes.append(box)
                    break
        cxcywh = xyxy_to_cxcywh(torch.tensor(boxes, dtype=torch.float32).view(-1, 4) / c.size)
        image = (canvas * 255).round().to(torch.uint8)[None]
        return image, torch.tensor(labels, dtype=torch.long), cxcywh

    def take(self, indices) -> DetectionSet:
        drawn = [self.draw(int(i)) for i in indices]
        return DetectionSet(torch.stack([d[0] for d in drawn]), [d[1] for d in drawn], [d[2] for d in drawn])


def make_canvases(cfg: CanvasConfig, n: int, seed: int = 0, split: str = "train") -> DetectionSet:
    """Canvases 0..n-1 of ``split`` for ``seed``."""
    return DigitCanvases(cfg, split, seed).take(range(n))


def write_canvas(cfg: CanvasConfig, path: str | Path, index: int = 0, split: str = "val", seed: int = 0) -> dict:
    """Write canvas ``index`` of ``split`` to ``path`` as a greyscale PNG (atomically); returns its
    digits: ``labels`` (class names) and ``boxes`` [x0, y0, x1, y1] in the PNG's pixels, the format
    in which ``attnlab predict --json`` reports detections."""
    import io

    from PIL import Image

    from attnlab.detect.boxes import cxcywh_to_xyxy
    from attnlab.io import atomic_write_bytes

    canvases = DigitCanvases(cfg, split, seed)
    image, labels, boxes = canvases.draw(index)  # (1, S, S), (M,), (M, 4) cx, cy, w, h in [0, 1]
    png = io.BytesIO()
    Image.fromarray(image[0].numpy(), "L").save(png, format="PNG")
    atomic_write_bytes(path, png.getvalue())
    xyxy = (cxcywh_to_xyxy(boxes) * cfg.size).round().int()
    return {"labels": [canvases.classes[int(k)] for k in labels], "boxes": xyxy.tolist()}
