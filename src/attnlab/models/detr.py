"""DETR (Carion et al. 2020, "End-to-End Object Detection with Transformers").

A CNN backbone gives a feature map (B, C_b, h, w); a 1x1 conv projects it to d_model and it is
flattened to T = h*w tokens (B, T, C). A post-LN Transformer encoder runs over them with a 2-D
sine position encoding; a decoder turns N learned object queries into N detections in
parallel (no causal mask); each is a class (K classes + "no object") and a box
(cx, cy, w, h) in [0, 1] from a 3-layer MLP with a sigmoid. Training matches the N detections
to the objects one to one (:mod:`attnlab.detect`).

As in the paper (§3.2, Fig. 10), positions are not added to the input once but to the queries
and keys of every attention layer, and never to the values:

    encoder:         Attn(Q = x + p, K = x + p, V = x)
    decoder self:    Attn(Q = y + q, K = y + q, V = y)           q: the learned query embedding
    decoder cross:   Attn(Q = y + q, K = m + p, V = m)           m: the encoder memory

:class:`attnlab.nn.MultiHeadAttention` takes the three inputs as they are, so the layers here
are thin subclasses of attnlab's :class:`~attnlab.nn.layers.EncoderLayer` /
:class:`~attnlab.nn.layers.DecoderLayer` (same modules and names: ``self_attn.qkv``,
``self_attn.proj``, ``ff.fc1``...) whose forward adds the positions. Their attention weights are
recorded as every model's are, by :class:`attnlab.viz.record.AttentionRecorder`
(``encoder.{i}.self_attn``: (B, H, T, T); ``decoder.{i}.cross_attn``: (B, H, N, T)).

Two switches of the config turn this DETR into its small-data successors (off by default):

- ``cross_attention="deformable"`` (Deformable DETR, Zhu et al. 2021, single level; the local
  cross-attention of DE-DETR): each query reads ``deformable_points`` values per head around a
  reference point p = sigmoid(Linear(q)) of the feature map instead of all T cells
  (:class:`attnlab.nn.deformable.MultiScaleDeformableAttention`, values m without positions),
  and predicts its box relative to it: b = sigmoid(MLP(y) + [logit(p), 0, 0]);
- ``denoising=True`` (DN-DETR, Li et al. 2022): in training, noised copies of the ground truth
  enter the decoder in front of the N matching queries, masked from them, and are trained to
  reconstruct their objects (:mod:`attnlab.models.detr_denoising`); the matching queries'
  content is DN-DETR's [E(K), 0] instead of zeros. With both switches (DN-Deformable-DETR) a
  denoising query's reference point is the centre of its noised box: DN's noised anchor, as
  Deformable DETR's 2-D point.

Shapes: images (B, C_in, H, W); tokens (B, T, C); queries (B, N, C); logits (B, N, K+1);
boxes (B, N, 4); reference points (B, N, 2) as (x, y) in [0, 1] of the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.errors import ConfigError, ShapeError
from attnlab.models.capabilities import DETR_LAYOUT
from attnlab.models.detr_denoising import DenoisingBatch, DenoisingQueries, denoising_attention_mask, split_outputs
from attnlab.models.registry import config_from, register_model
from attnlab.models.resnet import ResNet50, SmallCNN
from attnlab.nn.deformable import MultiScaleDeformableAttention
from attnlab.nn.layers import DecoderLayer, EncoderLayer

BACKBONES = ("resnet50", "small")
CROSS_ATTENTIONS = ("dense", "deformable")


@dataclass
class DETRConfig:
    """One DETR. Defaults are the paper's DETR (ResNet-50, Table 1) with COCO's 91 class ids."""

    num_classes: int = 91  # K object classes; class index K is "no object"
    backbone: str = "resnet50"  # "resnet50" (frozen BN, torchvision names) or "small" (SmallCNN)
    in_chans: int = 3
    cnn_widths: tuple[int, ...] = (32, 64, 128)  # SmallCNN only: one stage per width, stride 2 each
    d_model: int = 256
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1
    activation: str = "relu"
    num_queries: int = 100
    aux_loss: bool = True  # also predict after every decoder layer (the auxiliary decoding losses)
    norm_eps: float = 1e-5
    img_size: int = 800  # the size images are resized to by predict/viz (the model takes any size)
    temperature: float = 10000.0  # of the sine position encoding
    cross_attention: str = "dense"  # the decoder's: "dense" (DETR) or "deformable" (Deformable DETR, one level)
    deformable_points: int = 4  # deformable: values each head reads per query (the paper's 4)
    denoising: bool = False  # owns DN-DETR's denoising queries (trained with them: attnlab train detect --dn-groups)

    @property
    def stride(self) -> int:
        """The backbone's stride: a padded batch's size is a multiple of it."""
        return 32 if self.backbone == "resnet50" else 2 ** len(self.cnn_widths)

    def __post_init__(self) -> None:
        self.cnn_widths = tuple(int(w) for w in self.cnn_widths)
        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.cross_attention not in CROSS_ATTENTIONS:
            raise ConfigError(f"unknown cross_attention {self.cross_attention!r}; choose one of {', '.join(CROSS_ATTENTIONS)}")
        if self.d_model % self.num_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        if self.d_model % 4:
            raise ConfigError(f"the 2-D sine position encoding needs d_model divisible by 4, got {self.d_model}")
        if self.backbone == "small" and (not self.cnn_widths or any(w % 8 for w in self.cnn_widths)):
            raise ConfigError(f"cnn_widths {list(self.cnn_widths)}: give one width per stage, each a multiple of 8")
        for f in ("num_classes", "num_queries", "num_encoder_layers", "num_decoder_layers", "img_size", "deformable_points"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{f} must be >= 1, got {getattr(self, f)}")


class DetrEncoderLayer(EncoderLayer):
    """Post-LN encoder layer, positions on queries and keys:
    x = LN(x + Attn(x + p, x + p, x));  x = LN(x + FFN(x))."""

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor | None = None) -> Tensor:
        qk = x + pos
        x = self.norm1(x + self.drop1(self.self_attn(qk, qk, x, mask=mask)))
        return self.norm2(x + self.drop2(self.ff(x)))


class DetrDecoderLayer(DecoderLayer):
    """Post-LN decoder layer over all queries at once (no causal mask):
    y = LN(y + Attn(y + q, y + q, y));  y = LN(y + Attn(y + q, m + p, m));  y = LN(y + FFN(y)).

    ``self_mask`` (Tq, Tq) bool, True = may attend (query denoising's groups); ``memory_mask``
    (B, 1, 1, T), True = a real cell; ``reference`` and ``feature_size`` serve the deformable
    layer only."""

    def forward(self, y: Tensor, memory: Tensor, query_pos: Tensor, memory_pos: Tensor,
                memory_mask: Tensor | None = None, self_mask: Tensor | None = None,
                reference: Tensor | None = None, feature_size: tuple[int, int] | None = None) -> Tensor:
        qk = y + query_pos
        y = self.norm1(y + self.drop1(self.self_attn(qk, qk, y, mask=self_mask, causal=False)))  # no causal mask
        y = self.norm2(y + self.drop2(self.cross(y + query_pos, memory, memory_pos, memory_mask, reference, feature_size)))
        return self.norm3(y + self.drop3(self.ff(y)))

    def cross(self, query: Tensor, memory: Tensor, memory_pos: Tensor, memory_mask: Tensor | None,
              reference: Tensor | None, feature_size: tuple[int, int] | None) -> Tensor:
        """DETR's cross-attention over every cell: Attn(y + q, m + p, m)."""
        return self.cross_attn(query, memory + memory_pos, memory, mask=memory_mask)


class DeformableDecoderLayer(DetrDecoderLayer):
    """The decoder layer with Deformable DETR's cross-attention on one level: each query reads
    ``n_points`` values per head around its reference point, at learned offsets (eq. 2),
    MSDeformAttn(y + q, p, m): the values are the memory without positions, as there."""

    def __init__(self, d_model: int, num_heads: int, d_ff: int, n_points: int, **options) -> None:
        super().__init__(d_model, num_heads, d_ff, **options)
        self.cross_attn = MultiScaleDeformableAttention(d_model, n_levels=1, n_heads=num_heads, n_points=n_points)

    def cross(self, query: Tensor, memory: Tensor, memory_pos: Tensor, memory_mask: Tensor | None,
              reference: Tensor | None, feature_size: tuple[int, int] | None) -> Tensor:
        valid = None if memory_mask is None else memory_mask[:, 0, 0]  # (B, T) True = a real cell
        return self.cross_attn(query, reference[:, :, None, :], memory, [feature_size], mask=valid)  # (B, Tq, C)


def sine_position_2d(valid: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """DETR's PositionEmbeddingSine with normalize=True: valid (B, h, w) bool -> (B, h*w, dim).

    Row and column of each valid cell are counted from 1 (cumulative sums, so padding does not
    shift them), scaled to (0, 2π]; each gets dim/2 channels of interleaved sin/cos at
    frequencies temperature^(2⌊i/2⌋/(dim/2)); rows first, then columns.
    """
    npf = dim // 2
    m = valid.to(torch.float32)
    y, x = m.cumsum(1), m.cumsum(2)
    eps, scale = 1e-6, 2 * math.pi
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    dim_t = temperature ** (2 * torch.div(torch.arange(npf, device=valid.device), 2, rounding_mode="floor").float() / npf)
    px, py = x[..., None] / dim_t, y[..., None] / dim_t  # (B, h, w, npf)
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((py, px), dim=3).flatten(1, 2)  # (B, h*w, dim)


class BoxMLP(nn.Module):
    """The box head: Linear-ReLU-Linear-ReLU-Linear (3 layers), then a sigmoid outside."""

    def __init__(self, dim: int, hidden: int, out: int = 4, num_layers: int = 3) -> None:
        super().__init__()
        sizes = [dim] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:] + [out]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DETR(nn.Module):
    """The detector. ``forward(images, mask, denoising=None)`` returns a dict:

    - ``logits`` (B, N, K+1), ``boxes`` (B, N, 4) as (cx, cy, w, h) in [0, 1] of the image;
    - ``aux``: the same for decoder layers 1..L-1 (a list, when ``cfg.aux_loss``);
    - ``feature_size``: (h, w) of the feature map, whose T = h*w cells are the keys of every
      attention recorded by :class:`attnlab.viz.record.AttentionRecorder` (row-major; the
      deformable cross-attention is recorded as the equivalent dense map over them);
    - ``dn``: with ``denoising`` (a :class:`~attnlab.models.detr_denoising.DenoisingBatch`,
      training only; ``cfg.denoising``), the outputs of the denoising queries, as ``logits``,
      ``boxes`` and ``aux`` of D = G·M queries. The matching part is what the model gives
      without them.

    ``mask`` (B, H, W) bool, True = a real pixel, False = padding (a batch of images of
    different sizes padded to one, :func:`attnlab.detect.batching.pad_batch`); None: every pixel
    is real. With the small backbone a padded image gives the unpadded one's detections (the
    padded size a multiple of the backbone's stride); ResNet-50 lets the padding into its border
    features, as DETR and Hugging Face do (:meth:`attnlab.models.resnet.ResNet50.forward`).
    """

    # Linear layers int8 quantization leaves in fp32 (attnlab.export.int8): with positions on the
    # queries and keys only, every attention slices its fused qkv weight into its Q, K and V rows.
    int8_keep_fp32 = ("self_attn.qkv", "cross_attn.qkv")
    layout = DETR_LAYOUT  # attnlab.models.capabilities: the Hugging Face and original DETR checkpoint layouts

    def __init__(self, cfg: DETRConfig, name: str | None = None) -> None:
        super().__init__()
        self.cfg, self.name = cfg, name
        d = cfg.d_model
        self.backbone = ResNet50(cfg.in_chans) if cfg.backbone == "resnet50" else SmallCNN(cfg.in_chans, cfg.cnn_widths)
        self.input_proj = nn.Conv2d(self.backbone.out_channels, d, 1)
        self.query_embed = nn.Embedding(cfg.num_queries, d)
        kw = dict(dropout=cfg.dropout, activation=cfg.activation, norm_first=False, norm_eps=cfg.norm_eps)
        self.encoder = nn.ModuleList(DetrEncoderLayer(d, cfg.num_heads, cfg.d_ff, **kw) for _ in range(cfg.num_encoder_layers))
        deformable = cfg.cross_attention == "deformable"
        self.decoder = nn.ModuleList(
            DeformableDecoderLayer(d, cfg.num_heads, cfg.d_ff, cfg.deformable_points, **kw) if deformable
            else DetrDecoderLayer(d, cfg.num_heads, cfg.d_ff, **kw) for _ in range(cfg.num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.class_embed = nn.Linear(d, cfg.num_classes + 1)
        self.bbox_embed = BoxMLP(d, d, 4, 3)
        self.reference_points = nn.Linear(d, 2) if deformable else None  # q -> p = sigmoid(Linear(q))
        self.dn_queries = DenoisingQueries(cfg.num_classes, d, cfg.temperature) if cfg.denoising else None
        for p in [*self.encoder.parameters(), *self.decoder.parameters()]:
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)  # as DETR's Transformer._reset_parameters
        if deformable:  # as Deformable DETR: the attention's own init, boxes start at their reference points
            for layer in self.decoder:
                layer.cross_attn.reset_parameters()
            nn.init.xavier_uniform_(self.reference_points.weight)
            nn.init.zeros_(self.reference_points.bias)
            last = self.bbox_embed.layers[-1]
            nn.init.zeros_(last.weight)
            with torch.no_grad():
                last.bias.copy_(torch.tensor([0.0, 0.0, -2.0, -2.0]))

    @property
    def object_queries(self) -> Tensor:
        """The N learned object queries (N, C), a :class:`~attnlab.models.capabilities.QueryDetector`'s."""
        return self.query_embed.weight

    def encode(self, images: Tensor, mask: Tensor | None = None):
        """images (B, C_in, H, W) -> memory (B, T, C), positions (B, T, C), key mask
        (B, 1, 1, T) or None, (h, w)."""
        if images.dim() != 4 or images.shape[1] != self.cfg.in_chans:
            raise ShapeError(f"{self.name or 'DETR'} takes images (B, {self.cfg.in_chans}, H, W), got {tuple(images.shape)}")
        f = self.input_proj(self.backbone(images, mask))  # (B, C, h, w)
        b, _, h, w = f.shape
        if mask is None:
            valid = torch.ones(b, h, w, dtype=torch.bool, device=f.device)
            key_mask = None
        else:
            valid = F.interpolate(mask[None].float(), size=(h, w))[0].bool()  # nearest, as DETR
            key_mask = valid.flatten(1)[:, None, None, :]
        pos = sine_position_2d(valid, self.cfg.d_model, self.cfg.temperature).to(f.dtype)
        x = f.flatten(2).transpose(1, 2)  # (B, T, C)
        for layer in self.encoder:
            x = layer(x, pos, key_mask)
        return x, pos, key_mask, (h, w)

    def forward(self, images: Tensor, mask: Tensor | None = None, denoising: DenoisingBatch | None = None) -> dict:
        memory, pos, key_mask, hw = self.encode(images, mask)  # (B, T, C), (B, T, C), (B, 1, 1, T) or None
        y, query_pos, ref, self_mask = self.queries(memory.shape[0], denoising)  # (B, Tq, C) x 2, (B, Tq, 2), (Tq, Tq)
        sample_at = None if ref is None else ref * valid_ratios(key_mask, hw, ref.dtype)  # (B, Tq, 2) on the padded map
        states = []
        for layer in self.decoder:
            y = layer(y, memory, query_pos, pos, key_mask, self_mask=self_mask, reference=sample_at, feature_size=hw)
            if self.cfg.aux_loss:
                states.append(self.decoder_norm(y))
        hs = torch.stack(states) if self.cfg.aux_loss else self.decoder_norm(y)[None]  # (L or 1, B, Tq, C)
        logits, delta = self.class_embed(hs), self.bbox_embed(hs)  # (L or 1, B, Tq, K+1), (L or 1, B, Tq, 4)
        if ref is not None:  # relative to the reference point: b = sigmoid(MLP(y) + [logit(p), 0, 0])
            delta = delta + F.pad(torch.logit(ref, eps=1e-5), (0, 2))
        boxes = delta.sigmoid()
        out = {"logits": logits[-1], "boxes": boxes[-1], "feature_size": hw}
        if self.cfg.aux_loss:
            out["aux"] = [{"logits": lg, "boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
        if denoising is not None:
            dn, out = split_outputs(out, denoising.num_dn)
            out["dn"] = dn
        return out

    def queries(self, b: int, denoising: DenoisingBatch | None = None) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """The decoder's queries for a batch of b images: content y (B, Tq, C), positions q
        (B, Tq, C), reference points p (B, Tq, 2) in [0, 1] of the image (deformable; else None)
        and the self-attention mask (Tq, Tq) (with ``denoising``; else None). Tq = N, or D + N:
        [D denoising | N matching] queries, the matching ones blind to the others."""
        n = self.cfg.num_queries
        query_pos = self.query_embed.weight[None].expand(b, -1, -1)  # (B, N, C): q
        if self.dn_queries is None:
            y = torch.zeros_like(query_pos)  # (B, N, C): DETR's content, zeros
        else:
            y = self.dn_queries.matching_content(n)[None].expand(b, -1, -1)  # (B, N, C): DN-DETR's [E(K), 0]
        ref = None if self.reference_points is None else self.reference_points(query_pos).sigmoid()  # (B, N, 2): p
        if denoising is None:
            return y, query_pos, ref, None
        if self.dn_queries is None:
            raise ConfigError(f"{self.name or 'DETR'} was built without denoising queries (DETRConfig.denoising)")
        dn_y, dn_pos = self.dn_queries(denoising.labels, denoising.boxes, denoising.valid)  # (B, D, C) each
        y, query_pos = torch.cat([dn_y, y], dim=1), torch.cat([dn_pos, query_pos], dim=1)  # (B, D+N, C)
        if ref is not None:  # a denoising query's reference point: its noised box's centre
            ref = torch.cat([denoising.boxes[..., :2].to(ref), ref], dim=1)  # (B, D+N, 2)
        return y, query_pos, ref, denoising_attention_mask(denoising.num_dn, denoising.num_groups, n, device=y.device)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"name={self.name!r}, backbone={c.backbone}, d_model={c.d_model}, layers={c.num_encoder_layers}+"
                f"{c.num_decoder_layers}, queries={c.num_queries}, classes={c.num_classes}"
                + (f", cross_attention={c.cross_attention}" if c.cross_attention != "dense" else "")
                + (", denoising=True" if c.denoising else ""))


def valid_ratios(key_mask: Tensor | None, feature_size: tuple[int, int], dtype: torch.dtype) -> Tensor | float:
    """Deformable DETR's valid ratios: the fraction of the padded feature map's width and height
    that is real, (B, 1, 2) as (x, y) from the key mask (B, 1, 1, h*w); 1.0 without padding. A
    point p of the image lies at p * ratio of the padded map."""
    if key_mask is None:
        return 1.0
    valid = key_mask[:, 0, 0].unflatten(1, feature_size)  # (B, h, w)
    h, w = feature_size
    return torch.stack([valid[:, 0, :].sum(1) / w, valid[:, :, 0].sum(1) / h], dim=-1).to(dtype)[:, None]  # (B, 1, 2)


def _detr(name: str, overrides: dict, **base) -> DETR:
    return DETR(config_from(DETRConfig, base, overrides, model=name), name=name)


@register_model("detr_resnet50")
def detr_resnet50(**overrides) -> DETR:
    """The paper's DETR: ResNet-50 (frozen BN), d_model 256, 6+6 layers, 8 heads, FFN 2048,
    100 queries, 91 COCO class ids (41M parameters); facebook/detr-resnet-50's shapes."""
    return _detr("detr_resnet50", overrides)


@register_model("detr_digits")
def detr_digits(**overrides) -> DETR:
    """The CPU configuration for the digit canvases (64x64 greyscale, 10 classes): a 3-stage
    CNN (16-32-64 channels, stride 8: an 8x8 feature map), d_model 64, 3+3 layers, 4 heads,
    FFN 256, 6 queries, no dropout (0.4M parameters)."""
    return _detr("detr_digits", overrides, num_classes=10, backbone="small", in_chans=1, cnn_widths=(16, 32, 64),
                 d_model=64, num_heads=4, num_encoder_layers=3, num_decoder_layers=3, d_ff=256, dropout=0.0,
                 num_queries=6, img_size=64)
