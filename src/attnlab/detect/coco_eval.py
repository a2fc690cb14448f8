"""COCO box metrics through the COCO evaluator itself (pycocotools' COCOeval): AP (mean over
IoU 0.50:0.95), AP50 and AP75, at most 100 detections per image.

Ground truth and detections are built in memory as COCO JSON would hold them: boxes
(x, y, w, h) in pixels of each image, a category id per class index.
"""

from __future__ import annotations

import contextlib
import io

import torch
from torch import Tensor

from attnlab.detect.boxes import cxcywh_to_xyxy, xyxy_to_xywh


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


def coco_metrics(ground_truth: list[dict], detections: list[dict], category_ids: list[int]) -> dict[str, float]:
    """AP, AP50, AP75 of ``detections`` against ``ground_truth``, both lists in image order.

    ground_truth: per image ``size`` (height, width), ``labels`` (M,), ``boxes`` (M, 4) x0, y0, x1, y1
    in pixels; detections: per image ``scores``, ``labels``, ``boxes`` as :func:`postprocess` gives.
    ``category_ids[label]`` is the COCO category id of a class index."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

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
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in category_ids]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ap, ap50, ap75 = (max(float(v), 0.0) for v in ev.stats[:3])  # -1 = no such objects
    return {"AP": ap, "AP50": ap50, "AP75": ap75}
