"""Compact Transformers (Hassani et al. 2021, "Escaping the Big Data Paradigm with Compact
Transformers"): three small image Transformers, each one step from the last.

- **ViT-Lite**: ViT at small sizes: P x P patches (a P x P convolution of stride P), a class
  token, learned positions.
- **CVT**: ViT-Lite with Sequence Pooling (:class:`SeqPool`) in place of the class token.
- **CCT**: CVT with a convolutional tokeniser (:class:`ConvTokenizer`) in place of the patches.

Names read ``L/PxC`` as in the paper: L blocks, P the patch or kernel size, C convolutions
(CCT-7/3x2: 7 blocks, two 3x3 convolutions). Sizes: 2 and 4 blocks are 128 wide with 2 heads
and an MLP ratio of 1; 6 and 7 blocks are 256 wide with 4 heads and an MLP ratio of 2.

The block is the one of the authors' code (SHI-Labs/Compact-Transformers), which produced the
paper's numbers. Its second LayerNorm sits on the residual stream, and the MLP branch adds onto
the normalised stream (the paper's text describes ViT's pre-LN block; the parameters are the same):

    z = z + DropPath(MSA(LN(z)));   z = LN'(z);   z = z + DropPath(MLP(z))

After the blocks: a LayerNorm over all tokens, then SeqPool (or the class token), then the head.
The defaults are the authors': no dropout, attention dropout 0.1, stochastic depth up to 0.1, no
bias in Q, K, V, learned positions initialised with std 0.2.

Shapes: images (B, C_in, H, W); tokens (B, N, C) with N = num_prefix + Gh*Gw; attention (B, H, N, N).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError, ShapeError
from attnlab.models.capabilities import ImageInput
from attnlab.models.features import check_output_fmt, take_indices, token_maps
from attnlab.models.registry import config_from, register_model
from attnlab.models.vit import PatchEmbed, drop_path_schedule
from attnlab.nn.attention import MultiHeadAttention
from attnlab.nn.layers import DropPath, FeedForward
from attnlab.nn.position import LearnedPositionalEmbedding, PositionEncoding, SinusoidalPositionalEncoding

TOKENIZERS = ("conv", "patch")
POS_EMBEDS = ("learn", "sine", "none")


@dataclass
class CompactConfig:
    """One compact Transformer. Defaults are CCT-7/3x2 for CIFAR-10 (32x32 RGB, 10 classes)."""

    img_size: int | tuple[int, int] = 32
    in_chans: int = 3
    num_classes: int = 10  # 0: no head (forward returns the pooled features)
    embed_dim: int = 256
    depth: int = 7
    num_heads: int = 4
    mlp_ratio: float = 2.0
    tokenizer: str = "conv"  # "conv": CCT's convolutions; "patch": P x P patches (ViT-Lite, CVT)
    kernel_size: int = 3  # the convolutions' kernel, or the patch size P
    conv_layers: int = 2  # "conv": how many [conv, ReLU, max-pool]
    conv_stride: int = 1
    conv_padding: int = 1
    conv_width: int = 64  # "conv": channels between two convolutions
    pool_size: int = 3  # "conv": the max-pool after each convolution
    pool_stride: int = 2
    pool_padding: int = 1
    seq_pool: bool = True  # SeqPool; False: a class token (ViT-Lite)
    pos_embed: str = "learn"  # "learn" (a learned table), "sine" (fixed 1-D sinusoids), "none"
    drop_rate: float = 0.0  # after the embeddings, on each branch output and inside the MLP
    attn_drop_rate: float = 0.1  # on the attention weights
    drop_path_rate: float = 0.1  # stochastic depth; block i gets drop_path_rate * i / (depth - 1)
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field and what it allows."""
        if isinstance(self.img_size, (list, tuple)):
            if len(self.img_size) != 2:
                raise ConfigError(f"CompactConfig.img_size must be an int or (height, width), got {self.img_size!r}")
            self.img_size = (int(self.img_size[0]), int(self.img_size[1]))
        ints = {"in_chans": 1, "embed_dim": 1, "depth": 1, "num_heads": 1, "kernel_size": 1, "conv_layers": 1,
                "conv_stride": 1, "conv_padding": 0, "conv_width": 1, "pool_size": 1, "pool_stride": 1,
                "pool_padding": 0, "num_classes": 0}
        for field, low in ints.items():
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ConfigError(f"CompactConfig.{field} must be an integer >= {low}, got {v!r}")
        if min(self.image_hw) < 1:
            raise ConfigError(f"CompactConfig.img_size must be positive, got {self.img_size!r}")
        if not isinstance(self.mlp_ratio, (int, float)) or self.mlp_ratio <= 0:
            raise ConfigError(f"CompactConfig.mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        for field in ("drop_rate", "attn_drop_rate", "drop_path_rate"):
            v = getattr(self, field)
            if not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ConfigError(f"CompactConfig.{field} must be a probability in [0, 1), got {v!r}")
        if self.pos_embed is None:  # what the command line makes of --model-arg pos_embed=none
            self.pos_embed = "none"
        for field, allowed in (("tokenizer", TOKENIZERS), ("pos_embed", POS_EMBEDS)):
            if getattr(self, field) not in allowed:
                raise ConfigError(f"CompactConfig.{field}={getattr(self, field)!r} is not allowed; "
                                  f"choose one of {', '.join(map(repr, allowed))}")
        if not isinstance(self.seq_pool, bool):
            raise ConfigError(f"CompactConfig.seq_pool must be true or false, got {self.seq_pool!r}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"CompactConfig.embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.pos_embed == "sine" and self.embed_dim % 2:
            raise ConfigError(f"CompactConfig.pos_embed='sine' needs an even embed_dim, got {self.embed_dim}")
        if self.tokenizer == "patch" and any(n % self.kernel_size for n in self.image_hw):
            h, w = self.image_hw
            raise ConfigError(f"CompactConfig.img_size {h}x{w} is not divisible by the patch size kernel_size={self.kernel_size}")
        if self.tokenizer == "conv" and 2 * self.pool_padding > self.pool_size:
            raise ConfigError(f"CompactConfig.pool_padding {self.pool_padding} must be at most half of "
                              f"pool_size {self.pool_size}")
        if min(self.grid_size) < 1:
            raise ConfigError(f"CompactConfig: a {self.image_hw[0]}x{self.image_hw[1]} image leaves no token after "
                              f"{self.conv_layers} convolution(s) and pooling; use fewer conv_layers or a larger img_size")

    @property
    def image_hw(self) -> tuple[int, int]:
        s = self.img_size
        return (s, s) if isinstance(s, int) else (s[0], s[1])

    @property
    def grid_size(self) -> tuple[int, int]:
        """The tokeniser's output grid (Gh, Gw): one token per cell."""
        if self.tokenizer == "patch":
            return self.image_hw[0] // self.kernel_size, self.image_hw[1] // self.kernel_size

        def side(n: int) -> int:
            for _ in range(self.conv_layers):
                n = (n + 2 * self.conv_padding - self.kernel_size) // self.conv_stride + 1
                n = (n + 2 * self.pool_padding - self.pool_size) // self.pool_stride + 1
            return n

        return side(self.image_hw[0]), side(self.image_hw[1])

    @property
    def num_prefix_tokens(self) -> int:
        return 0 if self.seq_pool else 1


class ConvTokenizer(nn.Module):
    """CCT's tokeniser: ``conv_layers`` times [k x k convolution without bias, ReLU, max-pool];
    the last convolution has ``embed_dim`` channels, the others ``conv_width``; each pixel of the
    last feature map is a token.  (B, C_in, H, W) -> (B, Gh*Gw, C)"""

    def __init__(self, cfg: CompactConfig) -> None:
        super().__init__()
        chans = [cfg.in_chans] + [cfg.conv_width] * (cfg.conv_layers - 1) + [cfg.embed_dim]
        self.layers = nn.Sequential(*(
            nn.Sequential(
                nn.Conv2d(c_in, c_out, cfg.kernel_size, cfg.conv_stride, cfg.conv_padding, bias=False),
                nn.ReLU(),
                nn.MaxPool2d(cfg.pool_size, cfg.pool_stride, cfg.pool_padding),
            )
            for c_in, c_out in zip(chans, chans[1:])
        ))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x).flatten(2).transpose(1, 2)  # (B, C, Gh, Gw) -> (B, Gh*Gw, C)


class SeqPool(nn.Module):
    """Sequence Pooling: an importance score per token, g(x_L) = x_L w + b; the pooled vector is
    the softmax-weighted sum of the tokens, z = softmax(g(x_L)ᵀ) x_L.  (B, N, C) -> (B, C)"""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def weights(self, z: Tensor) -> Tensor:
        """The pooling weights over the sequence (B, N), each row summing to 1."""
        return self.score(z).squeeze(-1).softmax(dim=-1)

    def forward(self, z: Tensor) -> Tensor:
        return (self.weights(z)[:, None, :] @ z).squeeze(1)  # (B, 1, N) @ (B, N, C) -> (B, C)


class CompactBlock(nn.Module):
    """The authors' encoder block (see the module docstring):
    z = z + DropPath(MSA(LN(z))); z = LN'(z); z = z + DropPath(MLP(z)).  (B, N, C) -> (B, N, C)"""

    def __init__(self, dim: int, num_heads: int, hidden: int, drop: float, attn_drop: float, drop_path: float,
                 eps: float) -> None:
        super().__init__()
        self.pre_norm = nn.LayerNorm(dim, eps=eps)
        self.self_attn = MultiHeadAttention(dim, num_heads, qkv_bias=False, dropout=attn_drop)
        self.drop1 = nn.Dropout(drop)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.ff = FeedForward(dim, hidden, "gelu", drop)
        self.drop2 = nn.Dropout(drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, z: Tensor) -> Tensor:
        z = z + self.drop_path(self.drop1(self.self_attn(self.pre_norm(z))))
        z = self.norm1(z)
        return z + self.drop_path(self.drop2(self.ff(z)))


def _check_images(x: Tensor, name: str, in_chans: int, hw: tuple[int, int]) -> None:
    if x.dim() != 4 or x.shape[1] != in_chans or tuple(x.shape[2:]) != hw:
        raise ShapeError(f"{name} expects images (B, {in_chans}, {hw[0]}, {hw[1]}), got {tuple(x.shape)}")


class CompactTransformer(nn.Module):
    """ViT-Lite, CVT or CCT (by its config): tokeniser, [class token], positions, blocks, final
    LayerNorm, SeqPool or class token, head. :meth:`forward_features`, :meth:`forward_head`,
    :meth:`forward`, :meth:`forward_intermediates` and :meth:`prune_intermediate_layers` (timm's
    contract, so ``create_model(name, features_only=True)`` is a backbone); attention maps through
    :class:`attnlab.viz.record.AttentionRecorder` (the blocks use :class:`MultiHeadAttention`)."""

    def __init__(self, cfg: CompactConfig | None = None, name: str = "cct", **overrides) -> None:
        super().__init__()
        cfg = config_from(CompactConfig, asdict(cfg) if cfg is not None else {}, overrides)
        self.cfg, self.name = cfg, name
        c = cfg.embed_dim
        self.num_features = self.embed_dim = c
        self.grid_size = cfg.grid_size
        self.num_prefix_tokens = cfg.num_prefix_tokens
        self.tokenizer = ConvTokenizer(cfg) if cfg.tokenizer == "conv" else PatchEmbed(cfg.kernel_size, cfg.in_chans, c)
        self.cls_token = None if cfg.seq_pool else nn.Parameter(torch.zeros(1, 1, c))
        n = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        self.pos_embed: PositionEncoding = PositionEncoding()
        if cfg.pos_embed == "learn":
            self.pos_embed = LearnedPositionalEmbedding(n, c, std=0.2)
        elif cfg.pos_embed == "sine":
            self.pos_embed = SinusoidalPositionalEncoding(c, max_len=n)
        self.pos_drop = nn.Dropout(cfg.drop_rate)
        self.blocks = nn.ModuleList(
            CompactBlock(c, cfg.num_heads, int(c * cfg.mlp_ratio), cfg.drop_rate, cfg.attn_drop_rate, dp, cfg.norm_eps)
            for dp in drop_path_schedule(cfg.drop_path_rate, cfg.depth)
        )
        self.norm = nn.LayerNorm(c, eps=cfg.norm_eps)
        self.seq_pool = SeqPool(c) if cfg.seq_pool else None
        self.head = nn.Linear(c, cfg.num_classes) if cfg.num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The authors' initialisation: linear weights ~ N(0, .02) truncated, biases 0; LayerNorms
        1 and 0; convolution weights Kaiming-normal (their biases at PyTorch's default); learned
        positions ~ N(0, .2) truncated (set when built); class token 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def embed(self, x: Tensor) -> Tensor:
        """Tokens, class token in front (ViT-Lite), positions added.  (B, C_in, H, W) -> (B, N, C)"""
        _check_images(x, self.name, self.cfg.in_chans, self.cfg.image_hw)
        z = self.tokenizer(x)  # (B, Gh*Gw, C)
        if self.cls_token is not None:
            z = torch.cat([self.cls_token.expand(z.shape[0], -1, -1), z], dim=1)  # (B, 1 + Gh*Gw, C)
        return self.pos_drop(self.pos_embed.add(z))

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> all tokens after the blocks and the final LayerNorm (B, N, C)."""
        z = self.embed(x)
        for block in self.blocks:
            z = block(z)
        return self.norm(z)

    def pool(self, z: Tensor) -> Tensor:
        """(B, N, C) -> (B, C): SeqPool, or the class token."""
        return self.seq_pool(z) if self.seq_pool is not None else z[:, 0]

    def forward_head(self, z: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool, then the head unless ``pre_logits``.  (B, N, C) -> (B, K)"""
        y = self.pool(z)
        return y if pre_logits else self.head(y)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) -> logits (B, num_classes), or pooled features (B, C) without a head."""
        return self.forward_head(self.forward_features(x))

    @property
    def image_input(self) -> ImageInput:
        """The images it classifies (:class:`attnlab.models.capabilities.ImageClassifier`)."""
        return ImageInput(self.cfg.in_chans, self.cfg.image_hw)

    # ------------------------------------------------------------------ timm's backbone contract
    @property
    def feature_info(self) -> list[dict]:
        """One feature level per block (timm's list): its module, channels and reduction (image
        pixels per token along a side: 4 for CCT's two convolutions at 32x32, the patch size P)."""
        reduction = self.cfg.image_hw[0] // self.grid_size[0]
        return [dict(module=f"blocks.{i}", num_chs=self.embed_dim, reduction=reduction) for i in range(len(self.blocks))]

    def forward_intermediates(self, x: Tensor, indices: int | Sequence[int] | None = None, *,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """The outputs of chosen blocks as feature maps over the token grid, timm's contract (as
        :meth:`attnlab.models.vit.VisionTransformer.forward_intermediates`).

        ``indices``: None takes every block, an int n the last n, a list those blocks (negative
        ones count from the end); they come back in block order. Each is the block's grid tokens
        (ViT-Lite's class token dropped), (B, C, Gh, Gw) for ``output_fmt="NCHW"`` or (B, Gh*Gw, C)
        for ``"NLC"``; ``return_prefix_tokens=True`` makes each a pair (map, prefix tokens
        (B, num_prefix, C)); ``norm=True`` passes the tokens through the final ``norm`` first.
        Returns ``(forward_features(x), maps)``, or the maps alone with ``intermediates_only=True``;
        with either of ``intermediates_only`` and ``stop_early`` no block after the last one taken runs.
        """
        check_output_fmt(output_fmt)
        take = take_indices(len(self.blocks), indices)
        stop = max(take) + 1 if stop_early or intermediates_only else len(self.blocks)
        z = self.embed(x)  # (B, N, C)
        outs = []
        for i in range(stop):
            z = self.blocks[i](z)
            if i in take:
                outs.append(self.norm(z) if norm else z)
        maps = token_maps(outs, self.num_prefix_tokens, self.grid_size, output_fmt, return_prefix_tokens)
        return maps if intermediates_only else (self.norm(z), maps)

    def prune_intermediate_layers(self, indices: int | Sequence[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop what the outputs of blocks ``indices`` do not need (timm's contract): the blocks
        after the last of them, the final ``norm`` if ``prune_norm``, the head if ``prune_head``
        (the pooling stays). Returns the blocks' absolute indices; the config's depth (and
        num_classes) follow."""
        take = take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max(take) + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.head = nn.Identity()
        self.cfg = replace(self.cfg, depth=len(self.blocks), num_classes=0 if prune_head else self.cfg.num_classes)
        return take

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"name={self.name!r}, img_size={c.img_size}, tokenizer={c.tokenizer!r}, grid={self.grid_size}, "
                f"pos_embed={c.pos_embed!r}, seq_pool={c.seq_pool}")


# ---------------------------------------------------------------------- named configurations
SIZES = {  # blocks -> (embed_dim, num_heads, mlp_ratio), the paper's and the authors' code
    2: (128, 2, 1.0), 4: (128, 2, 1.0), 6: (256, 4, 2.0), 7: (256, 4, 2.0),
}


def _register(name: str, doc: str, depth: int, **base) -> None:
    dim, heads, ratio = SIZES[depth]
    base = dict(embed_dim=dim, depth=depth, num_heads=heads, mlp_ratio=ratio, **base)

    def build(**overrides) -> CompactTransformer:
        return CompactTransformer(config_from(CompactConfig, base, overrides, model=name), name=name)

    build.__qualname__ = build.__name__ = name
    build.__doc__ = doc
    register_model(name)(build)


def _register_cifar() -> None:
    """The CIFAR-10 models of the paper's table (32x32 RGB, 10 classes, learned positions), with
    the authors' parameter counts (SHI-Labs/Compact-Transformers, examples/README.md). Their
    3.168M for CCT-6/3x1 is the count without its 256 x 256 learned position table (with
    pos_embed="sine" or "none"); with the table it has 3.234M."""
    for depth, convs, params in ((2, 2, "0.284M"), (4, 2, "0.482M"), (6, 1, "3.234M"), (6, 2, "3.327M"),
                                 (7, 1, "3.760M"), (7, 2, "3.853M")):
        _register(f"cct_{depth}_3x{convs}_32",
                  f"CCT-{depth}/3x{convs} for CIFAR-10: {convs} x [3x3 conv, ReLU, 3x3 max-pool of stride 2] tokens, "
                  f"{depth} blocks, SeqPool ({params} parameters).",
                  depth, tokenizer="conv", kernel_size=3, conv_layers=convs, conv_stride=1, conv_padding=1)
    for depth, params in ((6, "3.190M"), (7, "3.717M")):
        _register(f"cvt_{depth}_4_32", f"CVT-{depth}/4 for CIFAR-10: 4x4 patches, {depth} blocks, SeqPool ({params} parameters).",
                  depth, tokenizer="patch", kernel_size=4)
    for depth, params in ((6, "3.191M"), (7, "3.717M")):
        _register(f"vitlite_{depth}_4_32",
                  f"ViT-Lite-{depth}/4 for CIFAR-10: 4x4 patches, a class token, {depth} blocks ({params} parameters).",
                  depth, tokenizer="patch", kernel_size=4, seq_pool=False)


_register_cifar()
