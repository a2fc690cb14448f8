"""Pictures of a detector: the predicted boxes with labels and scores, and DETR's attention.

- :func:`plot_detections`: an image with its boxes; :func:`save_prediction_pictures` draws the
  images of ``attnlab predict`` (:func:`attnlab.tasks.detect.predict`) into files.
- :func:`plot_detr_attention`: the paper's Fig. 6, each confident query's decoder
  cross-attention (last layer, heads averaged) over the image beside its box, and Fig. 3, the
  encoder self-attention (last layer, heads averaged) of a few feature-map points (the centres
  of the detected boxes) over the image; :func:`attention_figure` is ``attnlab viz attention``'s.
  The weights are recorded as every model's are (:class:`attnlab.viz.record.AttentionRecorder`).

Figures are :class:`matplotlib.figure.Figure` built without pyplot; save them with
:func:`attnlab.viz.common.save_figure`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from attnlab.data.images import read_images, read_model_images
from attnlab.data.transforms import default_normalization
from attnlab.detect.coco_eval import postprocess
from attnlab.io import check_output_dir
from attnlab.viz.common import HEATMAP, save_figure
from attnlab.viz.record import AttentionRecorder

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
    """Run DETR in eval mode on normalised images x (B, C, H, W) with its attention recorded:
    ``out`` (the model's dict), ``cross`` (L, B, H, N, T) every decoder layer's cross-attention,
    ``encoder`` (L, B, H, T, T) every encoder layer's self-attention; T = h*w cells of the
    feature map ``out["feature_size"]``, row-major."""
    was = model.training
    model.eval()
    try:
        with AttentionRecorder(model) as rec:
            out = model(x)
    finally:
        model.train(was)
    return {"out": out, "cross": torch.stack(rec.stacked(".cross_attn")), "encoder": torch.stack(rec.stacked("encoder."))}


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
    fh, fw = att["out"]["feature_size"]
    cross = att["cross"][-1, 0].mean(0).view(-1, fh, fw)  # (N, h, w): the last layer, heads averaged
    encoder = att["encoder"][-1, 0].mean(0).view(-1, fh, fw)  # (T, h, w)
    size = tuple(image.shape[-2:])
    det = postprocess(att["out"]["logits"], att["out"]["boxes"], [size])[0]
    order = det["scores"].argsort(descending=True)
    keep = [int(i) for i in order if det["scores"][i] >= threshold][:max_queries] or [int(i) for i in order[:3]]
    confident = {k: v[keep] for k, v in det.items()}
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
        _overlay(ax, image, encoder[cy * fw + cx])
        py, px = (cy + 0.5) * size[0] / fh - 0.5, (cx + 0.5) * size[1] / fw - 0.5
        ax.plot([px], [py], marker="o", markersize=6, markerfacecolor="none", markeredgecolor="cyan", markeredgewidth=1.5)
        ax.set_title(f"encoder self-attn. at ({cy}, {cx})", fontsize=8)
    for n, q in enumerate(keep):
        r, c = 1 + n // (cols // 2), 2 * (n % (cols // 2))
        ax = fig.add_subplot(grid[r, c])
        _overlay(ax, image, cross[q])
        ax.set_title(f"query {q}: cross-attention", fontsize=8)
        ax = fig.add_subplot(grid[r, c + 1])
        _show(ax, image)
        draw_boxes(ax, {k: v[n:n + 1] for k, v in confident.items()}, labels, color_of=n)
        ax.set_title(f"query {q}: {labels[int(confident['labels'][n])]} {float(confident['scores'][n]):.2f}", fontsize=8)
    fig.suptitle(title or f"DETR attention ({fh}x{fw} feature map; last encoder and decoder layers, heads averaged)",
                 fontsize=9)
    return fig



def attention_figure(model, run, image_path: str, image: torch.Tensor | None = None, seen: str = "") -> Figure:
    """``attnlab viz attention`` for a DETR (``run`` a :class:`~attnlab.tasks.spec.LoadedRun` of
    a trained run, or None for a registered name with random weights): DETR's Fig. 6 and Fig. 3
    on ``image`` (uint8 (C, H, W): the file as the run's model sees it, ``seen`` saying how;
    default: the file resized to the model's square)."""
    if image is None:
        image = read_model_images([image_path], model, convert=True)[0]
    if run is not None:
        normalize, labels = run.extras["normalize"], run.extras["labels"]
    else:
        normalize, labels = default_normalization(model), [str(i) for i in range(model.cfg.num_classes)]
    name = run.name if run is not None else f"{model.name} (random init)"
    return plot_detr_attention(model, image, normalize, labels,
                               title=f"{name} on {Path(image_path).name}{f' ({seen})' if seen else ''}: decoder "
                                     "cross-attention of confident queries (Fig. 6), encoder self-attention at box "
                                     "centres (Fig. 3)")


def save_prediction_pictures(run, preds: list[dict], threshold: float, convert: bool = False,
                             output_dir: str | Path | None = None) -> None:
    """Draw each image of ``preds`` (:func:`attnlab.tasks.detect.predict`'s, for ``run``) with
    its boxes into ``output_dir`` (default ``RUN_DIR/predictions``) under the name
    :func:`picture_names` gives it; each prediction gets the picture's path as ``picture``."""
    out_dir = Path(output_dir) if output_dir else run.run_dir / "predictions"
    check_output_dir(out_dir)
    labels = run.extras["labels"]
    for p, name in zip(preds, picture_names([p["image"] for p in preds])):
        image = read_images([p["image"]], None, run.model.cfg.in_chans, convert)[0]
        found = p["detections"]
        dets = {"scores": torch.tensor([d["score"] for d in found]),
                "labels": torch.tensor([d["index"] for d in found], dtype=torch.long),
                "boxes": torch.tensor([d["box"] for d in found]).reshape(-1, 4)}
        title = f"{Path(p['image']).name}: {len(found)} detections (score >= {threshold:g})"
        p["picture"] = str(save_figure(plot_detections(image, dets, labels, title), out_dir / name))


def picture_names(inputs: list[str]) -> list[str]:
    """The file name of each input's drawing, one per distinct file and always the same for the
    same inputs: ``STEM.boxes.png``; files sharing a stem are named by their path below the
    folder they share (``a/same.png`` and ``b/same.png``: ``a_same.png.boxes.png`` and
    ``b_same.png.boxes.png``); a name still taken (letter case aside) gets ``-2``, ``-3``..."""
    files = [Path(os.path.abspath(p)) for p in inputs]
    distinct = list(dict.fromkeys(files))
    by_stem: dict[str, list[Path]] = {}
    for f in distinct:
        by_stem.setdefault(f.stem.casefold(), []).append(f)
    names: dict[Path, str] = {}
    for f in distinct:
        group = by_stem[f.stem.casefold()]
        base = f.stem if len(group) == 1 else "_".join(f.relative_to(os.path.commonpath(group)).parts)
        name, n = base, 1
        while name.casefold() in {v.casefold() for v in names.values()}:
            n += 1
            name = f"{base}-{n}"
        names[f] = name
    return [f"{names[f]}.boxes.png" for f in files]
