"""Multi-scale deformable attention (Zhu et al. 2021, "Deformable DETR", §4.1, eq. 2-3), in pure
PyTorch: the computation of the paper's CPU reference path, bilinear sampling by ``F.grid_sample``.

A query does not look at every key: each head reads ``n_points`` values around the query's
reference point on each of ``n_levels`` feature maps, at offsets predicted from the query, and
mixes them with weights also predicted from the query (softmax over the levels x points of the
head). Cost O(Nq · H · L · P), independent of the number of values: local cross-attention.

Shapes: query (B, Nq, C); values flattened over the levels (B, S, C), S = Σ_l H_l W_l, each level
row-major; reference points and sampling locations (x, y) in [0, 1] of the level's map
(top-left (0, 0), bottom-right (1, 1); pixel j's centre at (j + 0.5) / W_l). Heads H, levels L,
points P, head dimension D = C / H.

Masks follow :mod:`attnlab.nn.masks`: ``mask`` (B, S) bool, True = a real value that may be read,
False = padding (the opposite of the reference's ``input_padding_mask``: pass ``~padding``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.errors import ConfigError, ShapeError

SpatialShapes = Sequence[tuple[int, int]] | Tensor  # (H_l, W_l) of each level, as ints or an (L, 2) tensor


def deformable_attention(value: Tensor, spatial_shapes: SpatialShapes, locations: Tensor, weights: Tensor) -> Tensor:
    """Σ_l Σ_k A_hqlk · V_h,l(p_hqlk): each head's values read by bilinear interpolation at the
    sampling locations and summed with the attention weights (eq. 3 before W_m).

    value (B, S, H, D), locations (B, Nq, H, L, P, 2) as (x, y) in [0, 1], weights
    (B, Nq, H, L, P) -> (B, Nq, H·D), heads concatenated. A location outside the map reads
    zeros (zero padding, ``align_corners=False``: the map's border is the outer edge of its
    border pixels).
    """
    b, _, h, d = value.shape
    shapes = level_shapes(spatial_shapes)
    nq, n_levels, n_points = locations.shape[1], locations.shape[3], locations.shape[4]
    per_level = value.split([hl * wl for hl, wl in shapes], dim=1)  # L x (B, H_l W_l, H, D)
    grids = 2 * locations - 1  # (B, Nq, H, L, P, 2) in grid_sample's [-1, 1]
    sampled = []
    for lvl, (hl, wl) in enumerate(shapes):
        v = per_level[lvl].permute(0, 2, 3, 1).reshape(b * h, d, hl, wl)  # (B·H, D, H_l, W_l)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(b * h, nq, n_points, 2)  # (B·H, Nq, P, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))  # (B·H, D, Nq, P)
    s = torch.stack(sampled, dim=3)  # (B·H, D, Nq, L, P)
    a = weights.transpose(1, 2).reshape(b * h, 1, nq, n_levels, n_points)  # (B·H, 1, Nq, L, P)
    out = (s * a).sum(dim=(3, 4))  # (B·H, D, Nq)
    return out.view(b, h * d, nq).transpose(1, 2)  # (B, Nq, H·D)


def dense_attention_map(locations: Tensor, weights: Tensor, spatial_shapes: SpatialShapes,
                        mask: Tensor | None = None) -> Tensor:
    """The deformable attention written as an ordinary attention matrix over the S values:
    each point's weight A_hqlk spread on the (up to) four pixels around its location with its
    bilinear coefficients, pixels outside the map dropped, padded values (``mask`` False) zeroed.

    locations (B, Nq, H, L, P, 2), weights (B, Nq, H, L, P) -> (B, H, Nq, S), so that head h's
    output is map[:, h] @ V_h exactly: the (B, H, Tq, Tk) weights every attention map of the
    library has, for :mod:`attnlab.viz`. Rows sum to 1 minus what fell outside or on padding.
    """
    b, nq, h = weights.shape[:3]
    shapes = level_shapes(spatial_shapes)
    out = weights.new_zeros(b, h, nq, sum(hl * wl for hl, wl in shapes))  # (B, H, Nq, S)
    start = 0
    for lvl, (hl, wl) in enumerate(shapes):
        loc = locations[:, :, :, lvl].transpose(1, 2)  # (B, H, Nq, P, 2)
        a = weights[:, :, :, lvl].transpose(1, 2)  # (B, H, Nq, P)
        x = loc[..., 0] * wl - 0.5  # (B, H, Nq, P) in pixel coordinates: pixel j's centre at j
        y = loc[..., 1] * hl - 0.5
        x0, y0 = x.floor(), y.floor()
        for cx, cy in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
            coef = (1 - (x - cx).abs()) * (1 - (y - cy).abs())  # (B, H, Nq, P) bilinear coefficient
            inside = (cx >= 0) & (cx <= wl - 1) & (cy >= 0) & (cy <= hl - 1)
            index = start + (cy.clamp(0, hl - 1) * wl + cx.clamp(0, wl - 1)).long()  # (B, H, Nq, P)
            out.scatter_add_(-1, index, a * coef * inside)
        start += hl * wl
    return out if mask is None else out * mask[:, None, None, :]


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention (Zhu et al. 2021), single scale (eq. 2) and multi-scale (eq. 3):

        DeformAttn(z_q, p_q, x)         = Σ_m W_m [Σ_k A_mqk · W'_m x(p_q + Δp_mqk)]
        MSDeformAttn(z_q, p̂_q, {x^l}) = Σ_m W_m [Σ_l Σ_k A_mlqk · W'_m x^l(φ_l(p̂_q) + Δp_mlqk)]

    heads m, levels l, points k; ``n_levels=1`` is eq. 2 (DETR's one feature map).

    - ``value_proj`` is W'_m (all heads in one C x C), ``output_proj`` is W_m (concatenated heads);
    - ``sampling_offsets``: Δp_mlqk = Linear(z_q), in pixels of level l, added to the reference
      point after division by the level's (W_l, H_l) — φ_l rescales p̂_q ∈ [0, 1]² to the level;
    - ``attention_weights``: A_mlqk = softmax over the L·P entries of head m of Linear(z_q).

    Initialisation as the paper's code: offset weights zero and biases on a ring — head m looks
    in direction 2πm/H (scaled so the larger of |cos|, |sin| is 1), point k at k + 1 pixels,
    the same on every level; attention-weight projection zero (uniform weights at start);
    W'_m and W_m Xavier-uniform with zero biases.

    ``forward(query (B, Nq, C), reference_points (B, Nq, L, 2), value (B, S, C), spatial_shapes,
    mask=None)`` -> (B, Nq, C). ``spatial_shapes``: the (H_l, W_l) of each level, as Python ints
    (a graph traced by torch.fx or torch.export keeps them as constants or sizes) or an (L, 2)
    tensor (read with ``.tolist()``: eager only). ``need_weights=True`` also returns
    :func:`dense_attention_map` (B, H, Nq, S); :meth:`sampling` gives the locations and weights.
    """

    def __init__(self, d_model: int, n_levels: int = 1, n_heads: int = 8, n_points: int = 4) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ConfigError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        for name, n in (("n_levels", n_levels), ("n_heads", n_heads), ("n_points", n_points)):
            if n < 1:
                raise ConfigError(f"{name} must be >= 1, got {n}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(self.n_heads, dtype=torch.float32) * (2 * math.pi / self.n_heads)  # (H,)
        ring = torch.stack([theta.cos(), theta.sin()], dim=-1)  # (H, 2) as (x, y)
        ring = ring / ring.abs().amax(dim=-1, keepdim=True)  # on the square of half-side 1
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float32)  # (P,) point k at k + 1 pixels
        bias = ring[:, None, None, :] * steps[None, None, :, None]  # (H, 1, P, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.expand(-1, self.n_levels, -1, -1).reshape(-1))  # (H·L·P·2,)
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def sampling(self, query: Tensor, reference_points: Tensor, spatial_shapes: SpatialShapes) -> tuple[Tensor, Tensor]:
        """Where and how much each query looks: locations p̂_q + Δp / (W_l, H_l) (B, Nq, H, L, P, 2)
        as (x, y) in the level's [0, 1] (outside it when the offsets leave the map), and weights
        A (B, Nq, H, L, P), summing to 1 over L·P per head."""
        b, nq, _ = query.shape
        shapes = level_shapes(spatial_shapes)
        h, n_levels, n_points = self.n_heads, self.n_levels, self.n_points
        offsets = self.sampling_offsets(query).view(b, nq, h, n_levels, n_points, 2)  # (B, Nq, H, L, P, 2) in pixels
        scale = torch.stack([query.new_tensor([1.0 / wl, 1.0 / hl]) for hl, wl in shapes])  # (L, 2) as (1/W_l, 1/H_l)
        locations = reference_points[:, :, None, :, None, :] + offsets * scale[:, None, :]  # (B, Nq, H, L, P, 2)
        weights = self.attention_weights(query).view(b, nq, h, n_levels * n_points).softmax(dim=-1)  # (B, Nq, H, L·P)
        return locations, weights.view(b, nq, h, n_levels, n_points)  # (B, Nq, H, L, P)

    def forward(self, query: Tensor, reference_points: Tensor, value: Tensor, spatial_shapes: SpatialShapes, *,
                mask: Tensor | None = None, need_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        _check_inputs(query, reference_points, value, spatial_shapes, mask, self.d_model, self.n_levels)
        b, s, _ = value.shape
        v = self.value_proj(value)  # (B, S, C)
        if mask is not None:
            v = v.masked_fill(~mask[..., None], 0.0)  # padding reads as zeros
        v = v.view(b, s, self.n_heads, self.d_model // self.n_heads)  # (B, S, H, D)
        locations, weights = self.sampling(query, reference_points, spatial_shapes)  # (B, Nq, H, L, P, 2), (B, Nq, H, L, P)
        out = self.output_proj(deformable_attention(v, spatial_shapes, locations, weights))  # (B, Nq, C)
        if need_weights:
            return out, dense_attention_map(locations, weights, spatial_shapes, mask)  # (B, H, Nq, S)
        return out


def level_shapes(spatial_shapes: SpatialShapes) -> list[tuple[int, int]]:
    """[(H_l, W_l), ...] from ints or an (L, 2) tensor."""
    if isinstance(spatial_shapes, Tensor):
        return [(int(hl), int(wl)) for hl, wl in spatial_shapes.tolist()]
    return [(hl, wl) for hl, wl in spatial_shapes]


# One node of a torch.fx.symbolic_trace graph (run on real tensors): the check needs concrete sizes.
@torch.fx.wrap
def _check_inputs(query: Tensor, reference_points: Tensor, value: Tensor, spatial_shapes: SpatialShapes,
                  mask: Tensor | None, d_model: int, n_levels: int) -> None:
    """ShapeError unless the inputs fit together and the module."""
    if query.dim() != 3 or query.shape[-1] != d_model:
        raise ShapeError(f"query must be (B, Nq, {d_model}), got {tuple(query.shape)}")
    b, nq, _ = query.shape
    if value.dim() != 3 or value.shape[0] != b or value.shape[-1] != d_model:
        raise ShapeError(f"value must be (B={b}, S, {d_model}), got {tuple(value.shape)}")
    if tuple(reference_points.shape) != (b, nq, n_levels, 2):
        raise ShapeError(f"reference_points must be (B={b}, Nq={nq}, L={n_levels}, 2), got {tuple(reference_points.shape)}")
    shapes = level_shapes(spatial_shapes)
    if len(shapes) != n_levels or sum(hl * wl for hl, wl in shapes) != value.shape[1]:
        raise ShapeError(f"spatial_shapes {shapes} must give L={n_levels} levels whose H_l·W_l add up to the "
                         f"{value.shape[1]} values")
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != tuple(value.shape[:2])):
        raise ShapeError(f"mask must be a bool (B, S) = {tuple(value.shape[:2])} tensor, True = a real value; "
                         f"got {mask.dtype} {tuple(mask.shape)}")
