"""The Transformer's layers: position-wise feed-forward (§3.3), DropPath (stochastic depth,
Huang et al. 2016), the encoder layer and the decoder layer (§3.1, Fig. 1), post-LN as in the
paper or pre-LN (Xiong et al. 2020; the ViT block)."""

from __future__ import annotations

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


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each in a residual connection with LayerNorm.

    post-LN (paper): x = LN(x + Attn(x));      x = LN(x + FFN(x))
    pre-LN  (ViT):   x = x + Attn(LN(x));      x = x + FFN(LN(x))
    ``dropout`` acts on each branch's output (and inside the FFN); ``attn_dropout`` on the
    attention weights; ``drop_path`` drops whole branches per sample.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        *,
        dropout: float = 0.1,
        attn_dropout: float | None = None,
        activation: str = "relu",
        norm_first: bool = False,
        norm_eps: float = 1e-5,
        bias: bool = True,
        qkv_bias: bool | None = None,
        drop_path: float = 0.0,
        topk: int | None = None,
        window: int | None = None,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(
            d_model, num_heads, bias=bias, qkv_bias=qkv_bias,
            dropout=dropout if attn_dropout is None else attn_dropout, topk=topk, window=window,
        )
        self.ff = FeedForward(d_model, d_ff, activation, dropout, bias)
        self.norm1 = nn.LayerNorm(d_model, eps=norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=norm_eps)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

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
    ``nn.TransformerDecoderLayer`` is not, as PyTorch's without ``tgt_mask``).
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        *,
        dropout: float = 0.1,
        attn_dropout: float | None = None,
        activation: str = "relu",
        norm_first: bool = False,
        norm_eps: float = 1e-5,
        bias: bool = True,
        qkv_bias: bool | None = None,
        drop_path: float = 0.0,
        topk: int | None = None,
        window: int | None = None,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        adrop = dropout if attn_dropout is None else attn_dropout
        self.self_attn = MultiHeadAttention(d_model, num_heads, bias=bias, qkv_bias=qkv_bias, dropout=adrop,
                                            topk=topk, window=window, causal=True)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, bias=bias, qkv_bias=qkv_bias, dropout=adrop)
        self.ff = FeedForward(d_model, d_ff, activation, dropout, bias)
        self.norm1 = nn.LayerNorm(d_model, eps=norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=norm_eps)
        self.norm3 = nn.LayerNorm(d_model, eps=norm_eps)
        self.drop1, self.drop2, self.drop3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

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


