"""Multi-scale deformable attention (attnlab.nn.deformable) against a loop over heads, levels and
points with bilinear interpolation written out by hand, and worked cases: pixel reads, padding,
the paper's initialisation, gradients, torch.fx and torch.export."""

from __future__ import annotations

import math

import pytest
import torch
from torch.export import Dim

from attnlab.errors import ConfigError, ShapeError
from attnlab.nn.deformable import MultiScaleDeformableAttention, dense_attention_map

SHAPES = [(3, 4), (2, 3)]  # two levels, S = 12 + 6
S = 18


def randomised(d_model=8, n_levels=2, n_heads=2, n_points=3, seed=0, dtype=torch.float32) -> MultiScaleDeformableAttention:
    """A module with random weights everywhere: offsets of a few pixels (some leave the map),
    attention weights far from uniform."""
    torch.manual_seed(seed)
    m = MultiScaleDeformableAttention(d_model, n_levels, n_heads, n_points).to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 1.0)
    return m


def bilinear(img: list[list[float]], x: float, y: float) -> float:
    """img[row][col] read at (x, y) in [0, 1] of the map, pixel centres at (j + 0.5) / W, zeros outside."""
    hl, wl = len(img), len(img[0])
    px, py = x * wl - 0.5, y * hl - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    total = 0.0
    for cx, cy in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        if 0 <= cx < wl and 0 <= cy < hl:
            total += (1 - abs(px - cx)) * (1 - abs(py - cy)) * img[cy][cx]
    return total


def loop_reference(m, query, ref, value, shapes, mask=None) -> torch.Tensor:
    """Eq. 3 one index at a time, in float64 Python numbers."""
    f = lambda lin, x: (x.double() @ lin.weight.double().T + lin.bias.double()).tolist()  # noqa: E731
    h, n_levels, n_points, d = m.n_heads, m.n_levels, m.n_points, m.d_model // m.n_heads
    b, nq, _ = query.shape
    out = torch.zeros(b, nq, m.d_model, dtype=torch.float64)
    for bi in range(b):
        v = f(m.value_proj, value[bi])  # S x C
        if mask is not None:
            v = [row if mask[bi, s] else [0.0] * m.d_model for s, row in enumerate(v)]
        offs, logits = f(m.sampling_offsets, query[bi]), f(m.attention_weights, query[bi])
        for qi in range(nq):
            heads = []
            for hi in range(h):
                lg = [logits[qi][(hi * n_levels + li) * n_points + pi] for li in range(n_levels) for pi in range(n_points)]
                z = sum(math.exp(x) for x in lg)
                acc = [0.0] * d
                start = 0
                for li, (hl, wl) in enumerate(shapes):
                    for pi in range(n_points):
                        k = ((hi * n_levels + li) * n_points + pi) * 2
                        x = ref[bi, qi, li, 0].item() + offs[qi][k] / wl
                        y = ref[bi, qi, li, 1].item() + offs[qi][k + 1] / hl
                        a = math.exp(lg[li * n_points + pi]) / z
                        for c in range(d):
                            img = [[v[start + r * wl + col][hi * d + c] for col in range(wl)] for r in range(hl)]
                            acc[c] += a * bilinear(img, x, y)
                    start += hl * wl
                heads += acc
            out[bi, qi] = torch.tensor(heads, dtype=torch.float64) @ m.output_proj.weight.double().T + m.output_proj.bias.double()
    return out


def inputs(b=2, nq=3, c=8, n_levels=2, s=S, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, nq, c, generator=g, dtype=dtype), torch.rand(b, nq, n_levels, 2, generator=g, dtype=dtype),
            torch.randn(b, s, c, generator=g, dtype=dtype))


def test_matches_the_loop_over_heads_levels_points():
    m = randomised()
    query, ref, value = inputs()
    mask = torch.rand(2, S, generator=torch.Generator().manual_seed(2)) > 0.3
    locations, _ = m.sampling(query, ref, SHAPES)
    assert ((locations < 0) | (locations > 1)).any() and ((locations > 0) & (locations < 1)).any()  # both cases met
    for msk in (None, mask):
        got = m(query, ref, value, SHAPES, mask=msk)
        torch.testing.assert_close(got.double(), loop_reference(m, query, ref, value, SHAPES, msk), atol=1e-5, rtol=0)


