"""Ablated variants of the library's models, for ``attnlab experiment``: each is the original
model with one config field more, registered under its own name so that a run of it is rebuilt
by name like any other (``create_model(name, **config)``).

- ``norm``: every LayerNorm of the model replaced by BatchNorm over the tokens
  (:class:`TokenBatchNorm`, Shen et al. 2020's setting) or removed (``"none"``).
- ``logit_scale``: ``"sqrt"`` is softmax(QKᵀ/√d_k)V; ``"none"`` is the unscaled softmax(QKᵀ)V
  (eq. 1 without its footnote 4), made by multiplying Q by √d_k before the scaled kernel.
- ``topk`` / ``random_k`` / ``local_k`` / ``window``: the seq2seq Transformer with top-k sparse
  attention (Explicit Sparse Transformer, Zhao et al. 2019) in every attention layer, its random
  baseline (k keys per query drawn at random), its local baseline with the same number of keys
  (each query's k nearest keys by position, :func:`nearest_key_mask`), or local self-attention
  within a distance (``window``: 2w + 1 keys in the middle of a sentence, cross-attention dense).

The pieces are the existing models' own modules; nothing here changes their equations
otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.models.lm import TransformerLM, TransformerLMConfig
from attnlab.models.registry import config_from, register_model
from attnlab.models.vit import VisionTransformer, ViTConfig
from attnlab.nn.attention import MultiHeadAttention
from attnlab.nn.masks import causal_mask
from attnlab.nn.transformer import Transformer, TransformerConfig

NORMS = ("layer", "batch", "none")
LOGIT_SCALES = ("sqrt", "none")


class TokenBatchNorm(nn.Module):
    """BatchNorm of (B, T, C) tokens: each channel normalised over the batch and the tokens
    (running statistics in eval mode). Drop-in for ``nn.LayerNorm(C)``."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        return self.bn(x.reshape(-1, shape[-1])).reshape(shape)  # (B*T, C): statistics over batch and tokens


def make_norm(kind: str, dim: int, eps: float = 1e-5) -> nn.Module:
    if kind not in NORMS:
        raise ConfigError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")
    if kind == "layer":
        return nn.LayerNorm(dim, eps=eps)
    return TokenBatchNorm(dim, eps) if kind == "batch" else nn.Identity()


def replace_layer_norms(module: nn.Module, kind: str) -> None:
    """Replace every ``nn.LayerNorm`` inside ``module`` by ``make_norm(kind)`` (in place)."""
    if kind == "layer":
        return
    for name, child in list(module.named_children()):
        if isinstance(child, nn.LayerNorm):
            setattr(module, name, make_norm(kind, child.normalized_shape[-1], child.eps))
        else:
            replace_layer_norms(child, kind)


def unscale_attention(attn: MultiHeadAttention) -> None:
    """Make a self-attention module compute softmax(QKᵀ)V: its Q is multiplied by √d_k before
    the kernel divides the scores by √d_k (the same function of the weights, so the same
    gradients as the unscaled formula)."""
    factor = math.sqrt(attn.head_dim)
    c = attn.embed_dim

    def scale_q(module, inputs, out: Tensor) -> Tensor:  # out (B, T, 3C) = [Q | K | V]
        return torch.cat([out[..., :c] * factor, out[..., c:]], dim=-1)

    attn.qkv.register_forward_hook(scale_q)


