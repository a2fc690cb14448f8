"""The training side of DETR's query denoising (DN-DETR, Li et al. 2022): noised copies of the
ground truth fed to the decoder beside the matching queries, and the loss that trains the
decoder to reconstruct the objects they were made from. No matching: each denoising query's
target is known from its birth. The model side (how the queries enter the decoder, the
attention mask, the split of the outputs) is :mod:`attnlab.models.detr_denoising`.

Noise (§3.3), per copy of a box (cx, cy, w, h) with λ = ``box_noise_scale``, u ~ U(-1, 1) per
coordinate:

    cx' = cx + u·λ·w/2,  cy' = cy + u·λ·h/2,  w' = w·(1 + u·λ),  h' = h·(1 + u·λ),  clamped to [0, 1]

so the centre stays inside the box for λ < 1 and the size is scaled within (1 ± λ); a label
is replaced, with probability ``label_noise_ratio``, by a class drawn uniformly from the K
classes (possibly itself, as in ``prepare_for_dn``). DN-DETR's defaults: 5 groups, λ = 0.4,
label noise 0.2.

The loss, per decoder layer (the last and every ``aux``), over the V valid denoising queries
(G copies of each of the batch's boxes):

    L_dn = (1 · Σ CE(logits, y) + 5 · Σ ||b - b̂||_1 + 2 · Σ (1 - GIoU(b, b̂))) / V

with the set loss's weights (:data:`attnlab.detect.loss.WEIGHTS`) and y, b̂ the original label
and box. The set loss's CE is a class-weighted mean in which every target here weighs 1 (none is
"no object"), so Σ CE / V is that same mean. DN-DETR scores classes with a focal loss because
DAB-DETR does; ours follows our set loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.detect.loss import WEIGHTS, LossWeights, loss_terms
from attnlab.models.detr_denoising import DenoisingBatch


def make_denoising_queries(targets: list[dict], num_groups: int, box_noise_scale: float, label_noise_ratio: float,
                           num_classes: int, generator: torch.Generator | None = None) -> DenoisingBatch:
    """``targets`` (per image: ``labels`` (M_i,) long, ``boxes`` (M_i, 4) cx, cy, w, h in [0, 1])
    -> the batch's G = ``num_groups`` noised copies of every object, padded to M = max M_i
    (see :class:`~attnlab.models.detr_denoising.DenoisingBatch` for the layout). Scales 0 give
    the ground truth itself. Random draws from ``generator`` (torch's global one when None)."""
    b, m = len(targets), max((len(t["labels"]) for t in targets), default=0)
    device = targets[0]["boxes"].device if targets else None
    dtype = targets[0]["boxes"].dtype if targets else torch.float32
    boxes = torch.full((b, m, 4), 0.5, dtype=dtype, device=device)
    labels = torch.full((b, m), num_classes, dtype=torch.long, device=device)
    valid = torch.zeros(b, m, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        n = len(t["labels"])
        boxes[i, :n], labels[i, :n], valid[i, :n] = t["boxes"].to(boxes), t["labels"].to(labels), True
    boxes, labels, valid = boxes.repeat(1, num_groups, 1), labels.repeat(1, num_groups), valid.repeat(1, num_groups)
    target_index = torch.arange(m, device=device).repeat(num_groups).expand(b, -1).masked_fill(~valid, -1)  # (B, G·M)

    at = {"generator": generator, "device": None if generator is None else generator.device}
    wh = boxes[..., 2:]
    reach = torch.cat([wh / 2, wh], dim=-1) * box_noise_scale  # (B, G·M, 4): the most each coordinate moves
    u = torch.rand(boxes.shape, **at).to(boxes) * 2 - 1
    noised = torch.where(valid[..., None], (boxes + u * reach).clamp(0.0, 1.0), boxes)

    flip = (torch.rand(labels.shape, **at).to(device) < label_noise_ratio) & valid
    drawn = torch.randint(0, num_classes, labels.shape, **at).to(device)
    return DenoisingBatch(noised, torch.where(flip, drawn, labels), valid, target_index, num_groups)


def _terms(logits: Tensor, boxes: Tensor, labels: Tensor, target_boxes: Tensor, num: float,
           w: LossWeights) -> dict[str, Tensor]:
    """One layer: the valid entries' logits (V, K+1), boxes (V, 4) against their originals."""
    ce = F.cross_entropy(logits.float(), labels, reduction="sum") / num
    return loss_terms(ce, boxes.float(), target_boxes, num, w)


def denoising_loss(outputs_dn: dict, dn: DenoisingBatch, targets: list[dict],
                   weights: LossWeights = WEIGHTS) -> dict[str, Tensor]:
    """The reconstruction loss of the denoising part of a decoder's outputs (``logits``
    (B, G·M, K+1), ``boxes`` (B, G·M, 4), optionally ``aux``: see
    :func:`attnlab.models.detr_denoising.split_outputs`) against the ``targets`` ``dn`` was made
    from. Padding entries take no part. Returns ``loss`` (all layers, to back-propagate) and the
    last layer's ``ce``, ``l1``, ``giou`` (unweighted, detached), as
    :func:`attnlab.detect.loss.set_loss`."""
    device = outputs_dn["logits"].device
    valid = dn.valid.to(device)
    labels = torch.cat([t["labels"][j[v]] for t, j, v in zip(targets, dn.target_index, dn.valid)]).to(device)
    tgt = torch.cat([t["boxes"][j[v]] for t, j, v in zip(targets, dn.target_index, dn.valid)]).to(device).float()
    num = max(float(len(labels)), 1.0)
    layers = [outputs_dn, *outputs_dn.get("aux", [])]
    parts = [_terms(o["logits"][valid], o["boxes"][valid], labels, tgt, num, weights) for o in layers]
    last = parts[0]
    return {"loss": sum(p["total"] for p in parts), "ce": last["ce"].detach(), "l1": last["l1"].detach(),
            "giou": last["giou"].detach()}
