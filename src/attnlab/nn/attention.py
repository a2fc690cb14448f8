"""Attention: scaled dot-product (Vaswani et al. 2017, eq. 1), multi-head (§3.2.2),
additive (Bahdanau et al. 2015), and the key/value cache used for incremental decoding.

Shapes: tokens (B, T, C); heads (B, H, T, D); attention weights (B, H, Tq, Tk).
Masks follow :mod:`attnlab.nn.masks`: boolean, True = may attend.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.errors import ConfigError, ShapeError
from attnlab.nn.masks import causal_mask, check_mask, off_diagonal_mask, random_key_mask, window_mask


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    causal: bool = False,
    dropout: float = 0.0,
    need_weights: bool = False,
    *,
    bias: Tensor | None = None,
    topk: int | None = None,
    scale: float | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(Q Kᵀ / √d_k + bias) V.

    q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv) -> (B, H, Tq, Dv).

    - ``mask``: boolean, True = may attend, broadcastable to (B, H, Tq, Tk).
    - ``causal``: right-aligned causal mask (query i is at position Tk - Tq + i), so it stays
      correct when queries are the last Tq of Tk positions (cached decoding). One query is the
      last position and sees every key: no mask is built for it.
    - ``bias``: additive float scores, e.g. a relative position bias (H, Tq, Tk).
    - ``topk``: keep only each query's k largest scores (Explicit Sparse Transformer).
    - ``dropout``: on the attention weights; the caller passes 0 in eval mode.
    - A query whose keys are all masked out gets a zero output (and zero weights), never NaN.

    The fast path calls PyTorch's fused kernel (no (Tq, Tk) matrix is kept); the explicit path
    (``need_weights`` or ``topk``) computes the same formula step by step and also returns the
    weights (B, H, Tq, Tk).
    """
    _check_heads(q, k, v)
    tq, tk = q.shape[-2], k.shape[-2]
    if mask is not None:
        check_mask(mask, *_bh(q), tq, tk)
    explicit = need_weights or topk is not None
    causal = causal and tq > 1  # a single right-aligned query may attend to every key

    # The common causal case goes straight to the fused kernel's own causal path.
    if causal and tq == tk and mask is None and bias is None and not explicit:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scale)
    if causal:
        cm = causal_mask(tq, tk, device=q.device)
        mask = cm if mask is None else mask & cm

    has_key = None
    if mask is not None:
        # Rows with no visible key would softmax over nothing (NaN, in value and gradient):
        # let them see everything, then zero their output.
        has_key = mask.any(dim=-1, keepdim=True)
        mask = mask | ~has_key

    if explicit:
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
        if bias is not None:
            scores = scores + bias
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        if topk is not None and topk < tk:
            kth = scores.topk(topk, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        weights = scores.softmax(dim=-1)
        if has_key is not None:
            weights = weights.masked_fill(~has_key, 0.0)
        out = F.dropout(weights, dropout) @ v if dropout > 0 else weights @ v
        return (out, weights) if need_weights else out

    attn_mask = mask
    if bias is not None:
        attn_mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout, scale=scale)
    if has_key is not None:
        out = out.masked_fill(~has_key, 0.0)
    return out


def _bh(q: Tensor) -> tuple[int, int]:
    """(B, H) of a (B, H, T, D) tensor; 1s for missing leading dims."""
    lead = (1, 1) + tuple(q.shape[:-2])
    return lead[-2], lead[-1]


class KVCache:
    """Keys and values of past positions for one attention layer.

    Self-attention appends each step's keys/values; cross-attention stores the encoder
    memory's keys/values once (``set``) and reuses them. ``reorder`` follows beam search.

    Appends write into a buffer that doubles when full, so a step copies only its own new
    keys/values (concatenating would copy the whole past at every step: quadratic in the
    length). ``k``/``v`` are views of the filled part. When gradients flow through the cache,
    it concatenates instead (writing in place would break autograd).

    ``valid`` (B, T), True at real tokens, is kept by callers that mask padded keys
    (:meth:`record_valid`; :meth:`attnlab.nn.Transformer.decode` keeps it in its first layer's cache).
    """

    def __init__(self) -> None:
        self.k: Tensor | None = None  # (B, H, T, D)
        self.v: Tensor | None = None
        self.valid: Tensor | None = None  # (B, T)
        self._kbuf: Tensor | None = None  # (B, H, capacity, D)
        self._vbuf: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            self._kbuf = self._vbuf = None
            self.k = k if self.k is None else torch.cat([self.k, k], dim=-2)
            self.v = v if self.v is None else torch.cat([self.v, v], dim=-2)
            return self.k, self.v
        n, t = len(self), k.shape[-2]
        if self._kbuf is None or n + t > self._kbuf.shape[-2]:
            cap = max(2 * (n + t), 16)
            kb = k.new_empty(*k.shape[:-2], cap, k.shape[-1])
            vb = v.new_empty(*v.shape[:-2], cap, v.shape[-1])
            if n:
                kb[..., :n, :].copy_(self.k)
                vb[..., :n, :].copy_(self.v)
            self._kbuf, self._vbuf = kb, vb
        self._kbuf[..., n:n + t, :].copy_(k)
        self._vbuf[..., n:n + t, :].copy_(v)
        self.k, self.v = self._kbuf[..., :n + t, :], self._vbuf[..., :n + t, :]
        return self.k, self.v

    def record_valid(self, valid: Tensor) -> Tensor:
        """Append the flags (B, t) of new positions (True = real token); returns those of all (B, T)."""
        self.valid = valid if self.valid is None else torch.cat([self.valid, valid], dim=1)
        return self.valid

    def set(self, k: Tensor, v: Tensor) -> None:
        self.k, self.v = k, v
        self._kbuf = self._vbuf = None

    def reorder(self, index: Tensor) -> None:
        if self.valid is not None:
            self.valid = self.valid.index_select(0, index)
        if self.k is None:
            return
        if self._kbuf is not None:
            n = len(self)
            self._kbuf, self._vbuf = self._kbuf.index_select(0, index), self._vbuf.index_select(0, index)
            self.k, self.v = self._kbuf[..., :n, :], self._vbuf[..., :n, :]
        else:
            self.k, self.v = self.k.index_select(0, index), self.v.index_select(0, index)


# torch.fx.wrap makes each check below one node of a torch.fx.symbolic_trace graph (run on real
# tensors) instead of Python control flow on traced shapes, which symbolic tracing cannot follow.
@torch.fx.wrap
def _check_heads(q: Tensor, k: Tensor, v: Tensor) -> None:
    """ShapeError unless q (.., Tq, D), k (.., Tk, D), v (.., Tk, Dv) fit together."""
    for name, t in (("query", q), ("key", k), ("value", v)):
        if not 2 <= t.dim() <= 4:
            raise ShapeError(f"{name} must be (B, H, T, D) (leading dimensions optional), got shape {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ShapeError(f"query and key head dimensions differ: {q.shape[-1]} vs {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ShapeError(f"keys and values have different lengths: {k.shape[-2]} vs {v.shape[-2]}")


@torch.fx.wrap
def _checked_tokens(x: Tensor, embed_dim: int) -> Tensor:
    """``x`` itself once it is (B, T, embed_dim); ShapeError otherwise."""
    if x.dim() != 3 or x.shape[-1] != embed_dim:
        raise ShapeError(f"expected input (B, T, {embed_dim}), got {tuple(x.shape)}")
    return x


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1..head_h) W_O, head_i = Attention(Q W_Qi, K W_Ki, V W_Vi).

    One fused input projection ``qkv`` (3C x C, the layout of ``nn.MultiheadAttention`` and
    timm): rows 0:C are W_Q, C:2C W_K, 2C:3C W_V. Each distinct input of a call is projected
    once, so self-attention is one matmul, cross-attention two (Q from the query; K, V from the
    memory) and DETR's Attn(x + p, x + p, x) two. ``proj`` is W_O.

    Options: ``qkv_bias``; ``dropout`` on the attention weights; ``topk`` sparse attention;
    ``window`` local attention (each query sees keys within ``window`` positions);
    ``random_k``: each query sees ``random_k`` keys drawn at random at every call (the random
    baseline of top-k attention); ``causal`` as the default for :meth:`forward`.
    Locality Self-Attention (Lee et al. 2021) is two options: ``learned_scale``, a learnable
    scale per head in place of 1/√d_k (the inverse of the paper's temperature τ, initialised at
    1/√d_k), and ``exclude_self``, a self-attention in which no token attends to itself.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        bias: bool = True,
        qkv_bias: bool | None = None,
        dropout: float = 0.0,
        topk: int | None = None,
        window: int | None = None,
        random_k: int | None = None,
        causal: bool = False,
        learned_scale: bool = False,
        exclude_self: bool = False,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ConfigError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if topk is not None and topk < 1:
            raise ConfigError(f"topk must be >= 1, got {topk}")
        if window is not None and window < 0:
            raise ConfigError(f"window must be >= 0, got {window}")
        if random_k is not None and random_k < 1:
            raise ConfigError(f"random_k must be >= 1, got {random_k}")
        self.random_k = random_k
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout, self.topk, self.window, self.causal = dropout, topk, window, causal
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=bias if qkv_bias is None else qkv_bias)
        self.proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.exclude_self = exclude_self
        self.scale = nn.Parameter(torch.full((num_heads,), self.head_dim ** -0.5)) if learned_scale else None  # (H,)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Q, K, V heads (B, H, T, D), each distinct input projected once: query = key = value in
        the module's own ``qkv`` (one matmul); query = key (K and Q in one matmul) or key = value
        (K and V in one) in slices of its weight; three inputs in three."""
        if key is query and value is query:
            b, t, _ = query.shape
            qkv = self.qkv(query).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            return qkv.unbind(0)  # each (B, H, T, D)
        c, w, bias = self.embed_dim, self.qkv.weight, self.qkv.bias
        rows = lambda x, i, j: F.linear(x, w[i * c:j * c], None if bias is None else bias[i * c:j * c])  # noqa: E731
        if key is query:
            q, k = rows(query, 0, 2).chunk(2, dim=-1)
            v = rows(value, 2, 3)
        elif value is key:
            q = rows(query, 0, 1)
            k, v = rows(key, 1, 3).chunk(2, dim=-1)
        else:
            q, k, v = rows(query, 0, 1), rows(key, 1, 2), rows(value, 2, 3)
        return self._heads(q), self._heads(k), self._heads(v)

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        causal: bool | None = None,
        need_weights: bool = False,
        cache: KVCache | None = None,
        pos=None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attention of query (B, Tq, C) over key (B, Tk, C) and value (B, Tk, C), as
        ``nn.MultiheadAttention(query, key, value)`` with ``batch_first=True``; ``key`` defaults
        to the query and ``value`` to the key:

        - ``mha(x)``: self-attention. Only here do ``pos`` (a
          :class:`attnlab.nn.position.PositionEncoding` acting inside attention: rotary,
          relative bias) and ``exclude_self`` act, and a ``cache`` (:class:`KVCache`) grows by
          this call's keys and values (incremental decoding);
        - ``mha(x, memory)``: cross-attention; a ``cache`` keeps the memory's keys and values
          from its first call on;
        - ``mha(x + p, x + p, x)``: three inputs, e.g. DETR's positions added to the queries and
          keys but not to the values.

        Returns (B, Tq, C), and the weights (B, H, Tq, Tk) when ``need_weights``.
        """
        query = _checked_tokens(query, self.embed_dim)
        b, tq, c = query.shape
        causal = self.causal if causal is None else causal
        is_self = key is None
        key = query if key is None else key
        value = key if value is None else value
        if key is not query and (key.dim() != 3 or key.shape[0] != b or key.shape[-1] != c):
            raise ShapeError(f"key must be (B={b}, Tk, C={c}), got {tuple(key.shape)}")
        if value is not key and value.shape != key.shape:
            raise ShapeError(f"value must be (B={b}, Tk={key.shape[1]}, C={c}) as the key, got {tuple(value.shape)}")
        if not is_self and cache is not None and len(cache):  # cross-attention: the memory's keys/values, kept
            q = self._heads(F.linear(query, self.qkv.weight[:c], None if self.qkv.bias is None else self.qkv.bias[:c]))
            k, v = cache.k, cache.v
        else:
            q, k, v = self._project(query, key, value)  # each (B, H, T, D)
            if is_self:
                if pos is not None:
                    q, k = pos.rotate(q, k, 0 if cache is None else len(cache))
                if cache is not None:
                    k, v = cache.append(k, v)
            elif cache is not None:
                cache.set(k, v)
        tk = k.shape[-2]
        if mask is not None:
            check_mask(mask, b, self.num_heads, tq, tk)
        if self.window is not None:
            wm = window_mask(tq, tk, self.window, device=query.device)
            mask = wm if mask is None else mask & wm
        if self.exclude_self and is_self:
            om = off_diagonal_mask(tq, tk, device=query.device)
            mask = om if mask is None else mask & om
        if self.random_k is not None:
            visible = torch.ones(b, self.num_heads, tq, tk, dtype=torch.bool, device=query.device)  # (B, H, Tq, Tk)
            visible = visible & causal_mask(tq, tk, device=query.device) if causal else visible
            mask = random_key_mask(visible if mask is None else visible & mask, self.random_k)
        bias = pos.bias(tq, tk) if (pos is not None and is_self) else None
        scale = None
        if self.scale is not None:  # (s_h q) kᵀ = s_h (q kᵀ): the learned scale rides on the queries
            q, scale = q * self.scale.to(q.dtype)[:, None, None], 1.0
        res = scaled_dot_product_attention(
            q, k, v, mask=mask, causal=causal, dropout=self.dropout if self.training else 0.0,
            need_weights=need_weights, bias=bias, topk=self.topk, scale=scale,
        )
        out, weights = res if need_weights else (res, None)
        out = self.proj(out.transpose(1, 2).reshape(b, tq, c))  # concat heads, then W_O
        return (out, weights) if need_weights else out


class AdditiveAttention(nn.Module):
    """Bahdanau attention: score(s, h_j) = vᵀ tanh(W_s s + W_h h_j), weights = softmax over j.

    query (B, Tq, Dq) or (B, Dq); keys (B, Tk, Dk); values default to the keys.
    ``mask`` (B, Tk) or (B, Tq, Tk), boolean, True = may attend.
    Returns the context (B, Tq, Dv) (or (B, Dv)) and the weights (B, Tq, Tk) (or (B, Tk)).
    Pass ``keys_proj = attn.project_keys(keys)`` to compute W_h h_j once per sequence.
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w_query = nn.Linear(query_dim, hidden_dim, bias=False)
        self.w_key = nn.Linear(key_dim, hidden_dim, bias=True)
        self.v = nn.Linear(hidden_dim, 1, bias=False)

    def project_keys(self, keys: Tensor) -> Tensor:
        return self.w_key(keys)

    def forward(self, query, keys, values=None, mask=None, keys_proj=None):
        single = query.dim() == 2
        if single:
            query = query[:, None, :]
        values = keys if values is None else values
        keys_proj = self.project_keys(keys) if keys_proj is None else keys_proj
        # (B, Tq, 1, A) + (B, 1, Tk, A) -> scores (B, Tq, Tk)
        scores = self.v(torch.tanh(self.w_query(query)[:, :, None, :] + keys_proj[:, None, :, :])).squeeze(-1)
        if mask is not None:
            mask = mask[:, None, :] if mask.dim() == 2 else mask
            has_key = mask.any(-1, keepdim=True)
            scores = scores.masked_fill(~(mask | ~has_key), float("-inf"))
        weights = scores.softmax(-1)
        if mask is not None:
            weights = weights.masked_fill(~has_key, 0.0)
        context = weights @ values
        return (context[:, 0], weights[:, 0]) if single else (context, weights)