def _check(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{field}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")


# --- the Transformer LM -------------------------------------------------------------------------------

@dataclass
class AblationLMConfig(TransformerLMConfig):
    norm: str = "layer"  # layer | batch | none: every LayerNorm of the blocks and the final one
    logit_scale: str = "sqrt"  # sqrt: QKᵀ/√d_k (the paper); none: QKᵀ

    def __post_init__(self) -> None:
        super().__post_init__()
        _check("norm", self.norm, NORMS)
        _check("logit_scale", self.logit_scale, LOGIT_SCALES)


class AblationLM(TransformerLM):
    """:class:`~attnlab.models.lm.TransformerLM` with another norm or unscaled attention."""

    def __init__(self, config: AblationLMConfig) -> None:
        super().__init__(config)
        replace_layer_norms(self, config.norm)
        if config.logit_scale == "none":
            for b in self.blocks:
                unscale_attention(b.self_attn)


@register_model("transformer_lm_ablation")
def transformer_lm_ablation(**overrides) -> AblationLM:
    """transformer_lm_char with the experiments' switches: norm (layer/batch/none) and
    logit_scale (sqrt/none)."""
    base = dict(vocab_size=65, d_model=128, num_layers=4, num_heads=4, position="rotary", max_len=64)
    return AblationLM(config_from(AblationLMConfig, base, overrides, "transformer_lm_ablation"))


# --- the Vision Transformer ---------------------------------------------------------------------------

@dataclass
class AblationViTConfig(ViTConfig):
    norm: str = "layer"  # layer | batch | none: every LayerNorm (blocks and final)

    def validate(self) -> None:
        super().validate()
        _check("norm", self.norm, NORMS)


class AblationViT(VisionTransformer):
    """:class:`~attnlab.models.vit.VisionTransformer` with every LayerNorm replaced."""

    def __init__(self, cfg: AblationViTConfig, name: str) -> None:
        base = {k: v for k, v in asdict(cfg).items() if k != "norm"}
        super().__init__(ViTConfig(**base), name=name)
        self.cfg = cfg
        replace_layer_norms(self, cfg.norm)


def _ablation_vit(name: str, base: dict, overrides: dict) -> AblationViT:
    return AblationViT(config_from(AblationViTConfig, base, overrides, name), name)


@register_model("vit_cifar_ablation")
def vit_cifar_ablation(**overrides) -> AblationViT:
    """vit_cifar with the experiments' norm switch (layer/batch/none)."""
    return _ablation_vit("vit_cifar_ablation", dict(img_size=32, patch_size=4, in_chans=3, num_classes=10, embed_dim=192,
                                                    depth=6, num_heads=3, mlp_ratio=2.0), overrides)


@register_model("vit_digits_ablation")
def vit_digits_ablation(**overrides) -> AblationViT:
    """vit_digits with the experiments' norm switch (layer/batch/none)."""
    return _ablation_vit("vit_digits_ablation", dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, embed_dim=64,
                                                     depth=4, num_heads=4, mlp_ratio=2.0, drop_rate=0.1), overrides)


# --- the seq2seq Transformer ----------------------------------------------------------------------------

@dataclass
class SparseTransformerConfig(TransformerConfig):
    topk: int | None = None  # every attention layer keeps each query's k largest scores
    window: int | None = None  # self-attention sees keys within this distance (cross-attention sees all)
    random_k: int | None = None  # every attention layer sees k keys per query drawn at random (the baseline of topk)
    local_k: int | None = None  # every attention layer sees each query's k nearest keys (the local baseline of topk)

    def __post_init__(self) -> None:
        super().__post_init__()
        for field in ("topk", "window", "random_k", "local_k"):
            v = getattr(self, field)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"{field} must be a positive whole number or None, got {v!r}")


def nearest_key_mask(allowed: Tensor, k: int, qpos: Tensor) -> Tensor:
    """Each query keeps the k ``allowed`` keys (boolean (..., Tq, Tk)) nearest its position
    ``qpos`` (Tq,); of two keys equally near, the earlier; fewer when fewer are allowed. The local
    counterpart of top-k (Zhao et al.'s Window Attention at a given number of attended positions,
    Table 1): as many keys as top-k keeps, chosen by place instead of by score."""
    d = qpos[:, None] - torch.arange(allowed.shape[-1], device=allowed.device)[None, :]  # (Tq, Tk): query − key
    nearness = -(2 * d.abs() + (d < 0).long()).float()  # distinct per row: 0, −1 (left), −2 (right), −3, ...
    rank = nearness.expand(allowed.shape).masked_fill(~allowed, float("-inf"))
    picked = rank.topk(min(k, allowed.shape[-1]), dim=-1).indices
    return torch.zeros_like(allowed).scatter_(-1, picked, True) & allowed


def attend_nearest(attn: MultiHeadAttention, k: int, query_start=lambda: 0) -> None:
    """Make ``attn`` attend to each query's k nearest keys: a forward pre-hook narrows the mask it
    is called with (padding, and the causal mask when causal) with :func:`nearest_key_mask`.
    Self-attention places query i at its own position (after a key/value cache's past);
    cross-attention places target position ``query_start() + i`` at the same source position
    (the diagonal; ``query_start`` gives a cached decoder step its target position)."""

    def narrow(module: MultiHeadAttention, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        x, context = args[0], (args[1] if len(args) > 1 else kwargs.get("context"))
        mask, cache = kwargs.get("mask"), kwargs.get("cache")
        b, tq = x.shape[:2]
        if context is None:  # self-attention: the cache holds the past keys, the queries come last
            start = len(cache) if cache is not None else 0
            tk, causal = start + tq, module.causal if kwargs.get("causal") is None else kwargs["causal"]
        else:
            start, causal = query_start(), False
            tk = cache.k.shape[-2] if cache is not None and len(cache) else context.shape[1]
        allowed = torch.ones(b, 1, tq, tk, dtype=torch.bool, device=x.device)  # (B, 1, Tq, Tk)
        allowed = allowed if mask is None else allowed & mask
        allowed = allowed & causal_mask(tq, tk, device=x.device) if causal else allowed
        qpos = torch.arange(start, start + tq, device=x.device)
        return args, {**kwargs, "mask": nearest_key_mask(allowed, k, qpos)}

    attn.register_forward_pre_hook(narrow, with_kwargs=True)


def _decoder_step(layer: nn.Module):
    """A function giving the target position of the first query of ``layer``'s current call: the
    length of its self-attention cache (0 without one), recorded by a pre-hook on the layer."""
    state = {"start": 0}

    def record(module, args, kwargs):
        cache = kwargs.get("cache")
        state["start"] = len(cache[0]) if cache is not None else 0

    layer.register_forward_pre_hook(record, with_kwargs=True)
    return lambda: state["start"]


class SparseTransformer(Transformer):
    """:class:`~attnlab.nn.transformer.Transformer` with top-k, random-k, nearest-k or windowed
    attention."""

    def __init__(self, cfg: SparseTransformerConfig) -> None:
        super().__init__(cfg)
        for layer in [*self.encoder.layers, *self.decoder.layers]:
            layer.self_attn.topk, layer.self_attn.window, layer.self_attn.random_k = cfg.topk, cfg.window, cfg.random_k
            if hasattr(layer, "cross_attn"):
                layer.cross_attn.topk, layer.cross_attn.random_k = cfg.topk, cfg.random_k
            if cfg.local_k is not None:
                attend_nearest(layer.self_attn, cfg.local_k)
                if hasattr(layer, "cross_attn"):
                    attend_nearest(layer.cross_attn, cfg.local_k, _decoder_step(layer))


@register_model("transformer_multi30k_sparse")
def transformer_multi30k_sparse(**overrides) -> SparseTransformer:
    """transformer_multi30k with top-k sparse attention (topk), k random keys per query (random_k), each
    query's k nearest keys (local_k; all three in every attention layer) or local self-attention within a
    distance (window)."""
    base = dict(src_vocab_size=8000, tgt_vocab_size=8000, share_embeddings=True, d_model=256, num_heads=8,
                num_encoder_layers=3, num_decoder_layers=3, d_ff=512)
    return SparseTransformer(config_from(SparseTransformerConfig, base, overrides, "transformer_multi30k_sparse"))
