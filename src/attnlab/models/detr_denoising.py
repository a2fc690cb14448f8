"""The model side of DETR's query denoising (DN-DETR, Li et al. 2022, "DN-DETR: Accelerate DETR
Training by Introducing Query DeNoising"): what the decoder takes, the self-attention mask that
keeps the denoising part from leaking into the matching part, and the split of the decoder's
outputs. The training side (drawing the noised queries, the reconstruction loss) is
:mod:`attnlab.detect.denoising`.

Training only: the decoder runs D = G·M denoising queries (G groups, each a noised copy of the
image's M ground-truth objects, padded to the batch's largest M) in front of the N matching
queries, T = D + N in all. At inference there are none and nothing here runs.

How a denoising query enters OUR decoder. DN-DETR is built on DAB-DETR, whose queries are
anchor boxes: a noised box replaces an anchor and a learned label embedding replaces the
content. Our DETR's queries are DETR's: a decoder input y (zeros) and a learned query position
q added to the queries and keys of every attention. So, with DN-DETR's label embedding and
DAB-DETR's positional path:

    content  y_dn = [ E_label(ỹ) , 1 ]                          E_label: (K+1, C-1), ỹ the noised label
    position q_dn = MLP( PE(b̃) )                               b̃ the noised box, PE: sine, C/2 per coordinate

and the matching queries take DN-DETR's content ``[E_label(K), 0]`` (the "unknown" entry K and
the indicator 0) instead of zeros, with their learned positions unchanged. The last channel is
DN-DETR's indicator: 1 for a denoising query, 0 for a matching one. Padding queries have zero
content and the box (0.5, 0.5, 0.5, 0.5), which is what DN-DETR's zero padding of its
inverse-sigmoid anchors decodes to. As q never reaches the values (DETR Fig. 10), the noised
box acts as matching queries' positions do: through where the attentions look.

Shapes: labels (B, D), boxes (B, D, 4) as (cx, cy, w, h) in [0, 1], content and positions (B, D, C).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError


@dataclass(frozen=True)
class DenoisingBatch:
    """The denoising queries of one batch, group-major: entry g·M + j is group g's copy of object j.

    - ``boxes`` (B, G·M, 4) noised boxes (cx, cy, w, h) in [0, 1]; padding 0.5;
    - ``labels`` (B, G·M) long, noised labels; padding K;
    - ``valid`` (B, G·M) bool, False at padding (an image with fewer than M objects);
    - ``target_index`` (B, G·M) long: j, the index in the image's targets the entry was made
      from; -1 at padding;
    - ``num_groups`` G.
    """

    boxes: Tensor
    labels: Tensor
    valid: Tensor
    target_index: Tensor
    num_groups: int

    @property
    def num_dn(self) -> int:
        """D = G·M, the number of denoising queries per image."""
        return self.valid.shape[1]


def box_sine_embedding(boxes: Tensor, num_feats: int, temperature: float = 10000.0) -> Tensor:
    """DAB-DETR's sine embedding of a box: (..., 4) as (cx, cy, w, h) in [0, 1] -> (..., 4·num_feats).

    Each coordinate, scaled to [0, 2π], gets num_feats channels of interleaved sin/cos at
    frequencies temperature^(2⌊i/2⌋/num_feats), in the order cy, cx, w, h (rows before columns,
    as :func:`attnlab.models.detr.sine_position_2d`)."""
    dim_t = torch.arange(num_feats, device=boxes.device, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    cx, cy, w, h = (c[..., None] * (2 * math.pi) / dim_t for c in boxes.float().unbind(-1))  # each (..., num_feats)
    parts = [torch.stack((p[..., 0::2].sin(), p[..., 1::2].cos()), dim=-1).flatten(-2) for p in (cy, cx, w, h)]
    return torch.cat(parts, dim=-1)


class DenoisingQueries(nn.Module):
    """The decoder inputs of denoising queries (see the module docstring): a label embedding
    with K+1 entries of C-1 channels plus DN-DETR's indicator channel, and a 2-layer MLP
    (2C -> C -> C, ReLU) from the boxes' sine embedding to the query position, as DAB-DETR's
    ``ref_point_head``."""

    def __init__(self, num_classes: int, d_model: int, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_classes, self.d_model, self.temperature = num_classes, d_model, temperature
        self.label_embed = nn.Embedding(num_classes + 1, d_model - 1)  # entry K: "unknown", the matching queries'
        self.pos_head = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model))

    def forward(self, labels: Tensor, boxes: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """labels (B, D), boxes (B, D, 4), valid (B, D) -> content (B, D, C), positions (B, D, C)."""
        device = self.label_embed.weight.device
        labels, boxes, valid = labels.to(device), boxes.to(device), valid.to(device)
        emb = self.label_embed(labels)  # (B, D, C-1)
        content = torch.cat([emb, torch.ones_like(emb[..., :1])], dim=-1) * valid[..., None]
        pos = self.pos_head(box_sine_embedding(boxes, self.d_model // 2, self.temperature).to(emb.dtype))
        return content, pos

    def matching_content(self, num_queries: int) -> Tensor:
        """DN-DETR's content of the N matching queries, [E_label(K), 0]: (N, C)."""
        e = self.label_embed.weight[self.num_classes]
        return torch.cat([e, e.new_zeros(1)])[None].expand(num_queries, -1)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, d_model={self.d_model}"


def denoising_attention_mask(num_dn: int, num_groups: int, num_queries: int, device=None) -> Tensor:
    """The decoder self-attention mask (T, T), T = D + N, True = may attend (rows: queries,
    columns: keys), queries ordered [group 0 | ... | group G-1 | N matching]:

    - a matching query sees every matching query and no denoising query (the matching part
      must not learn from the ground truth that only training has);
    - a query of denoising group g sees its own group and every matching query, never another
      group (each group is its own reconstruction of the objects).

    The paper's attention mask A, W = G·M + N: a_ij = 1 (query i cannot see key j) iff j < G·M and
    ⌊i/M⌋ ≠ ⌊j/M⌋ or i >= G·M, as ``prepare_for_dn`` builds it; its True (= blocked) entries are
    our False. As there, padding entries of a group are not hidden from
    their group: the loss ignores them (:func:`attnlab.detect.denoising.denoising_loss`)."""
    if num_groups < 1 or num_dn % num_groups:
        raise ConfigError(f"{num_dn} denoising queries do not split into {num_groups} groups of equal size")
    m = num_dn // num_groups
    group = torch.arange(num_dn + num_queries, device=device) // max(m, 1)  # matching queries: group >= G
    is_dn = torch.arange(num_dn + num_queries, device=device) < num_dn
    same_group = group[:, None] == group[None, :]
    return ~is_dn[None, :] | (is_dn[:, None] & same_group)


def split_outputs(outputs: dict, num_dn: int) -> tuple[dict, dict]:
    """A decoder's outputs over [D denoising | N matching] queries -> (the denoising part, the
    matching part). ``logits`` (B, D+N, K+1), ``boxes`` (B, D+N, 4) and every ``aux`` entry are
    split along the queries; other keys (``feature_size``) stay with the matching part."""
    def part(o: dict, s: slice) -> dict:
        return {"logits": o["logits"][:, s], "boxes": o["boxes"][:, s]}

    dn, match = part(outputs, slice(None, num_dn)), {**outputs, **part(outputs, slice(num_dn, None))}
    if "aux" in outputs:
        dn["aux"] = [part(a, slice(None, num_dn)) for a in outputs["aux"]]
        match["aux"] = [part(a, slice(num_dn, None)) for a in outputs["aux"]]
    return dn, match
