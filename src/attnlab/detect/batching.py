"""DETR's input batches: an aspect-preserving resize and padding with a pixel mask.

Resize (DETR's ``get_size_with_aspect_ratio`` in ``datasets/transforms.py``, as Hugging Face's
image processor computes it with ``shortest_edge`` / ``longest_edge``): the shorter side becomes
``shortest`` unless the longer side would then pass ``longest``; then the longer side becomes
``longest`` (truncated) and the shorter one follows the aspect ratio, rounded. (The original
DETR derives the longer side from the rounded shorter one, which can pass ``longest`` by a
pixel or two.) Boxes scale with their axis (x by new_w / w, y by new_h / h).

Padding (DETR's ``nested_tensor_from_tensor_list``): images of a batch are padded at the right
and bottom with 0 to the largest height and width; the mask (B, H, W) is True on real pixels and
False on padding (Hugging Face's ``pixel_mask``; the ``mask`` :class:`attnlab.models.detr.DETR`
takes). DETR pads the *normalised* image, so padding must be 0 after normalisation:
``normalize(x).masked_fill(~mask[:, None], 0)``.

Targets, as in the original DETR (and not as Hugging Face since transformers#28363): boxes
(cx, cy, w, h) divided by their own image's size before padding, since DETR's position encoding
counts only real pixels and its boxes are relative to the real image (facebookresearch/detr#286).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.detect.boxes import xyxy_to_cxcywh
from attnlab.errors import ConfigError, ShapeError


def detr_size(height: int, width: int, shortest: int, longest: int | None = None) -> tuple[int, int]:
    """(new height, new width): Hugging Face's ``get_size_with_aspect_ratio``, DETR's with the
    long side computed from the unrounded capped short side, so it never passes ``longest``."""
    if shortest < 1 or (longest is not None and longest < shortest):
        raise ConfigError(f"resize to shorter side {shortest}, longer side at most {longest}: need 1 <= shortest <= longest")
    lo, hi = float(min(height, width)), float(max(height, width))
    raw = float(shortest)
    if longest is not None and hi / lo * shortest > longest:
        raw = longest * lo / hi
        shortest = int(round(raw))
    if (height <= width and height == shortest) or (width <= height and width == shortest):
        return height, width
    if width < height:
        return int(raw * height / width), shortest
    return shortest, int(raw * width / height)


def resize_keep_aspect(image: Tensor, boxes: Tensor, shortest: int, longest: int | None = None) -> tuple[Tensor, Tensor]:
    """image uint8 (C, H, W) and boxes (M, 4) x0, y0, x1, y1 in its pixels -> both at :func:`detr_size`
    (bilinear with antialiasing, as Pillow resizes)."""
    if image.dim() != 3:
        raise ShapeError(f"resize_keep_aspect takes one image (C, H, W), got {tuple(image.shape)}")
    h, w = image.shape[-2:]
    oh, ow = detr_size(h, w, shortest, longest)
    if (oh, ow) != (h, w):
        x = F.interpolate(image[None].float(), size=(oh, ow), mode="bilinear", align_corners=False, antialias=True)[0]
        image = x.round_().clamp_(0, 255).to(image.dtype) if not image.is_floating_point() else x.to(image.dtype)
    scale = torch.tensor([ow / w, oh / h, ow / w, oh / h], dtype=torch.float32)
    return image, boxes.float() * scale


def pixel_mask(sizes: list[tuple[int, int]], height: int, width: int) -> Tensor:
    """(B, height, width) bool, True on the real pixels of images of ``sizes`` (h_i, w_i) padded at
    the right and bottom."""
    rows, cols = torch.arange(height), torch.arange(width)
    return torch.stack([(rows < h)[:, None] & (cols < w)[None, :] for h, w in sizes])


def pad_batch(images: list[Tensor], multiple: int = 1) -> tuple[Tensor, Tensor]:
    """Images (C, H_i, W_i) -> (B, C, H, W) padded with 0 at the right and bottom to the largest
    height and width rounded up to a ``multiple`` (a backbone's stride), and the mask (B, H, W)
    bool, True = a real pixel."""
    if not images or len({(im.dim(), im.shape[0]) for im in images}) != 1 or images[0].dim() != 3:
        raise ShapeError(f"pad_batch takes images (C, H, W) of one C, got {[tuple(im.shape) for im in images]}")
    hh, ww = (-(-max(im.shape[i] for im in images) // multiple) * multiple for i in (1, 2))
    x = images[0].new_zeros(len(images), images[0].shape[0], hh, ww)
    for i, im in enumerate(images):
        x[i, :, :im.shape[1], :im.shape[2]] = im
    return x, pixel_mask([tuple(im.shape[1:]) for im in images], hh, ww)


def detr_batch(images: list[Tensor], boxes: list[Tensor], labels: list[Tensor], shortest: int,
               longest: int | None = None) -> tuple[Tensor, Tensor, list[dict]]:
    """A batch as DETR trains on it: each image (C, H_i, W_i) with its boxes (M_i, 4) x0, y0, x1, y1
    in pixels resized by :func:`resize_keep_aspect`, then :func:`pad_batch`. Returns images
    (B, C, H, W), mask (B, H, W) and per image ``labels`` (M_i,) and ``boxes`` (M_i, 4) (cx, cy, w, h)
    divided by that image's resized size (not the padded one)."""
    if not len(images) == len(boxes) == len(labels):
        raise ShapeError(f"detr_batch: {len(images)} images, {len(boxes)} box sets and {len(labels)} label sets")
    resized = [resize_keep_aspect(im, b, shortest, longest) for im, b in zip(images, boxes)]
    x, mask = pad_batch([im for im, _ in resized])
    targets = []
    for (im, b), lab in zip(resized, labels):
        h, w = im.shape[-2:]
        targets.append({"labels": lab, "boxes": xyxy_to_cxcywh(b) / torch.tensor([w, h, w, h], dtype=torch.float32)})
    return x, mask, targets
