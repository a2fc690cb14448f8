"""The Hungarian matcher (DETR §3.1, eq. 1): a one-to-one assignment of predictions to the
objects of an image that minimises the total matching cost

    C(i, j) = -w_class · p_i(c_j) + w_L1 · ||b_i - b_j||_1 + w_giou · (-GIoU(b_i, b_j))

(weights 1, 5, 2 in the paper), solved exactly per image by
``scipy.optimize.linear_sum_assignment``. Boxes are (cx, cy, w, h) in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from attnlab.detect.boxes import cxcywh_to_xyxy, generalized_box_iou


@dataclass(frozen=True)
class MatchCosts:
    cls: float = 1.0
    l1: float = 5.0
    giou: float = 2.0


COSTS = MatchCosts()


def cost_matrix(logits: Tensor, boxes: Tensor, labels: Tensor, target_boxes: Tensor, costs: MatchCosts = COSTS) -> Tensor:
    """One image: logits (N, K+1), boxes (N, 4), labels (M,), target_boxes (M, 4) -> C (N, M)."""
    prob = logits.float().softmax(-1)[:, labels]  # (N, M): p_i(c_j)
    l1 = torch.cdist(boxes.float(), target_boxes.float(), p=1)
    giou = generalized_box_iou(cxcywh_to_xyxy(boxes.float()), cxcywh_to_xyxy(target_boxes.float()))
    c = costs.l1 * l1 - costs.cls * prob - costs.giou * giou
    return torch.nan_to_num(c, nan=1e8, posinf=1e8, neginf=-1e8)  # a degenerate box is matched last, never crashes


def assign(cost: Tensor) -> tuple[Tensor, Tensor]:
    """The optimal assignment of a cost matrix (N, M), N >= M: (prediction indices, target indices),
    sorted by prediction."""
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


@torch.no_grad()
def hungarian_match(logits: Tensor, boxes: Tensor, targets: list[dict],
                    costs: MatchCosts = COSTS) -> list[tuple[Tensor, Tensor]]:
    """logits (B, N, K+1), boxes (B, N, 4), ``targets`` one dict per image with ``labels`` (M,)
    and ``boxes`` (M, 4) -> per image (prediction indices, target indices), each of length M."""
    out = []
    for b, t in enumerate(targets):
        if len(t["labels"]) == 0:
            out.append((torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)))
            continue
        out.append(assign(cost_matrix(logits[b], boxes[b], t["labels"], t["boxes"], costs)))
    return out
