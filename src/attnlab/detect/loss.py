"""DETR's set loss (§3.1, eq. 2 and §A.2), after Hungarian matching:

    L = Σ_layers [ CE(logits, classes; no-object weight 0.1)
                   + (5 · Σ_matched ||b - b̂||_1 + 2 · Σ_matched (1 - GIoU(b, b̂))) / M ]

Unmatched predictions are trained towards "no object" (class K) in the cross-entropy, whose
weight for that class is 0.1 (the class imbalance of 100 queries to a few objects); the CE is
the weighted mean over all predictions (``F.cross_entropy`` with class weights). The box terms
are summed over matched pairs and divided by M, the number of target boxes in the batch. With
auxiliary outputs, every decoder layer is matched and scored the same way and the losses add.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.detect.boxes import cxcywh_to_xyxy, generalized_box_iou
from attnlab.detect.matcher import COSTS, MatchCosts, hungarian_match


@dataclass(frozen=True)
class LossWeights:
    ce: float = 1.0
    l1: float = 5.0
    giou: float = 2.0
    no_object: float = 0.1  # weight of the "no object" class in the cross-entropy


WEIGHTS = LossWeights()


def _one(logits: Tensor, boxes: Tensor, targets: list[dict], num_boxes: float, w: LossWeights,
         costs: MatchCosts) -> dict[str, Tensor]:
    """Match one set of predictions (B, N, K+1), (B, N, 4) and return its weighted terms."""
    k = logits.shape[-1] - 1
    idx = hungarian_match(logits, boxes, targets, costs)
    batch = torch.cat([torch.full_like(p, i) for i, (p, _) in enumerate(idx)]).to(logits.device)
    pred = torch.cat([p for p, _ in idx]).to(logits.device)
    classes = torch.full(logits.shape[:2], k, dtype=torch.long, device=logits.device)
    classes[batch, pred] = torch.cat([t["labels"][j.to(t["labels"].device)] for t, (_, j) in zip(targets, idx)]).to(logits.device)
    weight = torch.ones(k + 1, device=logits.device)
    weight[k] = w.no_object
    ce = F.cross_entropy(logits.float().transpose(1, 2), classes, weight)
    src = boxes[batch, pred].float()
    tgt = torch.cat([t["boxes"][j.to(t["boxes"].device)] for t, (_, j) in zip(targets, idx)]).to(src)
    return loss_terms(ce, src, tgt, num_boxes, w)


def loss_terms(ce: Tensor, boxes: Tensor, target_boxes: Tensor, num_boxes: float, w: LossWeights) -> dict[str, Tensor]:
    """The box terms of predicted ``boxes`` (V, 4) against the ``target_boxes`` (V, 4) they
    answer for (cx, cy, w, h), each summed over the V pairs and divided by ``num_boxes``, and the
    weighted total with the class term ``ce``: ``{"ce", "l1", "giou", "total"}``."""
    l1 = F.l1_loss(boxes, target_boxes, reduction="sum") / num_boxes
    giou = (1 - torch.diag(generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(target_boxes)))).sum() / num_boxes
    return {"ce": ce, "l1": l1, "giou": giou, "total": w.ce * ce + w.l1 * l1 + w.giou * giou}


def set_loss(out: dict, targets: list[dict], weights: LossWeights = WEIGHTS, costs: MatchCosts = COSTS) -> dict[str, Tensor]:
    """The total loss of a DETR output (``logits``, ``boxes`` and optionally ``aux``) against
    ``targets`` (per image: ``labels`` (M,) long, ``boxes`` (M, 4) cx, cy, w, h in [0, 1]).

    Returns ``loss`` (all layers, to back-propagate) and the last layer's ``ce``, ``l1``, ``giou``
    (unweighted, for logging)."""
    num_boxes = max(float(sum(len(t["labels"]) for t in targets)), 1.0)
    last = _one(out["logits"], out["boxes"], targets, num_boxes, weights, costs)
    total = last["total"]
    for a in out.get("aux", []):
        total = total + _one(a["logits"], a["boxes"], targets, num_boxes, weights, costs)["total"]
    return {"loss": total, "ce": last["ce"].detach(), "l1": last["l1"].detach(), "giou": last["giou"].detach()}
