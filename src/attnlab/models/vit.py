"""The Vision Transformer (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words").

The image (B, C_in, H, W) is cut into Gh x Gw patches of P x P pixels, each flattened and
projected to C channels (E); a learned class token is put in front and position embeddings
are added (eq. 1); L pre-LN encoder blocks follow (eq. 2-3); the final LayerNorm of the class
token is the image representation (eq. 4), and a linear head gives the logits.

Shapes: images (B, C_in, H, W); tokens (B, N, C) with N = num_prefix + Gh*Gw;
attention (B, H, N, N). The block is :class:`attnlab.nn.layers.EncoderLayer` (pre-LN, GELU).

Parameter names follow timm's layout (``cls_token``, ``pos_embed.weight``,
``patch_embed.proj``, ``blocks.{i}.norm1/self_attn.qkv/self_attn.proj/norm2/ff.fc1/ff.fc2``,
``norm`` or ``fc_norm``, ``pre_logits.fc``, ``head``), so foreign checkpoints map by renaming.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.errors import ConfigError, ShapeError
from attnlab.models.capabilities import VIT_LAYOUT, ImageInput, default_stats
from attnlab.models.features import check_output_fmt, pick_indices, take_indices, token_maps
from attnlab.models.registry import config_from, register_model
from attnlab.nn.attention import MultiHeadAttention
from attnlab.nn.layers import EncoderLayer
from attnlab.nn.position import (
    LearnedPositionalEmbedding,
    LearnedPositionalEmbedding2D,
    PositionEncoding,
    RelativePositionBias2D,
    RotaryEmbedding2D,
    SinCos2DPositionalEncoding,
    grid_of,
    resample_grid,
    sincos_2d_table,
)

GLOBAL_POOLS = ("token", "avg", "")
POS_EMBEDS = ("learn", "learn2d", "sincos2d", "relative", "rope2d", "none")
PATCH_EMBEDS = ("conv", "linear")
WEIGHT_INITS = ("trunc_normal", "jax")
HEAD_FUSIONS = ("mean", "max", "min")


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass
class ViTConfig:
    """One Vision Transformer. Defaults are ViT-B/16 at 224 pixels with a 1000-class head."""

    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000  # 0: no head (forward returns the pooled features)
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0  # after the embeddings, on each branch output and inside the MLP
    attn_drop_rate: float = 0.0  # on the attention weights
    drop_path_rate: float = 0.0  # stochastic depth; block i gets drop_path_rate * i / (depth - 1)
    class_token: bool = True
    global_pool: str = "token"  # "token": the class token; "avg": mean of the patch tokens; "": none (every token)
    # "learn" (1-D table), "learn2d" (row + column tables), "sincos2d", "relative" (2-D bias in
    # attention), "rope2d" (axial 2-D rotary in attention), "none"
    pos_embed: str = "learn"
    patch_embed: str = "conv"  # "conv" (Conv2d P x P, stride P) or "linear" (LN, Linear, LN on flat patches)
    pre_logits: bool = False  # Linear C->C + tanh before the head (the paper's pre-training head)
    norm_eps: float = 1e-6
    weight_init: str = "trunc_normal"  # "trunc_normal" (timm) or "jax" (the JAX reference)
    dynamic_img_size: bool = False  # accept other image sizes by resampling the position grid
    # Lee et al. 2021, "Vision Transformer for Small-Size Datasets":
    spt: bool = False  # Shifted Patch Tokenization in place of patch_embed
    lsa: bool = False  # Locality Self-Attention: a learned scale per head, no token attends to itself

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field and what it allows."""

        def choose(field: str, allowed: tuple[str, ...]) -> None:
            v = getattr(self, field)
            if v not in allowed:
                raise ConfigError(f"ViTConfig.{field}={v!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")

        def positive(field: str, v, zero_ok: bool = False) -> None:
            if not isinstance(v, (int, float)) or isinstance(v, bool) or (v < 0 if zero_ok else v <= 0):
                raise ConfigError(f"ViTConfig.{field} must be {'>= 0' if zero_ok else '> 0'}, got {v!r}")

        def rate(field: str) -> None:
            v = getattr(self, field)
            if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ConfigError(f"ViTConfig.{field} must be a probability in [0, 1), got {v!r}")

        if isinstance(self.img_size, (list, tuple)):
            if len(self.img_size) != 2:
                raise ConfigError(f"ViTConfig.img_size must be an int or (height, width), got {self.img_size!r}")
            self.img_size = (int(self.img_size[0]), int(self.img_size[1]))
            for v in self.img_size:
                positive("img_size", v)
        else:
            positive("img_size", self.img_size)
        for field in ("patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"ViTConfig.{field} must be an integer, got {v!r}")
            positive(field, v)
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ConfigError(f"ViTConfig.num_classes must be an integer >= 0 (0: no head), got {self.num_classes!r}")
        positive("mlp_ratio", self.mlp_ratio)
        positive("norm_eps", self.norm_eps)
        for field in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            rate(field)
        h, w = _pair(self.img_size)
        if h % self.patch_size or w % self.patch_size:
            raise ConfigError(f"ViTConfig.img_size {h}x{w} is not divisible by patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"ViTConfig.embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        choose("global_pool", GLOBAL_POOLS)
        choose("pos_embed", POS_EMBEDS)
        choose("patch_embed", PATCH_EMBEDS)
        choose("weight_init", WEIGHT_INITS)
        for field in ("spt", "lsa"):
            if not isinstance(getattr(self, field), bool):
                raise ConfigError(f"ViTConfig.{field} must be true or false, got {getattr(self, field)!r}")
        if self.spt and self.patch_embed != "conv":
            raise ConfigError(f"ViTConfig.spt=True is a patch embedding of its own; leave patch_embed at 'conv', "
                              f"not {self.patch_embed!r}")
        if self.spt and self.patch_size < 2:
            raise ConfigError("ViTConfig.spt=True shifts by half a patch and needs patch_size >= 2")
        if self.global_pool == "token" and not self.class_token:
            raise ConfigError("ViTConfig.global_pool='token' needs class_token=True; use global_pool='avg' without a class token")
        if self.pos_embed == "sincos2d" and self.embed_dim % 4:
            raise ConfigError(f"ViTConfig.pos_embed='sincos2d' needs embed_dim divisible by 4, got {self.embed_dim}")
        if self.pos_embed == "rope2d" and (self.embed_dim // self.num_heads) % 4:
            raise ConfigError(f"ViTConfig.pos_embed='rope2d' needs a head dimension (embed_dim / num_heads) divisible by 4, "
                              f"got {self.embed_dim // self.num_heads}")
        if self.dynamic_img_size and self.pos_embed in ("learn2d", "relative", "rope2d"):
            raise ConfigError(f"ViTConfig.dynamic_img_size=True works with pos_embed 'learn', 'sincos2d' or 'none', "
                              f"not {self.pos_embed!r} (its tables are tied to the patch grid)")

    @property
    def grid_size(self) -> tuple[int, int]:
        h, w = _pair(self.img_size)
        return h // self.patch_size, w // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.class_token else 0


class PatchEmbed(nn.Module):
    """x_p E for all patches at once: a P x P convolution with stride P (timm, the paper's code)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, Gh*Gw, C)
        return self.proj(x).flatten(2).transpose(1, 2)


def flatten_patches(x: Tensor, p: int) -> Tensor:
    """Cut images into P x P patches, each flattened as (p1 p2 c).  (B, C_in, H, W) -> (B, Gh*Gw, P*P*C_in)"""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, Gh, Gw, p1, p2, C_in)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


class LinearPatchEmbed(nn.Module):
    """Flatten each patch as (p1 p2 c), then LayerNorm, Linear, LayerNorm (the lucidrains
    ``vit-pytorch`` patch embedding)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.patch_size = patch_size
        patch_dim = patch_size * patch_size * in_chans
        self.norm_in = nn.LayerNorm(patch_dim, eps=eps)
        self.proj = nn.Linear(patch_dim, embed_dim)
        self.norm_out = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, Gh*Gw, C)
        return self.norm_out(self.proj(self.norm_in(flatten_patches(x, self.patch_size))))


class ShiftedPatchEmbed(nn.Module):
    """Shifted Patch Tokenization (Lee et al. 2021, "Vision Transformer for Small-Size Datasets"):
    the image and four copies of it shifted diagonally by half a patch, s = P // 2 (zeros fill
    what is shifted in), concatenated on the channels; then patches flattened as (p1 p2 c),
    LayerNorm, Linear. Copy order: shifted by (+s, +s), (+s, -s), (-s, +s), (-s, -s) pixels
    (down, right), as the authors' code."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.patch_size, self.shift = patch_size, patch_size // 2
        patch_dim = patch_size * patch_size * 5 * in_chans
        self.norm = nn.LayerNorm(patch_dim, eps=eps)
        self.proj = nn.Linear(patch_dim, embed_dim)

    def shifted(self, x: Tensor) -> Tensor:
        """[x, its four diagonal shifts] on the channels.  (B, C_in, H, W) -> (B, 5*C_in, H, W)"""
        s, (h, w) = self.shift, x.shape[-2:]
        pad = F.pad(x, (s, s, s, s))  # (B, C_in, H + 2s, W + 2s)
        copies = [pad[..., dy:dy + h, dx:dx + w] for dy, dx in ((0, 0), (0, 2 * s), (2 * s, 0), (2 * s, 2 * s))]
        return torch.cat([x, *copies], dim=1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, Gh*Gw, C)
        return self.proj(self.norm(flatten_patches(self.shifted(x), self.patch_size)))


class PreLogits(nn.Module):
    """The pre-training head's hidden layer: tanh(W x + b)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.act = nn.Tanh()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.fc(x))


def resample_pos_embed(pos_embed: Tensor, new_grid: int | tuple[int, int], num_prefix: int = 1,
                       old_grid: tuple[int, int] | None = None) -> Tensor:
    """Resample learned position embeddings (1, num_prefix + Gh*Gw, C) to ``new_grid`` with
    bicubic interpolation (e.g. a 224 checkpoint, 14x14, into a 384 model, 24x24). The
    ``num_prefix`` leading rows (class token) are kept exactly. ``old_grid`` defaults to the
    square grid that holds the patch rows. A (num_prefix + Gh*Gw, C) tensor is accepted too."""
    squeeze = pos_embed.dim() == 2
    pe = pos_embed[None] if squeeze else pos_embed
    if pe.dim() != 3 or pe.shape[1] <= num_prefix:
        raise ShapeError(f"position embedding must be (1, num_prefix + Gh*Gw, C), got {tuple(pos_embed.shape)}")
    old = tuple(old_grid) if old_grid is not None else grid_of(pe.shape[1] - num_prefix)
    out = resample_grid(pe, old, _pair(new_grid), num_prefix)
    return out[0] if squeeze else out


# The two functions below look at concrete image shapes. torch.fx.wrap makes each one node of a
# torch.fx.symbolic_trace graph (called with real tensors when the graph runs) instead of
# Python control flow on traced values, which symbolic tracing cannot follow.
@torch.fx.wrap
def _checked_images(x: Tensor, name: str, in_chans: int, img_size: tuple[int, int], patch: int, dynamic: bool) -> Tensor:
    """``x`` itself once it is a valid image batch (B, in_chans, H, W) for the model; ShapeError otherwise."""
    h, w = img_size
    expected = f"(B, {in_chans}, {h}, {w})"
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ShapeError(f"{name} expects images {expected}, got {tuple(x.shape)}")
    if dynamic:
        if x.shape[2] % patch or x.shape[3] % patch:
            raise ShapeError(f"{name}: image size {x.shape[2]}x{x.shape[3]} is not a multiple of the patch size {patch}")
    elif (x.shape[2], x.shape[3]) != (h, w):
        raise ShapeError(f"{name} expects images {expected}, got {tuple(x.shape)}; "
                         f"build it with dynamic_img_size=True to accept other sizes")
    return x


@torch.fx.wrap
def _add_pos_for_images(z: Tensor, x: Tensor, table: Tensor | None, kind: str, grid: tuple[int, int], patch: int,
                        num_prefix: int) -> Tensor:
    """z + E_pos for the patch grid of the images x (dynamic_img_size): the model's own ``table``
    (1, N, C) on its own ``grid``; on another grid the learned table resampled bicubically, or a
    sin-cos table of that grid's size. Under torch.export the grid is symbolic, so there is no
    branch on it: every grid is resampled or recomputed, which gives the own table exactly on the own grid."""
    new = (x.shape[2] // patch, x.shape[3] // patch)
    if table is None:
        return z
    if not torch.compiler.is_exporting() and new == tuple(grid):
        return z + table.to(z.dtype)
    if kind == "learn":
        return z + resample_grid(table, grid, new, num_prefix).to(z.dtype)
    sincos = torch.cat([z.new_zeros(num_prefix, z.shape[-1]), sincos_2d_table(*new, z.shape[-1]).to(z)])
    return z + sincos[None]


def drop_path_schedule(rate: float, depth: int) -> list[float]:
    """Stochastic depth rates rising linearly from 0 (first block) to ``rate`` (last block)."""
    return [rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]


class VisionTransformer(nn.Module):
    """ViT: patch embedding, class token, position embedding, pre-LN encoder blocks, head.

    The timm-like API: :meth:`forward_features`, :meth:`forward_head`, :meth:`forward`,
    :meth:`forward_intermediates`, :meth:`reset_classifier`, :meth:`prune_intermediate_layers`,
    :attr:`feature_info`, :attr:`pretrained_cfg` (timm's contract: tests/test_timm_contract.py);
    for inspection :meth:`get_attention_maps` and :meth:`attention_rollout`.
    """

    layout = VIT_LAYOUT  # foreign ViT checkpoint layouts hold it (attnlab.models.capabilities)

    def __init__(self, cfg: ViTConfig | None = None, name: str = "vit", **overrides) -> None:
        super().__init__()
        cfg = config_from(ViTConfig, asdict(cfg) if cfg is not None else {}, overrides)
        self.cfg, self.name = cfg, name
        c, gh, gw = cfg.embed_dim, *cfg.grid_size
        self.grid_size = (gh, gw)
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.patch_size = cfg.patch_size
        self.num_features = self.embed_dim = c

        if cfg.spt:
            self.patch_embed = ShiftedPatchEmbed(cfg.patch_size, cfg.in_chans, c)
        elif cfg.patch_embed == "conv":
            self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, c)
        else:
            self.patch_embed = LinearPatchEmbed(cfg.patch_size, cfg.in_chans, c, eps=cfg.norm_eps)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c)) if cfg.class_token else None
        n = self.num_prefix_tokens + gh * gw
        # Absolute encodings are added to the tokens (pos_embed); a relative bias or a rotation acts
        # inside every block's attention (rel_pos, shared by the blocks). The unused one is the no-op
        # PositionEncoding(), so the blocks always get a rel_pos.
        self.pos_embed: PositionEncoding = PositionEncoding()
        self.rel_pos: PositionEncoding = PositionEncoding()
        if cfg.pos_embed == "learn":
            self.pos_embed = LearnedPositionalEmbedding(n, c)
        elif cfg.pos_embed == "learn2d":
            self.pos_embed = LearnedPositionalEmbedding2D((gh, gw), c, self.num_prefix_tokens)
        elif cfg.pos_embed == "sincos2d":
            self.pos_embed = SinCos2DPositionalEncoding((gh, gw), c, self.num_prefix_tokens)
        elif cfg.pos_embed == "relative":
            self.rel_pos = RelativePositionBias2D((gh, gw), cfg.num_heads, self.num_prefix_tokens)
        elif cfg.pos_embed == "rope2d":
            self.rel_pos = RotaryEmbedding2D((gh, gw), c // cfg.num_heads, self.num_prefix_tokens)
        self.pos_drop = nn.Dropout(cfg.drop_rate)

        self.blocks = nn.ModuleList(
            EncoderLayer(c, cfg.num_heads, int(c * cfg.mlp_ratio), norm_first=True, activation="gelu",
                         norm_eps=cfg.norm_eps, dropout=cfg.drop_rate, attn_dropout=cfg.attn_drop_rate,
                         qkv_bias=cfg.qkv_bias, drop_path=dp)
            for dp in drop_path_schedule(cfg.drop_path_rate, cfg.depth)
        )
        if cfg.lsa:
            for block in self.blocks:
                block.self_attn = MultiHeadAttention(c, cfg.num_heads, qkv_bias=cfg.qkv_bias, dropout=cfg.attn_drop_rate,
                                                     learned_scale=True, exclude_self=True)
        # timm's layout: "token" pooling (and none) normalises all tokens (norm); "avg" pooling
        # normalises the average (fc_norm).
        final_norm = nn.LayerNorm(c, eps=cfg.norm_eps)
        if cfg.global_pool == "avg":
            self.norm, self.fc_norm = nn.Identity(), final_norm
        else:
            self.norm, self.fc_norm = final_norm, nn.Identity()
        self.pre_logits = PreLogits(c) if cfg.pre_logits else nn.Identity()
        self.head = nn.Linear(c, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights(cfg.weight_init)

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_weights(self, mode: str = "trunc_normal") -> None:
        """Initialise the weights. ``"trunc_normal"`` (timm): linear weights ~ N(0, .02) truncated, biases 0, position
        embedding ~ N(0, .02) truncated, class token ~ N(0, 1e-6), patch conv at PyTorch's default.
        ``"jax"`` (the JAX reference): xavier-uniform linears (q, k, v each as its own C x C matrix),
        MLP biases ~ N(0, 1e-6), other biases 0, LeCun-normal patch projection and pre-logits,
        position embedding ~ N(0, .02), class token 0, zero head."""
        if mode not in WEIGHT_INITS:
            raise ConfigError(f"weight_init={mode!r} is not allowed; choose one of {', '.join(map(repr, WEIGHT_INITS))}")
        jax = mode == "jax"
        if isinstance(self.pos_embed, LearnedPositionalEmbedding):
            (nn.init.normal_ if jax else nn.init.trunc_normal_)(self.pos_embed.weight, std=0.02)
        elif isinstance(self.pos_embed, LearnedPositionalEmbedding2D):
            self.pos_embed.reset_parameters(0.02, nn.init.normal_ if jax else nn.init.trunc_normal_)
        if self.cls_token is not None:
            if jax:
                nn.init.zeros_(self.cls_token)
            else:
                nn.init.normal_(self.cls_token, std=1e-6)
        for name, m in self.named_modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif not jax and isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif jax and isinstance(m, (nn.Linear, nn.Conv2d)):
                if name == "head":
                    nn.init.zeros_(m.weight)
                elif isinstance(m, nn.Conv2d) or name == "pre_logits.fc":
                    _lecun_normal_(m.weight)
                elif name.endswith("self_attn.qkv"):
                    for w in m.weight.chunk(3, dim=0):
                        nn.init.xavier_uniform_(w)
                else:
                    nn.init.xavier_uniform_(m.weight)
                if m.bias is not None and ".ff.fc" in name:
                    nn.init.normal_(m.bias, std=1e-6)
                elif m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names usually excluded from weight decay."""
        return {n for n, _ in self.named_parameters() if n == "cls_token" or n.startswith(("pos_embed.", "rel_pos."))}

    # ------------------------------------------------------------------ the model
    def position_table(self) -> Tensor | None:
        """The absolute position table added to the tokens (1, N, C), or None ("relative", "rope2d", "none")."""
        if isinstance(self.pos_embed, LearnedPositionalEmbedding):
            return self.pos_embed.weight
        if isinstance(self.pos_embed, (LearnedPositionalEmbedding2D, SinCos2DPositionalEncoding)):
            return self.pos_embed.table
        return None

    def embed(self, x: Tensor) -> Tensor:
        """Eq. 1: z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos.  (B, C_in, H, W) -> (B, N, C)"""
        cfg = self.cfg
        x = _checked_images(x, self.name, cfg.in_chans, _pair(cfg.img_size), self.patch_size, cfg.dynamic_img_size)
        z = self.patch_embed(x)  # (B, Gh*Gw, C)
        if self.cls_token is not None:
            z = torch.cat([self.cls_token.expand(z.shape[0], -1, -1), z], dim=1)  # (B, 1 + Gh*Gw, C)
        table = self.position_table()
        if cfg.dynamic_img_size:
            z = _add_pos_for_images(z, x, table, cfg.pos_embed, self.grid_size, self.patch_size, self.num_prefix_tokens)
        elif table is not None:
            z = z + table.to(z.dtype)  # the input check fixed the grid, so N equals the table's length
        return self.pos_drop(z)

    def forward_features(self, x: Tensor) -> Tensor:
        """Eq. 1-4 without the head: (B, C_in, H, W) -> tokens (B, N, C) after the final
        LayerNorm ("token" pooling or none) or before pooling and without norm ("avg" pooling)."""
        z = self.embed(x)  # eq. 1                             (B, N, C)
        for block in self.blocks:  # eq. 2-3: z' = MSA(LN(z)) + z; z = MLP(LN(z')) + z'
            z = block(z, pos=self.rel_pos)  # (B, N, C)
        return self.norm(z)  # eq. 4: LN(z_L)

    def pool(self, z: Tensor) -> Tensor:
        """(B, N, C) -> (B, C): the class token, or the mean of the patch tokens; global_pool=""
        keeps every token, (B, N, C)."""
        if self.cfg.global_pool == "avg":
            return z[:, self.num_prefix_tokens:].mean(dim=1)
        if self.cfg.global_pool == "":
            return z
        return z[:, 0]

    def forward_head(self, z: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool, fc_norm, pre-logits; then the head unless ``pre_logits``. (B, N, C) -> (B, K),
        or (B, N, K) per token without pooling (global_pool="")."""
        y = self.pre_logits(self.fc_norm(self.pool(z)))  # (B, C)
        return y if pre_logits else self.head(y)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> logits (B, num_classes), or pooled features (B, C) without a head."""
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------------ timm's model attributes
    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def global_pool(self) -> str:
        return self.cfg.global_pool

    @property
    def head_hidden_size(self) -> int:
        """The width of ``forward_head(z, pre_logits=True)``."""
        return self.embed_dim

    @property
    def feature_info(self) -> list[dict]:
        """One feature level per block (timm's list): its module, channels and reduction (the patch size)."""
        return [dict(module=f"blocks.{i}", num_chs=self.embed_dim, reduction=self.patch_size)
                for i in range(len(self.blocks))]

    @property
    def pretrained_cfg(self) -> dict:
        """What the model expects of its input and where its first and last layers are, as timm's
        ``pretrained_cfg`` (also ``default_cfg``), read from its config: ``input_size``
        (C_in, H, W), per-channel ``mean`` and ``std`` for pixels in [0, 1], ``interpolation`` and
        ``crop_pct`` (centre crop) for resizing, ``num_classes``, ``first_conv`` and
        ``classifier`` (parameter prefixes). The timm-named configurations state the values of
        timm's default weights for those names; the others ImageNet's for RGB and [0, 1] pixels as
        they are otherwise, timm's default (a trained run records the normalisation of its own
        data)."""
        c = self.cfg
        if self.name in INPUT_STATS:
            m, s, crop_pct = INPUT_STATS[self.name]
            mean, std = (m,) * c.in_chans, (s,) * c.in_chans
        else:
            (mean, std), crop_pct = default_stats(c.in_chans), 1.0
        return {"architecture": self.name, "input_size": (c.in_chans, *_pair(c.img_size)),
                "fixed_input_size": not c.dynamic_img_size, "mean": mean, "std": std,
                "interpolation": "bicubic", "crop_pct": crop_pct, "crop_mode": "center", "num_classes": c.num_classes,
                "pool_size": None, "first_conv": "patch_embed.proj", "classifier": "head"}

    default_cfg = pretrained_cfg

    @property
    def image_input(self) -> ImageInput:
        """The images it classifies (:class:`attnlab.models.capabilities.ImageClassifier`): any
        multiple of the patch size for a ``dynamic_img_size`` model."""
        c = self.cfg
        return ImageInput(c.in_chans, _pair(c.img_size), c.patch_size if c.dynamic_img_size else None)

    # ------------------------------------------------------------------ inspection
    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None, *,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """The outputs of chosen blocks as feature maps, timm's contract.

        ``indices``: None takes every block, an int n the last n, a list those blocks (negative
        ones count from the end); they come back in block order. Each is the block's patch tokens
        (the class token dropped), (B, C, Gh, Gw) for ``output_fmt="NCHW"`` or (B, Gh*Gw, C) for
        ``"NLC"``; ``return_prefix_tokens=True`` makes each a pair (map, prefix tokens
        (B, num_prefix, C)); ``norm=True`` passes the tokens through the final ``norm`` first.
        Returns ``(forward_features(x), maps)``, or the maps alone with ``intermediates_only=True``.
        Blocks after the last one taken run only for the final tokens: not with
        ``intermediates_only``, nor with ``stop_early`` (the final tokens are then those of the
        last block run, normalised).
        """
        check_output_fmt(output_fmt)
        take = take_indices(len(self.blocks), indices)
        stop = max(take) + 1 if stop_early or intermediates_only else len(self.blocks)
        z = self.embed(x)  # (B, N, C)
        outs = []
        for i in range(stop):
            z = self.blocks[i](z, pos=self.rel_pos)
            if i in take:
                outs.append(self.norm(z) if norm else z)
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        maps = token_maps(outs, self.num_prefix_tokens, grid, output_fmt, return_prefix_tokens)
        return maps if intermediates_only else (self.norm(z), maps)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop what the outputs of blocks ``indices`` do not need (timm's contract; a backbone
        keeps only those): the blocks after the last of them, the final ``norm`` if
        ``prune_norm``, the classifier (``fc_norm``, pre-logits, head) if ``prune_head``. Returns
        the blocks' absolute indices; the config's depth (and num_classes) follow."""
        take = take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max(take) + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm, self.pre_logits, self.head = nn.Identity(), nn.Identity(), nn.Identity()
        self.cfg = replace(self.cfg, depth=len(self.blocks), num_classes=0 if prune_head else self.cfg.num_classes)
        return take

    def get_attention_maps(self, x: Tensor, blocks: int | Sequence[int] | None = None, *,
                           return_logits: bool = False) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """Attention weights softmax(QKᵀ/√d + bias) of chosen blocks, each (B, H, N, N).

        ``blocks``: None for all, an int n for the last n, or a list of indices (in that
        order). Only the chosen blocks take the explicit path (``need_weights=True``), the others
        keep the fused kernel. ``return_logits=True`` also runs the head and returns
        ``(logits, maps)``. Attention dropout is not applied to the returned weights.
        """
        take = pick_indices(len(self.blocks), blocks)
        wanted = set(take)
        stop = len(self.blocks) if return_logits else max(take) + 1
        got: dict[int, Tensor] = {}
        z = self.embed(x)
        for i in range(stop):
            if i in wanted:
                z, got[i] = self.blocks[i](z, pos=self.rel_pos, need_weights=True)
            else:
                z = self.blocks[i](z, pos=self.rel_pos)
        maps = [got[i] for i in take]
        return (self.forward_head(self.norm(z)), maps) if return_logits else maps

    def token_grid(self, num_tokens: int) -> tuple[int, int]:
        """The patch grid of a sequence of ``num_tokens`` tokens (prefix included)."""
        n = num_tokens - self.num_prefix_tokens
        if n == self.grid_size[0] * self.grid_size[1]:
            return self.grid_size
        return grid_of(n)

    def attention_rollout(self, maps: Sequence[Tensor], discard_ratio: float = 0.0, head_fusion: str = "mean") -> Tensor:
        """Attention rollout (Abnar & Zuidema 2020) of all blocks' maps (first to last), as a
        map over the patch grid (B, Gh, Gw): the class token's row of the rolled-out matrix,
        or, without a class token, the mean of the patch rows. See :func:`attention_rollout`."""
        r = attention_rollout(maps, discard_ratio, head_fusion, num_prefix=self.num_prefix_tokens)  # (B, N, N)
        k = self.num_prefix_tokens
        row = r[:, 0, k:] if self.cls_token is not None else r[:, k:, k:].mean(dim=1)  # (B, Gh*Gw)
        return row.reshape(row.shape[0], *self.token_grid(r.shape[-1]))

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head with ``num_classes`` outputs (0: none), optionally a new pooling: "token",
        "avg" or "" (none: ``forward`` returns every token). Switching to or from "avg" moves the
        final norm between ``norm`` and ``fc_norm`` (keeping its weights), so that the layout
        always matches ``cfg``."""
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 0:
            raise ConfigError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        if global_pool is not None and global_pool != self.cfg.global_pool:
            new = replace(self.cfg, global_pool=global_pool)  # validates
            if (global_pool == "avg") != (self.cfg.global_pool == "avg"):
                self.norm, self.fc_norm = self.fc_norm, self.norm  # one is the final norm, the other an Identity
            self.cfg = new
        ref = self.cls_token if self.cls_token is not None else next(self.parameters())
        self.head = (nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype)
                     if num_classes > 0 else nn.Identity())
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        self.head.train(self.training)
        self.cfg = replace(self.cfg, num_classes=num_classes)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"name={self.name!r}, img_size={c.img_size}, patch_size={c.patch_size}, grid={self.grid_size}, "
                f"pos_embed={c.pos_embed!r}, global_pool={c.global_pool!r}")


def attention_rollout(maps: Sequence[Tensor], discard_ratio: float = 0.0, head_fusion: str = "mean",
                      num_prefix: int = 1) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): how much each token's final representation
    draws on each input token, following attention through all blocks and residuals.

    ``maps``: the blocks' attention weights (B, H, N, N), first block first. Per block: fuse the
    heads (``head_fusion``: mean, max or min), optionally zero the ``discard_ratio`` smallest
    weights of each row (the prefix columns are always kept), add the identity for the
    residual connection, renormalise the rows to sum to 1; then multiply the blocks:
    R = Â_L ··· Â_1. Returns R (B, N, N), whose rows sum to 1.
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ConfigError(f"head_fusion={head_fusion!r} is not allowed; choose one of {', '.join(map(repr, HEAD_FUSIONS))}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ConfigError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    if len(maps) == 0:
        raise ConfigError("attention_rollout needs the attention maps of at least one block")
    rollout = None
    for a in maps:
        if a.dim() != 4 or a.shape[-1] != a.shape[-2]:
            raise ShapeError(f"attention maps must be (B, H, N, N), got {tuple(a.shape)}")
        a = a.float()
        fused = a.mean(dim=1) if head_fusion == "mean" else (a.amax(dim=1) if head_fusion == "max" else a.amin(dim=1))
        n = fused.shape[-1]
        if discard_ratio > 0:
            patches = fused[..., num_prefix:]  # (B, N, Gh*Gw)
            k = int(patches.shape[-1] * discard_ratio)
            if k > 0:
                low = patches.topk(k, dim=-1, largest=False).indices
                fused = torch.cat([fused[..., :num_prefix], patches.scatter(-1, low, 0.0)], dim=-1)
        eye = torch.eye(n, dtype=fused.dtype, device=fused.device)
        a_hat = fused + eye
        a_hat = a_hat / a_hat.sum(dim=-1, keepdim=True)  # (B, N, N), rows sum to 1
        rollout = a_hat if rollout is None else a_hat @ rollout
    return rollout


def _lecun_normal_(w: Tensor) -> Tensor:
    """Truncated normal (±2σ) with variance 1/fan_in, as jax.nn.initializers.lecun_normal."""
    fan_in = w[0].numel()
    # std of a standard normal truncated to [-2, 2]; dividing by it gives the intended variance
    phi2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
    trunc_std = math.sqrt(1.0 - 4.0 * phi2 / math.erf(2.0 / math.sqrt(2.0)))
    std = math.sqrt(1.0 / fan_in) / trunc_std
    return nn.init.trunc_normal_(w, std=std, a=-2.0 * std, b=2.0 * std)


# ---------------------------------------------------------------------- named configurations
def _vit(name: str, overrides: dict, **base) -> VisionTransformer:
    return VisionTransformer(config_from(ViTConfig, base, overrides, model=name), name=name)


#: name -> (mean, std, crop_pct) of the input images (every channel alike; bicubic resizing): for
#: timm's names the values of timm's default weights for them (see VisionTransformer.pretrained_cfg)
INPUT_STATS: dict[str, tuple[float, float, float]] = {}


def _timm_sizes() -> dict[str, dict]:
    """Name -> config of the ViT paper's models in timm's naming (ImageNet-1k heads)."""
    sizes = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16), "huge": (1280, 32, 16)}
    variants = [("tiny", 16, 224), ("small", 16, 224), ("small", 32, 224), ("base", 16, 224), ("base", 32, 224),
                ("base", 8, 224), ("large", 16, 224), ("large", 32, 224), ("huge", 14, 224),
                ("base", 16, 384), ("large", 16, 384)]
    out = {}
    for size, patch, img in variants:
        dim, depth, heads = sizes[size]
        out[f"vit_{size}_patch{patch}_{img}"] = dict(img_size=img, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads)
    return out


