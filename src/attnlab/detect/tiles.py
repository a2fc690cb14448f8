"""Large photographs in overlapping tiles, for training and for prediction, and the detections of
the tiles merged into one set for the photograph.

Windows of side S step by S - O (O the overlap) from the top-left corner; the last window of a
row or column is moved back flush with the image's border, so the windows cover every pixel and
neighbours overlap by at least O. A side shorter than S gets one window as long as that side:
all windows of an image have one size, so its tiles stack into one batch. With O at least the
largest object's side, an object cut by a tile's border lies whole in a neighbouring tile.

Training (:func:`tile_scene`): a tile keeps the objects of which at least ``min_visible`` of the
area lies inside it, clipped to it; thinner slivers are dropped (their pixels stay in the tile).

Prediction (:func:`merge_detections`, :func:`predict_tiled`): each tile's detections are shifted
back to the photograph's pixels and merged by torchvision's ``batched_nms`` (per class).
Optionally (``edge``), a detection that touches an inner border of its own tile (within ``edge``
pixels) is dropped first when another tile's window holds it whole: that tile saw the object
uncut (given the overlap above), and the cut copy would survive NMS whenever it covers no more
than ``iou_threshold`` of the whole one, or replace it when it scores higher. (Should that tile
miss the object, it is lost: the rule trusts the uncut view.)

Scoring (:class:`TiledScenes`): validation and evaluation predict tile by tile in batches and
merge each scene's tiles the same way, so metrics are those of whole scenes at full resolution.

Boxes are (N, 4) x0, y0, x1, y1 in pixels; windows (K, 4) the same, row by row.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from attnlab.detect.boxes import box_area, torchvision_ops
from attnlab.detect.scene import Scene
from attnlab.errors import ConfigError


def tile_starts(length: int, size: int, overlap: int) -> list[int]:
    """Offsets of the windows along one side of ``length`` pixels: 0, S - O, 2(S - O), ..., and
    ``length - S`` (the last, flush with the border); [0] when the side is at most S."""
    if size < 1 or not 0 <= overlap < size:
        raise ConfigError(f"tiles of {size} px with overlap {overlap} px: need size >= 1 and 0 <= overlap < size")
    if length <= size:
        return [0]
    stride = size - overlap
    return [i * stride for i in range(math.ceil((length - size) / stride))] + [length - size]


def tile_windows(height: int, width: int, size: int, overlap: int) -> Tensor:
    """The windows covering a (height, width) image: (K, 4) int64 x0, y0, x1, y1, row by row."""
    h, w = min(size, height), min(size, width)
    return torch.tensor([[x, y, x + w, y + h] for y in tile_starts(height, size, overlap)
                         for x in tile_starts(width, size, overlap)], dtype=torch.int64).view(-1, 4)


def visible_fraction(boxes: Tensor, window: Tensor) -> Tensor:
    """The fraction of each box's area inside ``window`` (4,): boxes (M, 4) -> (M,) in [0, 1]
    (0 for a box of zero area)."""
    win = window.to(boxes.dtype)
    lt, rb = torch.max(boxes[:, :2], win[:2]), torch.min(boxes[:, 2:], win[2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = box_area(boxes)
    return torch.where(area > 0, inter / area.clamp(min=1e-12), torch.zeros_like(area))


def tile_scene(scene: Scene, size: int, overlap: int, min_visible: float = 0.5) -> list[Scene]:
    """The tiles of ``scene``, row by row, each with the objects at least ``min_visible`` inside it
    (clipped to it, in its coordinates); a tile's ``origin`` is its window's corner."""
    if not 0 < min_visible <= 1:
        raise ConfigError(f"min_visible {min_visible} must be a fraction in (0, 1]")
    h, w = scene.size
    boxes = scene.boxes.float()
    return [scene.crop(win.tolist(), visible_fraction(boxes, win) >= min_visible)
            for win in tile_windows(h, w, size, overlap)]


def _touch_inner_border(boxes: Tensor, windows: Tensor, full: Tensor, edge: float) -> Tensor:
    """(N,) bool: box n comes within ``edge`` pixels of a border of ``windows[n]`` that is not a
    border of the image ``full`` (x0, y0, x1, y1), or crosses one."""
    lo = (boxes[:, :2] - windows[:, :2] <= edge) & (windows[:, :2] > full[:2])  # left and top borders
    hi = (windows[:, 2:] - boxes[:, 2:] <= edge) & (windows[:, 2:] < full[2:])  # right and bottom borders
    return torch.cat([lo, hi], 1).any(1)


def merge_detections(detections: list[dict], windows: Tensor, iou_threshold: float = 0.5,
                     edge: float | None = None) -> dict:
    """One set of detections for the photograph from those of its tiles.

    ``detections[k]``: ``scores`` (N_k,), ``labels`` (N_k,), ``boxes`` (N_k, 4) in pixels of tile k,
    whose window is ``windows[k]``. Returns ``scores``, ``labels``, ``boxes`` (in the photograph's
    pixels) and ``tile`` (the index of the tile each came from), by decreasing score."""
    if not detections or len(detections) != len(windows):
        raise ConfigError(f"{len(detections)} tiles of detections for {len(windows)} windows")
    boxes = torch.cat([d["boxes"].float().view(-1, 4) + windows[k, [0, 1, 0, 1]].float() for k, d in enumerate(detections)])
    scores = torch.cat([d["scores"].float().view(-1) for d in detections])
    labels = torch.cat([d["labels"].view(-1) for d in detections])
    tile = torch.cat([torch.full((len(d["scores"]),), k) for k, d in enumerate(detections)])
    if edge is not None and len(boxes):
        win = windows.to(boxes.dtype)
        inside = ((boxes[:, None, :2] >= win[None, :, :2]) & (boxes[:, None, 2:] <= win[None, :, 2:])).all(-1)  # (N, K)
        inside[torch.arange(len(boxes)), tile] = False
        full = torch.cat([win[:, :2].amin(0), win[:, 2:].amax(0)])  # the image: the union of the windows
        keep = ~(_touch_inner_border(boxes, win[tile], full, edge) & inside.any(1))
        boxes, scores, labels, tile = boxes[keep], scores[keep], labels[keep], tile[keep]
    keep = torchvision_ops().batched_nms(boxes, scores, labels, iou_threshold)  # by decreasing score
    return {"scores": scores[keep], "labels": labels[keep], "boxes": boxes[keep], "tile": tile[keep]}


@torch.no_grad()
def predict_tiled(image: Tensor, detect: Callable[[Tensor], list[dict]], size: int, overlap: int,
                  batch_size: int = 8, iou_threshold: float = 0.5, edge: float | None = None) -> dict:
    """Detections on a large ``image`` (C, H, W): ``detect`` maps a batch of tiles (B, C, h, w) to
    their detections in tile pixels (``scores``, ``labels``, ``boxes``), and
    :func:`merge_detections` merges them."""
    windows = tile_windows(image.shape[-2], image.shape[-1], size, overlap)
    tiles = torch.stack([image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in windows.tolist()])  # (K, C, h, w)
    dets = [d for chunk in tiles.split(batch_size) for d in detect(chunk)]
    return merge_detections(dets, windows, iou_threshold, edge)


@dataclass
class TiledScenes:
    """Scenes and their tiles, for scoring detections made tile by tile on the whole scenes:
    ``tiles`` of every scene in order (:func:`tile_scene`'s), ``scene_of`` (K,) the scene of each
    tile and ``windows`` (K, 4) its window in that scene's pixels."""

    scenes: list[Scene]
    tiles: list[Scene]
    scene_of: list[int]
    windows: Tensor

    def merge(self, detections: list[dict], iou_threshold: float = 0.5) -> list[dict]:
        """Per scene, the detections of its tiles (``detections[k]`` of tile k, in tile pixels)
        merged by :func:`merge_detections`."""
        if len(detections) != len(self.tiles):
            raise ConfigError(f"{len(detections)} tiles of detections for {len(self.tiles)} tiles")
        out = []
        for s in range(len(self.scenes)):
            ks = [k for k, of in enumerate(self.scene_of) if of == s]
            out.append(merge_detections([detections[k] for k in ks], self.windows[ks], iou_threshold))
        return out


def tile_scenes(scenes: list[Scene], size: int, overlap: int, min_visible: float = 0.5) -> TiledScenes:
    """:func:`tile_scene` on each scene, remembering where each tile lies."""
    tiles, scene_of, windows = [], [], []
    for s, scene in enumerate(scenes):
        tiles += tile_scene(scene, size, overlap, min_visible)
        win = tile_windows(*scene.size, size, overlap)
        scene_of += [s] * len(win)
        windows.append(win)
    return TiledScenes(scenes, tiles, scene_of, torch.cat(windows) if windows else torch.zeros(0, 4, dtype=torch.int64))
