"""COCO box metrics through the COCO evaluator itself (pycocotools' COCOeval): AP (mean over
IoU 0.50:0.95), AP50, AP75 and AR (recall, mean over IoU 0.50:0.95), each counting at most
``max_dets`` detections per image, the highest scored: COCO's 100 by default; dense scenes
(hundreds of objects in one photograph) need more, e.g. 300.

Ground truth and detections are built in memory as COCO JSON would hold them: boxes
(x, y, w, h) in pixels of each image, a category id per class index.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from torch import Tensor

from attnlab.detect.boxes import cxcywh_to_xyxy, xyxy_to_xywh
from attnlab.errors import ConfigError

MAX_DETS = 100  # COCO's detections per image


@torch.no_grad()
def postprocess(logits: Tensor, boxes: Tensor, sizes: list[tuple[int, int]]) -> list[dict]:
    """DETR's detections: for every query, the most likely object class (not "no object") with its
    probability as the score, and its box in pixels. logits (B, N, K+1), boxes (B, N, 4)
    cx, cy, w, h in [0, 1], ``sizes`` (height, width) per image -> per image ``scores`` (N,),
    ``labels`` (N,), ``boxes`` (N, 4) x0, y0, x1, y1 in pixels."""
    prob = logits.float().softmax(-1)[..., :-1]
    scores, labels = prob.max(-1)
    out = []
    for b, (h, w) in enumerate(sizes):
        xyxy = cxcywh_to_xyxy(boxes[b].float()) * torch.tensor([w, h, w, h], dtype=torch.float32, device=boxes.device)
        out.append({"scores": scores[b].cpu(), "labels": labels[b].cpu(), "boxes": xyxy.cpu()})
    return out


def coco_metrics(ground_truth: list[dict], detections: list[dict], category_ids: list[int],
                 max_dets: int = MAX_DETS) -> dict[str, float]:
    """AP, AP50, AP75 and AR of ``detections`` against ``ground_truth``, both lists in image order,
    at most ``max_dets`` detections per image. Read from COCOeval's accumulated precision and
    recall at area "all" as its ``summarize`` reads them (``summarize`` itself would read AP at
    100 detections whatever ``maxDets`` is).

    ground_truth: per image ``size`` (height, width), ``labels`` (M,), ``boxes`` (M, 4) x0, y0, x1, y1
    in pixels; detections: per image ``scores``, ``labels``, ``boxes`` as :func:`postprocess` gives.
    ``category_ids[label]`` is the COCO category id of a class index."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 1:
        raise ConfigError(f"max_dets {max_dets!r}: the detections counted per image must be a whole number >= 1")
    images, anns = [], []
    for i, g in enumerate(ground_truth):
        h, w = g["size"]
        images.append({"id": i, "height": int(h), "width": int(w)})
        for lab, box in zip(g["labels"].tolist(), xyxy_to_xywh(g["boxes"].float()).tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": category_ids[lab], "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})
    dets = []
    for i, d in enumerate(detections):
        for s, lab, box in zip(d["scores"].tolist(), d["labels"].tolist(), xyxy_to_xywh(d["boxes"].float()).tolist()):
            dets.append({"image_id": i, "category_id": category_ids[lab], "bbox": box, "score": s})
    if not anns or not dets:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "AR": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in category_ids]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.maxDets = [max_dets]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][..., 0, -1]  # (IoU thresholds, recall points, classes) at area "all"
    recall = ev.eval["recall"][..., 0, -1]  # (IoU thresholds, classes)
    at = {t: np.isclose(ev.params.iouThrs, t) for t in (0.5, 0.75)}
    return {"AP": _mean(precision), "AP50": _mean(precision[at[0.5]]), "AP75": _mean(precision[at[0.75]]),
            "AR": _mean(recall)}


def _mean(x: np.ndarray) -> float:
    """The mean over entries that exist (COCOeval marks a class without objects -1), else 0."""
    x = x[x > -1]
    return float(x.mean()) if x.size else 0.0
