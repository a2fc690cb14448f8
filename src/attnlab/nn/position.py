"""Position encodings behind one interface.

A :class:`PositionEncoding` can act at three places, and each kind overrides the one it uses:

- ``add(x, offset)``: absolute encodings added to the token embeddings (sinusoidal, learned,
  2-D sin-cos);
- ``rotate(q, k, offset)``: rotary embeddings applied to queries and keys inside attention;
- ``bias(tq, tk)``: relative position biases added to the attention scores.

Models call all three unconditionally; the defaults do nothing, which is also ``none``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.errors import ConfigError, ShapeError


class PositionEncoding(nn.Module):
    """No position information (the identity at all three places): ``kind="none"``."""

    def add(self, x: Tensor, offset: int = 0) -> Tensor:  # x (B, T, C)
        return x

    def rotate(self, q: Tensor, k: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:  # (B, H, T, D)
        return q, k

    def bias(self, tq: int, tk: int) -> Tensor | None:  # -> (H, Tq, Tk)
        return None


def sinusoidal_table(length: int, dim: int, base: float = 10000.0) -> Tensor:
    """The paper's §3.5: PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(same)."""
    if dim % 2:
        raise ConfigError(f"sinusoidal encodings need an even dimension, got {dim}")
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    inv = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv)
    return table.float()


class SinusoidalPositionalEncoding(PositionEncoding):
    """Fixed sinusoids added to the embeddings; the table grows on demand past ``max_len``."""

    def __init__(self, dim: int, max_len: int = 1024, base: float = 10000.0) -> None:
        super().__init__()
        self.dim, self.base = dim, base
        self.register_buffer("table", sinusoidal_table(max_len, dim, base), persistent=False)

    def add(self, x: Tensor, offset: int = 0) -> Tensor:
        end = offset + x.shape[1]
        if end > self.table.shape[0]:
            self.table = sinusoidal_table(2 * end, self.dim, self.base).to(self.table.device)
        return x + self.table[offset:end].to(x.dtype)


class LearnedPositionalEmbedding(PositionEncoding):
    """A learned vector per position: ``weight`` (1, max_len, C)."""

    def __init__(self, max_len: int, dim: int, std: float = 0.02) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, max_len, dim))
        nn.init.trunc_normal_(self.weight, std=std)

    def add(self, x: Tensor, offset: int = 0) -> Tensor:
        end = offset + x.shape[1]
        if end > self.weight.shape[1]:
            raise ShapeError(f"sequence of length {end} is longer than the {self.weight.shape[1]} learned positions")
        return x + self.weight[:, offset:end]


def sincos_2d_table(grid_h: int, grid_w: int, dim: int, base: float = 10000.0) -> Tensor:
    """(grid_h * grid_w, dim): half the channels encode the row, half the column (MAE, MoCo v3)."""
    if dim % 4:
        raise ConfigError(f"2-D sin-cos encodings need a dimension divisible by 4, got {dim}")
    q = dim // 4
    omega = base ** (-torch.arange(q, dtype=torch.float64) / q)
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64), indexing="ij")
    ang_y = ys.reshape(-1, 1) * omega
    ang_x = xs.reshape(-1, 1) * omega
    return torch.cat([ang_y.sin(), ang_y.cos(), ang_x.sin(), ang_x.cos()], dim=1).float()


class SinCos2DPositionalEncoding(PositionEncoding):
    """Fixed 2-D sin-cos encoding of a patch grid; ``num_prefix`` leading tokens (class token)
    get a zero encoding."""

    def __init__(self, grid_size: tuple[int, int], dim: int, num_prefix: int = 0) -> None:
        super().__init__()
        table = torch.cat([torch.zeros(num_prefix, dim), sincos_2d_table(*grid_size, dim)])
        self.register_buffer("table", table[None], persistent=False)  # (1, N, C)

    def add(self, x: Tensor, offset: int = 0) -> Tensor:
        return x + self.table[:, offset : offset + x.shape[1]].to(x.dtype)


