import pytest
import torch

from attnlab.errors import ConfigError, ShapeError
from attnlab.nn.position import (
    POSITION_KINDS,
    LearnedPositionalEmbedding,
    LearnedPositionalEmbedding2D,
    PositionEncoding,
    RelativePositionBias,
    RelativePositionBias2D,
    RotaryEmbedding2D,
    SinCos2DPositionalEncoding,
    SinusoidalPositionalEncoding,
    make_position,
    resample_grid,
    sincos_2d_table,
)


@pytest.mark.parametrize("kind", POSITION_KINDS)
def test_every_kind_speaks_the_one_interface(kind):
    pos = make_position(kind, dim=16, num_heads=4, max_len=32)
    assert isinstance(pos, PositionEncoding)
    x, q = torch.randn(2, 5, 16), torch.randn(2, 4, 5, 4)
    assert pos.add(x, offset=3).shape == x.shape
    assert tuple(t.shape for t in pos.rotate(q, q, 2)) == (q.shape, q.shape)
    b = pos.bias(5, 7)
    assert b is None or b.shape == (4, 5, 7)


def test_sinusoidal_offset_and_growth():
    pe = SinusoidalPositionalEncoding(8, max_len=4)
    x = torch.zeros(1, 3, 8)
    torch.testing.assert_close(pe.add(x, offset=5), pe.table[5:8][None])  # grew past max_len
    torch.testing.assert_close(pe.add(x)[0, 0], torch.tensor([0.0, 1.0] * 4))


def test_learned_refuses_too_long():
    with pytest.raises(ShapeError, match="longer than"):
        LearnedPositionalEmbedding(4, 8).add(torch.zeros(1, 5, 8))


def test_relative_bias_is_a_function_of_distance():
    rel = RelativePositionBias(num_heads=2, max_distance=3)
    b = rel.bias(4, 6)  # right-aligned: query i at position i + 2
    assert b.shape == (2, 4, 6)
    torch.testing.assert_close(b[:, 0, 2], rel.table[3])  # distance 0
    torch.testing.assert_close(b[:, 3, 0], rel.table[0])  # distance -5 clipped to -3


def test_relative_bias_2d_with_class_token():
    rel = RelativePositionBias2D((3, 3), num_heads=2, num_prefix=1)
    b = rel.bias(10, 10)
    assert b.shape == (2, 10, 10)
    # same 2-D offset -> same bias: patches (0,0)->(1,1) and (1,1)->(2,2)
    torch.testing.assert_close(b[:, 1, 5], b[:, 5, 9])
    with pytest.raises(ShapeError):
        rel.bias(9, 9)


def test_sincos2d():
    t = sincos_2d_table(2, 3, 8)
    assert t.shape == (6, 8)
    torch.testing.assert_close(t[0], torch.tensor([0.0, 0, 1, 1, 0, 0, 1, 1]))
    enc = SinCos2DPositionalEncoding((2, 3), 8, num_prefix=1)
    assert torch.equal(enc.add(torch.zeros(1, 7, 8))[0, 0], torch.zeros(8))
    with pytest.raises(ConfigError):
        sincos_2d_table(2, 2, 6)


def test_resample_grid_keeps_prefix_and_constants():
    pos = torch.cat([torch.randn(1, 1, 4), torch.full((1, 9, 4), 0.5)], 1)
    out = resample_grid(pos, (3, 3), (5, 5), num_prefix=1)
    assert out.shape == (1, 26, 4)
    assert torch.equal(out[:, 0], pos[:, 0])
    torch.testing.assert_close(out[:, 1:], torch.full((1, 25, 4), 0.5))


def test_rope2d_scores_depend_only_on_the_2d_offset():
    """Axial 2-D RoPE: with the same q at every patch and the same k at every patch, the score
    between patches (y1, x1) and (y2, x2) is a function of (y2 - y1, x2 - x1) alone; the class
    token is not rotated; rotation keeps norms."""
    torch.manual_seed(0)
    rope = RotaryEmbedding2D((3, 4), head_dim=8, num_prefix=1)
    q = torch.randn(8).expand(1, 1, 13, 8)
    k = torch.randn(8).expand(1, 1, 13, 8)
    rq, rk = rope.rotate(q, k)
    torch.testing.assert_close(rq[0, 0, 0], q[0, 0, 0])  # the class token
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    s = (rq[0, 0, 1:] @ rk[0, 0, 1:].T).reshape(3, 4, 3, 4)
    by_offset: dict = {}
    for y1, x1, y2, x2 in torch.cartesian_prod(*(torch.arange(n) for n in (3, 4, 3, 4))).tolist():
        by_offset.setdefault((y2 - y1, x2 - x1), []).append(s[y1, x1, y2, x2])
    for vals in by_offset.values():
        torch.testing.assert_close(torch.stack(vals), vals[0].expand(len(vals)), atol=1e-5, rtol=1e-5)
    assert len({round(float(v[0]), 4) for v in by_offset.values()}) > 10  # and the offsets are told apart
    with pytest.raises(ConfigError, match="divisible by 4"):
        RotaryEmbedding2D((2, 2), head_dim=6)


def test_learned_2d_shares_rows_and_columns():
    pe = LearnedPositionalEmbedding2D((2, 3), dim=6, num_prefix=1)
    t = pe.table[0]  # (1 + 6, 6)
    assert t.shape == (7, 6) and sum(p.numel() for p in pe.parameters()) == 2 * 3 + 3 * 3 + 6
    torch.testing.assert_close(t[1:, :3].reshape(2, 3, 3)[:, 0], pe.row)  # the row half is shared along a row
    torch.testing.assert_close(t[1:, 3:].reshape(2, 3, 3)[0], pe.col)  # the column half along a column
    x = torch.zeros(2, 7, 6)
    torch.testing.assert_close(pe.add(x), t.expand(2, 7, 6))
    with pytest.raises(ConfigError, match="even"):
        LearnedPositionalEmbedding2D((2, 2), dim=5)
