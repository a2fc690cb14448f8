"""Pictures of a detector: the predicted boxes with labels and scores, and DETR's attention.

- :func:`plot_detections`: an image with its boxes.
- :func:`plot_detr_attention`: the paper's Fig. 6, each confident query's decoder
  cross-attention (last layer, heads averaged) over the image beside its box, and Fig. 3, the
  encoder self-attention (last layer, heads averaged) of a few feature-map points (the centres
  of the detected boxes) over the image.

Figures are :class:`matplotlib.figure.Figure` built without pyplot; save them with
:func:`attnlab.viz.common.save_figure`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from attnlab.detect.coco_eval import postprocess
from attnlab.viz.common import HEATMAP

BOX_COLORS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#17becf")


def _show(ax, image: Tensor) -> None:
    """image uint8 (C, H, W)."""
    img = image.permute(1, 2, 0).numpy()
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None, vmin=0, vmax=255)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_boxes(ax, dets: dict, labels: list[str], color_of: int | None = None) -> None:
    """Boxes (x0, y0, x1, y1) in the image's pixels with 'label score' tags."""
    for n, (s, lab, box) in enumerate(zip(dets["scores"].tolist(), dets["labels"].tolist(), dets["boxes"].tolist())):
        c = BOX_COLORS[(n if color_of is None else color_of) % len(BOX_COLORS)]
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=c, linewidth=1.6))
        ax.text(x0 - 0.5, y0 - 1, f"{labels[lab]} {s:.2f}", color="white", fontsize=7, va="bottom",
                bbox={"facecolor": c, "edgecolor": "none", "pad": 1.0, "alpha": 0.9})


def plot_detections(image: Tensor, dets: dict, labels: list[str], title: str | None = None) -> Figure:
    """image uint8 (C, H, W) with its detections (``scores``, ``labels``, ``boxes`` in pixels)."""
    h, w = image.shape[-2:]
    scale = 5.0 / max(h, w)
    fig = Figure(figsize=(max(3.0, w * scale + 0.4), max(3.0, h * scale + 0.6)), layout="constrained")
    ax = fig.add_subplot()
    _show(ax, image)
    draw_boxes(ax, dets, labels)
    ax.set_title(title or f"{len(dets['scores'])} detections", fontsize=9)
    return fig


@torch.no_grad()
def detr_attention(model, x: Tensor) -> dict:
    """Run DETR on one normalised image x (1, C, H, W) with attention maps: ``out`` (the model's
    dict), ``cross`` (N, h, w) last decoder layer's cross-attention per query, heads averaged,
    ``encoder`` (T, h, w) the last encoder layer's self-attention per query point."""
    was = model.training
    model.eval()
    out = model(x, need_weights=True)
    model.train(was)
    h, w = out["feature_size"]
    cross = out["cross_attention"][-1][0].mean(0).view(-1, h, w)  # (N, h, w)
    enc = out["encoder_attention"][-1][0].mean(0).view(-1, h, w)  # (T, h, w)
    return {"out": out, "cross": cross, "encoder": enc}


def _overlay(ax, image: Tensor, heat: Tensor) -> None:
    """A feature-map heat map (h, w) upsampled over the image."""
    _show(ax, image)
    up = F.interpolate(heat[None, None].float(), size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
    up = (up - up.min()) / (up.max() - up.min() + 1e-12)
    ax.imshow(up.numpy(), cmap=HEATMAP, alpha=0.6)


def plot_detr_attention(model, image: Tensor, normalize, labels: list[str], threshold: float = 0.7,
                        max_queries: int = 6, points: int = 3, title: str | None = None) -> Figure:
    """DETR Fig. 6 and Fig. 3 for image uint8 (C, S, S) at the model's size.

    Top row: the detections, then the encoder self-attention of ``points`` feature-map cells
    (the centres of the most confident boxes; the image centre if none). Below: for the most
    confident queries (score >= ``threshold``; the best three when none reach it), the query's
    cross-attention over the image beside its box."""
    att = detr_attention(model, normalize(image[None]))
    size = tuple(image.shape[-2:])
    det = postprocess(att["out"]["logits"], att["out"]["boxes"], [size])[0]
    order = det["scores"].argsort(descending=True)
    keep = [int(i) for i in order if det["scores"][i] >= threshold][:max_queries] or [int(i) for i in order[:3]]
    confident = {k: v[keep] for k, v in det.items()}
    fh, fw = att["encoder"].shape[-2:]
    centres = [((b[1] + b[3]) / 2, (b[0] + b[2]) / 2) for b in confident["boxes"].tolist()][:points]
    centres = centres or [(size[0] / 2, size[1] / 2)]
    cells = list(dict.fromkeys((min(int(y / size[0] * fh), fh - 1), min(int(x / size[1] * fw), fw - 1)) for y, x in centres))

    cols = 1 + max(len(cells), 3)
    rows = 1 + math.ceil(len(keep) / (cols // 2))
    fig = Figure(figsize=(2.3 * cols, 2.45 * rows + 0.4), layout="constrained")
    grid = fig.add_gridspec(rows, cols)
    ax = fig.add_subplot(grid[0, 0])
    _show(ax, image)
    draw_boxes(ax, confident, labels)
    ax.set_title("detections", fontsize=8)
    for j, (cy, cx) in enumerate(cells):
        ax = fig.add_subplot(grid[0, 1 + j])
        _overlay(ax, image, att["encoder"][cy * fw + cx])
        py, px = (cy + 0.5) * size[0] / fh - 0.5, (cx + 0.5) * size[1] / fw - 0.5
        ax.plot([px], [py], marker="o", markersize=6, markerfacecolor="none", markeredgecolor="cyan", markeredgewidth=1.5)
        ax.set_title(f"encoder self-attn. at ({cy}, {cx})", fontsize=8)
    for n, q in enumerate(keep):
        r, c = 1 + n // (cols // 2), 2 * (n % (cols // 2))
        ax = fig.add_subplot(grid[r, c])
        _overlay(ax, image, att["cross"][q])
        ax.set_title(f"query {q}: cross-attention", fontsize=8)
        ax = fig.add_subplot(grid[r, c + 1])
        _show(ax, image)
        draw_boxes(ax, {k: v[n:n + 1] for k, v in confident.items()}, labels, color_of=n)
        ax.set_title(f"query {q}: {labels[int(confident['labels'][n])]} {float(confident['scores'][n]):.2f}", fontsize=8)
    fig.suptitle(title or f"DETR attention ({fh}x{fw} feature map; last encoder and decoder layers, heads averaged)",
                 fontsize=9)
    return fig