def test_spatial_shapes_as_a_tensor_give_the_same_output():
    m = randomised()
    query, ref, value = inputs()
    torch.testing.assert_close(m(query, ref, value, torch.tensor(SHAPES)), m(query, ref, value, SHAPES), atol=0, rtol=0)


def test_one_point_no_offset_reads_the_pixel_under_the_reference_point():
    """Single scale, one point, zero offsets, identity projections: the query at pixel centre
    ((j + 0.5) / W, (i + 0.5) / H) returns exactly value[i * W + j], every head its own channels."""
    hl, wl, c = 3, 5, 4
    m = MultiScaleDeformableAttention(c, n_levels=1, n_heads=2, n_points=1)
    with torch.no_grad():
        m.sampling_offsets.bias.zero_()
        for proj in (m.value_proj, m.output_proj):
            proj.weight.copy_(torch.eye(c))
    value = torch.randn(1, hl * wl, c)
    pixels = [(0, 0), (2, 4), (1, 3), (0, 4), (2, 0)]  # (row, col), corners included
    ref = torch.tensor([[(j + 0.5) / wl, (i + 0.5) / hl] for i, j in pixels])[None, :, None, :]  # (1, Nq, 1, 2)
    out = m(torch.randn(1, len(pixels), c), ref, value, [(hl, wl)])
    torch.testing.assert_close(out[0], value[0, [i * wl + j for i, j in pixels]], atol=1e-6, rtol=0)


def test_padding_contributes_nothing():
    m = randomised()
    query, ref, value = inputs()
    mask = torch.ones(2, S, dtype=torch.bool)
    mask[0, 8:12] = mask[0, 16:] = mask[1, :3] = False  # padded cells on both levels
    garbage = value.clone()
    garbage[~mask] = 1e3 * torch.randn(int((~mask).sum()), 8)
    out = m(query, ref, value, SHAPES, mask=mask)
    torch.testing.assert_close(m(query, ref, garbage, SHAPES, mask=mask), out, atol=1e-5, rtol=0)
    assert (m(query, ref, value, SHAPES) - out).abs().max() > 1e-3  # the padded values were read without the mask
    _, weights = m(query, ref, value, SHAPES, mask=mask, need_weights=True)
    assert (weights[..., ~mask[0]][0] == 0).all() and (weights[1, ..., :3] == 0).all()


def test_dense_map_times_values_is_the_output():
    m = randomised()
    query, ref, value = inputs()
    mask = torch.rand(2, S, generator=torch.Generator().manual_seed(3)) > 0.2
    out, weights = m(query, ref, value, SHAPES, mask=mask, need_weights=True)  # weights (B, H, Nq, S)
    v = m.value_proj(value).view(2, S, m.n_heads, -1).transpose(1, 2)  # (B, H, S, D)
    heads = (weights @ v).transpose(1, 2).flatten(2)  # (B, Nq, C)
    torch.testing.assert_close(m.output_proj(heads), out, atol=1e-5, rtol=0)
    locations, a = m.sampling(query, ref, SHAPES)
    assert (dense_attention_map(locations, a, SHAPES).sum(-1) < 0.99).any()  # points off the map weigh nothing
    inner = 0.3 + 0.4 * torch.rand(2, 3, 2, 2)  # every level's four neighbours on the map
    with torch.no_grad():
        m.sampling_offsets.weight.zero_()
        m.sampling_offsets.bias.zero_()
    locations, a = m.sampling(query, inner, SHAPES)
    torch.testing.assert_close(dense_attention_map(locations, a, SHAPES).sum(-1), torch.ones(2, 2, 3), atol=1e-6, rtol=0)


