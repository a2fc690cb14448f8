"""Boxes: (cx, cy, w, h) <-> (x0, y0, x1, y1), areas, pairwise IoU and generalized IoU
(Rezatofighi et al. 2019). Boxes are float tensors (N, 4); pairwise results are (N, M)."""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.errors import UnsupportedError


def torchvision_ops():
    """``torchvision.ops`` (NMS, box clipping), which tiled and VOC detection use; torchvision is
    optional (the small CPU build of torch has none), so it is imported when first needed."""
    try:
        import torchvision.ops as ops
    except ImportError:
        raise UnsupportedError("VOC data, tiling and RetinaNet need torchvision: install it beside a torch build it "
                               "supports (pip install 'attnlab[anchors]')") from None
    return ops


def cxcywh_to_xyxy(b: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1), any leading shape."""
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def xyxy_to_cxcywh(b: Tensor) -> Tensor:
    """(x0, y0, x1, y1) -> (cx, cy, w, h), any leading shape."""
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def xywh_to_xyxy(b: Tensor) -> Tensor:
    """COCO's (x, y, w, h) -> (x0, y0, x1, y1)."""
    x, y, w, h = b.unbind(-1)
    return torch.stack([x, y, x + w, y + h], dim=-1)


def xyxy_to_xywh(b: Tensor) -> Tensor:
    """(x0, y0, x1, y1) -> COCO's (x, y, w, h)."""
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def box_area(b: Tensor) -> Tensor:
    """Areas of (N, 4) xyxy boxes -> (N,)."""
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def box_iou(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """IoU = |A ∩ B| / |A ∪ B| of xyxy boxes a (N, 4), b (M, 4): (IoU (N, M), union (N, M))."""
    area_a, area_b = box_area(a), box_area(b)
    lt = torch.max(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union, union


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU = IoU - |C \\ (A ∪ B)| / |C|, C the smallest box enclosing A and B; (N, M), in [-1, 1]."""
    iou, union = box_iou(a, b)
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing
