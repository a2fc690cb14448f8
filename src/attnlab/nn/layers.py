"""The Transformer's layers: position-wise feed-forward (§3.3), DropPath (stochastic depth,
Huang et al. 2016), the encoder layer and the decoder layer (§3.1, Fig. 1), post-LN as in the
paper or pre-LN (Xiong et al. 2020; the ViT block)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.nn.attention import KVCache, MultiHeadAttention

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class FeedForward(nn.Module):
    """FFN(x) = W_2 · dropout(act(W_1 x + b_1)) + b_2, applied to each position."""

    def __init__(self, dim: int, hidden_dim: int, activation: str = "relu", dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(self.act(self.fc1(x))))


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a sample's whole residual branch with probability p
    and scale the kept ones by 1/(1-p); the identity in eval mode."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _out(res):
    """(out, weights) or out -> (out, weights or None)."""
    return res if isinstance(res, tuple) else (res, None)


@dataclass
class LayerConfig:
    """The options of an encoder or decoder layer (each layer takes them as keyword arguments)."""

    d_model: int
    num_heads: int
    d_ff: int
    dropout: float = 0.1  # on each branch's output and inside the FFN
    attn_dropout: float | None = None  # on the attention weights; None: ``dropout``
    activation: str = "relu"
    norm_first: bool = False  # pre-LN (True) or the paper's post-LN
    norm_eps: float = 1e-5
    bias: bool = True
    qkv_bias: bool | None = None  # None: ``bias``
    drop_path: float = 0.0  # stochastic depth of each branch
    topk: int | None = None  # top-k sparse self-attention
    window: int | None = None  # local self-attention

    def attention(self, *, causal: bool = False, sparse: bool = True) -> MultiHeadAttention:
        """A multi-head attention of this layer; ``sparse=False``: without top-k/window (cross-attention)."""
        return MultiHeadAttention(self.d_model, self.num_heads, bias=self.bias, qkv_bias=self.qkv_bias,
                                  dropout=self.dropout if self.attn_dropout is None else self.attn_dropout,
                                  topk=self.topk if sparse else None, window=self.window if sparse else None,
                                  causal=causal)

    def sublayer(self) -> tuple[nn.LayerNorm, nn.Dropout]:
        """The LayerNorm and the output dropout around one residual branch."""
        return nn.LayerNorm(self.d_model, eps=self.norm_eps), nn.Dropout(self.dropout)

    def drop_path_module(self) -> nn.Module:
        return DropPath(self.drop_path) if self.drop_path > 0 else nn.Identity()


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each in a residual connection with LayerNorm.

    post-LN (paper): x = LN(x + Attn(x));      x = LN(x + FFN(x))
    pre-LN  (ViT):   x = x + Attn(LN(x));      x = x + FFN(LN(x))
    ``options`` are the fields of :class:`LayerConfig`: ``dropout`` acts on each branch's output
    (and inside the FFN), ``attn_dropout`` on the attention weights, ``drop_path`` drops whole
    branches per sample.
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, **options) -> None:
        super().__init__()
        cfg = LayerConfig(d_model, num_heads, d_ff, **options)
        self.norm_first = cfg.norm_first
        self.self_attn = cfg.attention()
        self.ff = FeedForward(d_model, d_ff, cfg.activation, cfg.dropout, cfg.bias)
        (self.norm1, self.drop1), (self.norm2, self.drop2) = cfg.sublayer(), cfg.sublayer()
        self.drop_path = cfg.drop_path_module()

    def forward(self, x: Tensor, mask: Tensor | None = None, *, causal: bool = False, pos=None,
                need_weights: bool = False, cache: KVCache | None = None):
        """x (B, T, C) -> (B, T, C), and the attention weights (B, H, T, T) when asked."""
        attend = lambda h: _out(self.self_attn(h, mask=mask, causal=causal, pos=pos, need_weights=need_weights, cache=cache))  # noqa: E731
        if self.norm_first:
            a, w = attend(self.norm1(x))
            x = x + self.drop_path(self.drop1(a))
            x = x + self.drop_path(self.drop2(self.ff(self.norm2(x))))
        else:
            a, w = attend(x)
            x = self.norm1(x + self.drop_path(self.drop1(a)))
            x = self.norm2(x + self.drop_path(self.drop2(self.ff(x))))
        return (x, w) if need_weights else x


class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention over the encoder memory, feed-forward (Fig. 1).

    post-LN: x = LN(x + SelfAttn(x)); x = LN(x + CrossAttn(x, m)); x = LN(x + FFN(x))
    pre-LN:  x = x + SelfAttn(LN(x)); x = x + CrossAttn(LN(x), m); x = x + FFN(LN(x))
    ``cache`` is a (self, cross) pair of :class:`KVCache` for incremental decoding.
    The self-attention is causal unless ``causal=False`` is passed (a layer converted from
    ``nn.TransformerDecoderLayer`` is not, as PyTorch's without ``tgt_mask``). ``options``: the
    fields of :class:`LayerConfig`; top-k and window apply to the self-attention only.
    """

    def __init__(self, d_model: int, num_heads: int, d_ff: int, **options) -> None:
        super().__init__()
        cfg = LayerConfig(d_model, num_heads, d_ff, **options)
        self.norm_first = cfg.norm_first
        self.self_attn = cfg.attention(causal=True)
        self.cross_attn = cfg.attention(sparse=False)
        self.ff = FeedForward(d_model, d_ff, cfg.activation, cfg.dropout, cfg.bias)
        (self.norm1, self.drop1), (self.norm2, self.drop2), (self.norm3, self.drop3) = (cfg.sublayer() for _ in range(3))
        self.drop_path = cfg.drop_path_module()

    def forward(self, x: Tensor, memory: Tensor, self_mask: Tensor | None = None, memory_mask: Tensor | None = None,
                *, causal: bool | None = None, pos=None, cache: tuple[KVCache, KVCache] | None = None) -> Tensor:
        """x (B, Tq, C), memory (B, Ts, C) -> (B, Tq, C). ``causal=None``: the self-attention's own default."""
        sc, cc = cache if cache is not None else (None, None)
        sa = lambda h: self.self_attn(h, mask=self_mask, causal=causal, pos=pos, cache=sc)  # noqa: E731
        ca = lambda h: self.cross_attn(h, memory, mask=memory_mask, cache=cc)  # noqa: E731
        if self.norm_first:
            x = x + self.drop_path(self.drop1(sa(self.norm1(x))))
            x = x + self.drop_path(self.drop2(ca(self.norm2(x))))
            x = x + self.drop_path(self.drop3(self.ff(self.norm3(x))))
        else:
            x = self.norm1(x + self.drop_path(self.drop1(sa(x))))
            x = self.norm2(x + self.drop_path(self.drop2(ca(x))))
            x = self.norm3(x + self.drop_path(self.drop3(self.ff(x))))
        return x