def test_initialisation_is_the_papers_ring():
    m = MultiScaleDeformableAttention(8, n_levels=2, n_heads=4, n_points=2)
    ref = torch.full((1, 1, 2, 2), 0.5)
    locations, weights = m.sampling(torch.randn(1, 1, 8), ref, SHAPES)  # the zero offset weights ignore the query
    steps = (locations - 0.5)[0, 0] * torch.tensor([[[4.0, 3.0]], [[3.0, 2.0]]])  # back to pixels (H, L, P, 2)
    ring = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # heads at 0, 90, 180, 270 degrees
    expected = ring[:, None, None, :] * torch.tensor([1.0, 2.0])[None, None, :, None]  # point k at k + 1 pixels
    torch.testing.assert_close(steps, expected.expand(-1, 2, -1, -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / 4))
    diagonal = MultiScaleDeformableAttention(8, n_levels=1, n_heads=8, n_points=1).sampling_offsets.bias.view(8, 2)
    torch.testing.assert_close(diagonal[1], torch.tensor([1.0, 1.0]))  # 45 degrees on the square, not the circle
    assert (m.value_proj.bias == 0).all() and (m.output_proj.bias == 0).all()


def test_gradients_match_finite_differences():
    m = randomised(d_model=4, n_levels=2, n_heads=2, n_points=2, dtype=torch.float64)
    query, ref, value = inputs(b=1, nq=2, c=4, dtype=torch.float64)
    for t in (query, ref, value):
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, r, v: m(q, r, v, SHAPES), (query, ref, value))
    m(query, ref, value, SHAPES).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


class Fixed(torch.nn.Module):
    """The module with its levels fixed, as a model would hold it."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = randomised()

    def forward(self, query, ref, value):
        return self.attn(query, ref, value, SHAPES)


def test_fx_symbolic_trace_gives_the_same_output():
    model = Fixed()
    graph = torch.fx.symbolic_trace(model)
    query, ref, value = inputs()
    torch.testing.assert_close(graph(query, ref, value), model(query, ref, value), atol=0, rtol=0)
    with pytest.raises(ShapeError):
        graph(query, ref, value[:, :-1])  # the check is a node of the graph, run on real tensors


def test_torch_export_with_dynamic_batch_and_queries():
    model = Fixed()
    b, nq = Dim("b"), Dim("nq")
    program = torch.export.export(model, inputs(), dynamic_shapes=({0: b, 1: nq}, {0: b, 1: nq}, {0: b}), strict=True)
    other = inputs(b=3, nq=5, seed=4)
    torch.testing.assert_close(program.module()(*other), model(*other), atol=1e-6, rtol=0)


class FromFeatures(torch.nn.Module):
    """Single scale over a feature map whose size is only known at run time (DETR's case)."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = randomised(n_levels=1)

    def forward(self, query, ref, features):  # features (B, C, h, w)
        h, w = features.shape[-2:]
        return self.attn(query, ref, features.flatten(2).transpose(1, 2), [(h, w)])


def test_torch_export_with_dynamic_feature_size():
    model = FromFeatures()
    query, ref = inputs(n_levels=1)[:2]
    dims = {2: Dim("h", min=2, max=64), 3: Dim("w", min=2, max=64)}
    program = torch.export.export(model, (query, ref, torch.randn(2, 8, 4, 6)), dynamic_shapes=(None, None, dims), strict=True)
    features = torch.randn(2, 8, 7, 3)
    torch.testing.assert_close(program.module()(query, ref, features), model(query, ref, features), atol=1e-6, rtol=0)


def test_bad_inputs_and_configs_are_one_clear_error():
    m = randomised()
    query, ref, value = inputs()
    with pytest.raises(ShapeError, match="add up"):
        m(query, ref, value, [(3, 4), (2, 2)])
    with pytest.raises(ShapeError, match="reference_points"):
        m(query, ref[:, :, :1], value, SHAPES)
    with pytest.raises(ShapeError, match="True = a real value"):
        m(query, ref, value, SHAPES, mask=torch.zeros(2, S))
    with pytest.raises(ConfigError, match="divisible"):
        MultiScaleDeformableAttention(10, n_heads=4)
    with pytest.raises(ConfigError, match="n_points"):
        MultiScaleDeformableAttention(8, n_heads=2, n_points=0)