def _register_timm_names() -> None:
    for name, base in _timm_sizes().items():
        def build(_name=name, _base=base, **overrides):
            return _vit(_name, overrides, **_base)

        label = {"tiny": "Ti", "small": "S", "base": "B", "large": "L", "huge": "H"}[name.split("_")[1]]
        build.__qualname__ = build.__name__ = name
        build.__doc__ = (f"ViT-{label}/{base['patch_size']} at {base['img_size']} pixels: {base['embed_dim']} wide, "
                         f"{base['depth']} blocks, {base['num_heads']} heads, a 1000-class head (timm's name and layout).")
        register_model(name)(build)
        INPUT_STATS[name] = (0.5, 0.5, 0.9 if base["img_size"] == 224 else 1.0)


_register_timm_names()


@register_model("vit_mnist")
def vit_mnist(**overrides) -> VisionTransformer:
    """MNIST (28x28, 1 channel): 7x7 patches -> a 4x4 grid, 192 wide, 6 blocks, 3 heads (2.7M
    parameters); an epoch takes minutes on a CPU."""
    return _vit("vit_mnist", overrides, img_size=28, patch_size=7, in_chans=1, num_classes=10,
                embed_dim=192, depth=6, num_heads=3, mlp_ratio=4.0)


@register_model("vit_cifar")
def vit_cifar(**overrides) -> VisionTransformer:
    """CIFAR-10 (32x32 RGB): 4x4 patches -> an 8x8 grid, 192 wide, 6 blocks, 3 heads, 2x MLP."""
    return _vit("vit_cifar", overrides, img_size=32, patch_size=4, in_chans=3, num_classes=10,
                embed_dim=192, depth=6, num_heads=3, mlp_ratio=2.0)


@register_model("vit_digits")
def vit_digits(**overrides) -> VisionTransformer:
    """scikit-learn's 8x8 digits (1 channel): 2x2 patches -> a 4x4 grid, 64 wide, 4 blocks,
    4 heads, 2x MLP, dropout 0.1 (0.14M parameters).

    A recipe that reached 98.4% test accuracy (stratified 75/25 split, seed 0) in about a
    minute on 2 CPU cores: pixels standardised to mean 0, std 1 over the data set (plain
    [0, 1] pixels learn much more slowly), AdamW lr 2e-3, weight decay 0.05, batch 32, two
    warm-up epochs then cosine decay, 40 epochs, no augmentation (1-pixel shifts hurt at
    this patch size)."""
    return _vit("vit_digits", overrides, img_size=8, patch_size=2, in_chans=1, num_classes=10,
                embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, drop_rate=0.1)
