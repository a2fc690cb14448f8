"""Attention masks. One convention for the whole library:

    a mask is a **boolean** tensor, **True = may attend**, broadcastable to the attention
    shape (B, H, Tq, Tk).

PyTorch's ``nn.MultiheadAttention``/``nn.Transformer`` use the opposite for boolean masks
(True = masked out) and accept additive float masks; convert at the edge with
:func:`from_torch_mask`. Helpers here build the usual masks in our convention.
"""

from __future__ import annotations

import torch
from torch import Tensor

from attnlab.errors import ShapeError


def causal_mask(tq: int, tk: int | None = None, device=None) -> Tensor:
    """(Tq, Tk) causal mask, **right-aligned**: query i sits at absolute position Tk - Tq + i.

    Right alignment keeps the mask correct when the queries are the last Tq of Tk positions,
    which is exactly the case of cached incremental decoding (Tq = 1, Tk = cache length + 1).
    """
    tk = tq if tk is None else tk
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril(diagonal=tk - tq)


def window_mask(tq: int, tk: int | None = None, window: int = 1, device=None) -> Tensor:
    """(Tq, Tk) local-window mask: query i (right-aligned as in :func:`causal_mask`) sees keys
    j with |pos(i) - j| <= window ("truncated self-attention")."""
    tk = tq if tk is None else tk
    qpos = torch.arange(tq, device=device)[:, None] + (tk - tq)
    kpos = torch.arange(tk, device=device)[None, :]
    return (qpos - kpos).abs() <= window


def off_diagonal_mask(tq: int, tk: int | None = None, device=None) -> Tensor:
    """(Tq, Tk) mask that hides from each query its own position (right-aligned as in
    :func:`causal_mask`): a token may attend to every token but itself. The diagonal masking of
    Locality Self-Attention (Lee et al. 2021, "Vision Transformer for Small-Size Datasets")."""
    tk = tq if tk is None else tk
    qpos = torch.arange(tq, device=device)[:, None] + (tk - tq)
    return qpos != torch.arange(tk, device=device)[None, :]


def random_key_mask(allowed: Tensor, k: int) -> Tensor:
    """Each query keeps k keys drawn uniformly, without replacement, among its ``allowed`` ones
    (boolean (..., Tq, Tk)); fewer when fewer are allowed. The random-selection baseline of the
    Explicit Sparse Transformer (k keys per query, not the k highest-scoring). Draws from
    torch's global generator, anew at every call."""
    noise = torch.rand(allowed.shape, device=allowed.device).masked_fill(~allowed, -1.0)  # disallowed rank last
    picked = noise.topk(min(k, allowed.shape[-1]), dim=-1).indices
    return torch.zeros_like(allowed).scatter_(-1, picked, True) & allowed


def padding_mask(valid: Tensor) -> Tensor:
    """Key padding: ``valid`` (B, Tk) bool, True at real tokens -> (B, 1, 1, Tk)."""
    if valid.dim() != 2:
        raise ShapeError(f"padding_mask expects a (B, Tk) tensor of real-token flags, got shape {tuple(valid.shape)}")
    return valid.bool()[:, None, None, :]


def from_torch_mask(mask: Tensor | None, *, key_padding: bool = False) -> Tensor | None:
    """Convert a PyTorch-convention mask into ours.

    PyTorch boolean masks mean True = *masked out*; float masks are added to the scores
    (-inf = masked). ``key_padding=True`` treats ``mask`` as a (B, Tk) key_padding_mask and
    returns (B, 1, 1, Tk). Float masks with values other than 0/-inf are not masks but biases
    and are refused.
    """
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        ours = ~mask
    else:
        if not bool(((mask == 0) | torch.isneginf(mask)).all()):
            raise ShapeError("float attention masks with values other than 0 and -inf are biases, not masks; pass them as `bias`")
        ours = mask == 0
    return ours[:, None, None, :] if key_padding else ours


def check_mask(mask: Tensor, b: int, h: int, tq: int, tk: int) -> Tensor:
    """Validate that ``mask`` is boolean and broadcastable to (B, H, Tq, Tk)."""
    if mask.dtype != torch.bool:
        raise ShapeError(f"attention masks are boolean (True = may attend), got dtype {mask.dtype}")
    target = (b, h, tq, tk)
    shape = tuple(mask.shape)
    ok = len(shape) <= 4 and all(s in (1, t) for s, t in zip(shape[::-1], target[::-1]))
    if not ok:
        raise ShapeError(f"mask of shape {shape} does not broadcast to the attention shape (B, H, Tq, Tk) = {target}")
    return mask