class LearnedPositionalEmbedding2D(PositionEncoding):
    """The ViT paper's 2-D embedding (appendix D.4): a learned Y embedding per patch row and an
    X embedding per patch column, C/2 channels each, concatenated for each patch; ``num_prefix``
    leading tokens (class token) get their own learned vectors."""

    def __init__(self, grid_size: tuple[int, int], dim: int, num_prefix: int = 0, std: float = 0.02) -> None:
        super().__init__()
        if dim % 2:
            raise ConfigError(f"2-D learned embeddings need an even dimension, got {dim}")
        gh, gw = grid_size
        self.row = nn.Parameter(torch.zeros(gh, dim // 2))  # Y embedding (Gh, C/2)
        self.col = nn.Parameter(torch.zeros(gw, dim // 2))  # X embedding (Gw, C/2)
        self.prefix = nn.Parameter(torch.zeros(num_prefix, dim))  # (P, C)
        self.reset_parameters(std)

    def reset_parameters(self, std: float = 0.02, init=nn.init.trunc_normal_) -> None:
        for p in (self.row, self.col, self.prefix):
            init(p, std=std)

    @property
    def table(self) -> Tensor:
        """(1, P + Gh*Gw, C): [prefix; concat(Y_row, X_col) for each patch, row-major]."""
        gh, gw = self.row.shape[0], self.col.shape[0]
        grid = torch.cat([self.row[:, None].expand(gh, gw, -1), self.col[None].expand(gh, gw, -1)], dim=-1)
        return torch.cat([self.prefix, grid.reshape(gh * gw, -1)])[None]

    def add(self, x: Tensor, offset: int = 0) -> Tensor:
        return x + self.table[:, offset : offset + x.shape[1]].to(x.dtype)


class RelativePositionBias(PositionEncoding):
    """A learned scalar per head and clipped relative distance j - i, added to the scores
    (Shaw et al. 2018; the bias form of T5 without buckets). Right-aligned like causal masks."""

    def __init__(self, num_heads: int, max_distance: int = 128) -> None:
        super().__init__()
        self.max_distance = max_distance
        self.table = nn.Parameter(torch.zeros(2 * max_distance + 1, num_heads))
        nn.init.trunc_normal_(self.table, std=0.02)

    def bias(self, tq: int, tk: int) -> Tensor:
        qpos = torch.arange(tq, device=self.table.device)[:, None] + (tk - tq)
        rel = torch.arange(tk, device=self.table.device)[None, :] - qpos
        idx = rel.clamp(-self.max_distance, self.max_distance) + self.max_distance
        return self.table[idx].permute(2, 0, 1)  # (H, Tq, Tk)


class RelativePositionBias2D(PositionEncoding):
    """Relative position bias over a patch grid (BEiT/Swin): one learned scalar per head and
    2-D offset (dy, dx); ``num_prefix`` leading tokens (class token) get three extra entries
    (prefix→patch, patch→prefix, prefix→prefix)."""

    def __init__(self, grid_size: tuple[int, int], num_heads: int, num_prefix: int = 0) -> None:
        super().__init__()
        gh, gw = grid_size
        n_rel = (2 * gh - 1) * (2 * gw - 1)
        self.table = nn.Parameter(torch.zeros(n_rel + (3 if num_prefix else 0), num_heads))
        nn.init.trunc_normal_(self.table, std=0.02)
        ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, N)
        rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
        idx = (rel[0] + gh - 1) * (2 * gw - 1) + (rel[1] + gw - 1)
        if num_prefix:
            n = gh * gw + num_prefix
            full = torch.empty(n, n, dtype=torch.long)
            full[num_prefix:, num_prefix:] = idx
            full[:num_prefix, num_prefix:] = n_rel
            full[num_prefix:, :num_prefix] = n_rel + 1
            full[:num_prefix, :num_prefix] = n_rel + 2
            idx = full
        self.register_buffer("index", idx, persistent=False)

    def bias(self, tq: int, tk: int) -> Tensor:
        return _grid_bias(self.table, self.index, tq, tk)  # (H, N, N)


@torch.fx.wrap  # one node of a torch.fx.symbolic_trace graph: the check needs concrete sizes
def _grid_bias(table: Tensor, index: Tensor, tq: int, tk: int) -> Tensor:
    """The (H, N, N) bias table[index] of :class:`RelativePositionBias2D`, for tq = tk = N only."""
    if tq != index.shape[0] or tk != index.shape[1]:
        raise ShapeError(f"relative position bias built for {index.shape[0]} tokens, got {tq}x{tk}")
    return table[index].permute(2, 0, 1)


class RotaryEmbedding(PositionEncoding):
    """RoPE (Su et al. 2021): rotate each (x_i, x_{i+D/2}) pair of q and k by angle pos·θ_i, so
    q·k depends only on the relative position. Uses the rotate-half pairing."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ConfigError(f"rotary embeddings need an even head dimension, got {head_dim}")
        inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv, persistent=False)

    def _rot(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    def rotate(self, q: Tensor, k: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        t = q.shape[-2]
        pos = torch.arange(offset, offset + t, device=q.device, dtype=torch.float32)
        ang = torch.outer(pos, self.inv_freq)  # (T, D/2)
        ang = torch.cat([ang, ang], dim=-1)
        cos, sin = ang.cos().to(q.dtype), ang.sin().to(q.dtype)
        return self._rot(q, cos, sin), self._rot(k, cos, sin)


class RotaryEmbedding2D(PositionEncoding):
    """Axial 2-D RoPE over a patch grid (Heo et al. 2024, "RoPE-Axial"): in each head the first
    half of the channels rotate with the patch's row, the second half with its column
    (rotate-half pairing within each half), so q·k depends only on the offset (dy, dx).
    ``num_prefix`` leading tokens (class token) are not rotated. ``base`` 100, as that paper
    uses for ViTs: grids are short, so the frequencies must be high enough to tell rows apart."""

    def __init__(self, grid_size: tuple[int, int], head_dim: int, num_prefix: int = 0, base: float = 100.0) -> None:
        super().__init__()
        if head_dim % 4:
            raise ConfigError(f"2-D rotary embeddings need a head dimension divisible by 4, got {head_dim}")
        q = head_dim // 4
        inv = base ** (-torch.arange(q, dtype=torch.float64) / q)  # (D/4,)
        ys, xs = torch.meshgrid(torch.arange(grid_size[0], dtype=torch.float64),
                                torch.arange(grid_size[1], dtype=torch.float64), indexing="ij")
        ang_y, ang_x = ys.reshape(-1, 1) * inv, xs.reshape(-1, 1) * inv  # (Gh*Gw, D/4) each
        ang = torch.cat([ang_y, ang_y, ang_x, ang_x], dim=1)  # (Gh*Gw, D)
        ang = torch.cat([ang.new_zeros(num_prefix, head_dim), ang])  # (N, D): angle 0 for the prefix
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)

    @staticmethod
    def _rot(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x4 = x.unflatten(-1, (2, 2, -1))  # (..., axis, pair half, D/4)
        rx = torch.stack([-x4[..., 1, :], x4[..., 0, :]], dim=-2).flatten(-3)  # rotate half, per axis
        return x * cos + rx * sin

    def rotate(self, q: Tensor, k: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:  # (B, H, N, D)
        cos, sin = self.cos.to(q.dtype), self.sin.to(q.dtype)  # (N, D): the grid fixes N
        return self._rot(q, cos, sin), self._rot(k, cos, sin)


POSITION_KINDS = ("sinusoidal", "learned", "rotary", "relative", "none")


def make_position(kind: str, *, dim: int, num_heads: int, max_len: int = 1024, learned_std: float = 0.02) -> PositionEncoding:
    """Build a 1-D position encoding by name: one of :data:`POSITION_KINDS` (``learned_std``: the
    initial std of a learned table)."""
    if kind == "sinusoidal":
        return SinusoidalPositionalEncoding(dim, max_len)
    if kind == "learned":
        return LearnedPositionalEmbedding(max_len, dim, std=learned_std)
    if kind == "rotary":
        return RotaryEmbedding(dim // num_heads)
    if kind == "relative":
        return RelativePositionBias(num_heads)
    if kind == "none":
        return PositionEncoding()
    raise ConfigError(f"unknown position encoding {kind!r}; choose one of {', '.join(POSITION_KINDS)}")


def resample_grid(pos: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], num_prefix: int = 0) -> Tensor:
    """Resample learned position embeddings (1, prefix + Gh*Gw, C) to a new patch grid with
    bicubic interpolation; prefix tokens (class token) are kept as they are. Antialiased, as
    timm does, so shrinking the grid gives the same numbers as timm too."""
    if not torch.compiler.is_exporting() and tuple(old_grid) == tuple(new_grid):  # exporting: no branch on a traced
        return pos                                                                   # grid (the same grid resamples exactly)
    prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
    c = grid.shape[-1]
    if grid.shape[1] != old_grid[0] * old_grid[1]:
        raise ShapeError(f"position embedding has {grid.shape[1]} grid positions, expected {old_grid[0]}x{old_grid[1]}")
    grid = grid.reshape(1, *old_grid, c).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, c).to(pos.dtype)
    return torch.cat([prefix, grid], dim=1)


def grid_of(n: int) -> tuple[int, int]:
    """A square grid holding n positions."""
    s = math.isqrt(n)
    if s * s != n:
        raise ShapeError(f"{n} positions do not form a square grid")
    return s, s
