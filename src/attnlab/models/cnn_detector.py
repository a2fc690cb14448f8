"""RetinaNet (Lin et al. 2017, "Focal Loss for Dense Object Detection") on DETR's backbones: the
CNN detector that DETR is measured against (issue 24), built from ``torchvision.models.detection``.

Why RetinaNet, not Faster R-CNN: it is the detector the tree-crown people use (DeepForest, the
reference model of the NEON crowns, is a torchvision RetinaNet); it has one stage (no proposal
sampling to tune) and its focal loss copes with many small objects among many background anchors
when trained from scratch; and its loss and its decoding are separate functions of one head
output (:meth:`RetinaNet.compute_loss`, :meth:`RetinaNet.postprocess_detections`), so one forward
gives a validation batch both its losses and its detections, as DETR's does.

The model is torchvision's :class:`~torchvision.models.detection.RetinaNet` (its anchor
generator, v1 head with the focal loss and L1 box loss, matcher, box coder and decoding) with:

- ``backbone``: DETR's (``SmallCNN`` or ``ResNet50``, built first from the same config fields,
  so a seed gives both models the same backbone weights, and the same attribute, so the task's
  backbone pretraining, ``--init`` and ``lr_scales["backbone."]`` apply to both);
- one feature level, the backbone's last map (stride 8 for three SmallCNN stages), projected by
  ``input_proj`` (1x1 conv, as DETR's) to ``head_dim`` channels; anchors of every size in
  ``anchor_sizes`` and ratio in ``aspect_ratios`` at every cell (torchvision's convention: centred
  on the cell's top-left pixel);
- no torchvision transform: :class:`~torchvision.models.detection.transform.GeneralizedRCNNTransform`
  would resize images (shorter side ``min_size``) and normalise them; the task already normalises
  and tiles, and boxes are scored in the pixels it gives, so ``forward`` never calls it and the
  attribute is removed: images are taken as they come;
- a padded batch (pixel ``mask``, True = a real pixel, padding at the right and bottom) gives
  each image its unpadded detections and losses: the SmallCNN is mask-aware, the head's padding
  is zeroed before each of its convolutions, and each image keeps the anchors of its own real
  cells only. Images whose size is not a multiple of the stride are padded so inside.

``forward(images, mask=None, targets=None)`` returns one dict (the
:class:`~attnlab.models.capabilities.SelfLossDetector` contract):

- with ``targets`` (the detection task's: ``labels`` (M,) in 0..K-1, ``boxes`` (M, 4) cx, cy, w, h
  in [0, 1] of the image's real size): ``loss`` = ``classification`` + ``bbox_regression``;
- unless training with targets: DETR's outputs, ``logits`` (B, N, K+1) and ``boxes`` (B, N, 4)
  cx, cy, w, h in [0, 1] of the real image, for N = ``detections_per_img`` detections after
  torchvision's decoding and NMS, so DETR's postprocess, COCO evaluation and tile merging apply
  unchanged. Detection n of score s and class k has logits log s at k, log(1 - s) at "no object"
  (index K) and ``NO_SCORE`` elsewhere: its softmax over the K + 1 gives back s and k. Rows beyond
  the detections have score ~0 and an empty box at (0, 0). ``feature_size`` (h, w) as DETR's.

Shapes: images (B, C_in, H, W); features (B, D, h, w); head outputs per image (A_b, K) and
(A_b, 4), A_b = h_b * w_b * anchors per cell; anchors (A_b, 4) x0, y0, x1, y1 in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import box_convert

from attnlab.errors import ConfigError, ShapeError
from attnlab.models.registry import config_from, register_model
from attnlab.models.resnet import ResNet50, SmallCNN

BACKBONES = ("resnet50", "small")
NO_SCORE = -100.0  # the logit of a class a detection does not have: exp(-100) ~ 4e-44


@dataclass
class RetinaNetConfig:
    """One RetinaNet. Backbone fields mean what DETRConfig's do; the defaults are ``retinanet_small``'s."""

    num_classes: int = 1  # K object classes (sigmoid scores, no background class)
    backbone: str = "small"  # "small" (SmallCNN) or "resnet50" (frozen BN), as DETR's
    in_chans: int = 3
    cnn_widths: tuple[int, ...] = (32, 64, 128)  # SmallCNN only: one stage per width, stride 2 each
    head_dim: int = 128  # channels of the projected features the class and box heads read
    anchor_sizes: tuple[int, ...] = (16, 24, 32, 48, 64)  # anchor sides in pixels (sqrt of the area), at every cell
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # anchor height / width, at every cell and size
    score_thresh: float = 0.05  # detections scored below this are dropped before NMS (torchvision's)
    nms_thresh: float = 0.5  # per-class NMS IoU (torchvision's)
    detections_per_img: int = 300  # N: detections kept per image after NMS, the rows of the outputs
    topk_candidates: int = 1000  # the best (anchor, class) pairs decoded before NMS (torchvision's)
    img_size: int = 400  # the size images are resized to by predict/viz (the model takes any size)

    @property
    def stride(self) -> int:
        """The backbone's stride: a padded batch's size is a multiple of it."""
        return 32 if self.backbone == "resnet50" else 2 ** len(self.cnn_widths)

    def __post_init__(self) -> None:
        self.cnn_widths = tuple(int(w) for w in self.cnn_widths)
        self.anchor_sizes = tuple(int(s) for s in self.anchor_sizes)
        self.aspect_ratios = tuple(float(r) for r in self.aspect_ratios)
        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.backbone == "small" and (not self.cnn_widths or any(w % 8 for w in self.cnn_widths)):
            raise ConfigError(f"cnn_widths {list(self.cnn_widths)}: give one width per stage, each a multiple of 8")
        if not self.anchor_sizes or min(self.anchor_sizes) < 1 or not self.aspect_ratios or min(self.aspect_ratios) <= 0:
            raise ConfigError(f"anchor_sizes {list(self.anchor_sizes)} and aspect_ratios {list(self.aspect_ratios)}: "
                              "give at least one of each, sizes >= 1 pixel and ratios > 0")
        for f in ("num_classes", "head_dim", "detections_per_img", "topk_candidates", "img_size"):
            if getattr(self, f) < 1:
                raise ConfigError(f"{f} must be >= 1, got {getattr(self, f)}")
        for f in ("score_thresh", "nms_thresh"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ConfigError(f"{f} must be in [0, 1], got {getattr(self, f)}")


def make_backbone(cfg) -> SmallCNN | ResNet50:
    """DETR's backbone for a config with ``backbone``, ``in_chans`` and ``cnn_widths``."""
    return ResNet50(cfg.in_chans) if cfg.backbone == "resnet50" else SmallCNN(cfg.in_chans, cfg.cnn_widths)


def pad_to_stride(images: Tensor, mask: Tensor | None, stride: int) -> tuple[Tensor, Tensor | None]:
    """images (B, C, H, W) and mask (B, H, W) or None, padded at the right and bottom to multiples
    of ``stride`` (0, mask False); unchanged when they are."""
    h, w = images.shape[-2:]
    ph, pw = -h % stride, -w % stride
    if not ph and not pw:
        return images, mask
    if mask is None:
        mask = images.new_ones(images.shape[0], h, w, dtype=torch.bool)
    return F.pad(images, (0, pw, 0, ph)), F.pad(mask, (0, pw, 0, ph), value=False)


def real_sizes(images: Tensor, mask: Tensor | None) -> list[tuple[int, int]]:
    """(height, width) of each image's real pixels: the mask's True block at the top left, else all."""
    if mask is None:
        return [tuple(images.shape[-2:])] * images.shape[0]
    return [(int(m[:, 0].sum()), int(m[0].sum())) for m in mask]


class RetinaNetDetector(RetinaNet):
    """torchvision's RetinaNet on DETR's backbone, one feature level, taking images as they come;
    see the module docstring for ``forward``'s contract."""

    loss_names = ("classification", "bbox_regression")

    def __init__(self, cfg: RetinaNetConfig, name: str | None = None) -> None:
        backbone = make_backbone(cfg)  # first, as in DETR, so a seed gives both the same weights
        input_proj = nn.Conv2d(backbone.out_channels, cfg.head_dim, 1)
        anchors = AnchorGenerator((cfg.anchor_sizes,), (cfg.aspect_ratios,))
        head = RetinaNetHead(cfg.head_dim, anchors.num_anchors_per_location()[0], cfg.num_classes)
        super().__init__(backbone, cfg.num_classes, anchor_generator=anchors, head=head, score_thresh=cfg.score_thresh,
                         nms_thresh=cfg.nms_thresh, detections_per_img=cfg.detections_per_img,
                         topk_candidates=cfg.topk_candidates)
        del self.transform  # never resize: see the module docstring
        self.input_proj = input_proj
        self.cfg, self.name = cfg, name

    def forward(self, images: Tensor, mask: Tensor | None = None, targets: list[dict] | None = None) -> dict:
        c = self.cfg
        if images.dim() != 4 or images.shape[1] != c.in_chans:
            raise ShapeError(f"{self.name or 'RetinaNet'} takes images (B, {c.in_chans}, H, W), got {tuple(images.shape)}")
        images, mask = pad_to_stride(images, mask, c.stride)
        sizes = real_sizes(images, mask)
        f = self.input_proj(self.backbone(images, mask))  # (B, D, h, w)
        fmask = None if mask is None else mask[:, None, ::c.stride, ::c.stride].to(f.dtype)  # (B, 1, h, w)
        cls, reg = self.head_maps(f, fmask)  # (B, A*K, h, w), (B, A*4, h, w)
        grid = self.grid_anchors(f)  # (h, w, A, 4)
        outputs, anchors = {"cls_logits": [], "bbox_regression": []}, []
        for b, (hb, wb) in enumerate(sizes):  # each image: the cells holding its real pixels
            hc, wc = -(-hb // c.stride), -(-wb // c.stride)
            outputs["cls_logits"].append(per_anchor(cls[b, :, :hc, :wc], c.num_classes))  # (A_b, K)
            outputs["bbox_regression"].append(per_anchor(reg[b, :, :hc, :wc], 4))  # (A_b, 4)
            anchors.append(grid[:hc, :wc].reshape(-1, 4))  # (A_b, 4)
        out = {"feature_size": tuple(f.shape[-2:])}
        if targets is not None:
            losses = self.compute_loss(pixel_targets(targets, sizes, f.device), outputs, anchors)
            out.update(loss=sum(losses.values()), **losses)
        if targets is None or not self.training:
            dets = [self.postprocess_detections({k: [v[b][None]] for k, v in outputs.items()}, [[anchors[b]]], [sizes[b]])[0]
                    for b in range(len(sizes))]
            out.update(detr_outputs(dets, sizes, c.detections_per_img, c.num_classes))
        return out

    def head_maps(self, f: Tensor, fmask: Tensor | None) -> tuple[Tensor, Tensor]:
        """The class and box branches of torchvision's RetinaNetHead on features (B, D, h, w), the
        padding zeroed before each convolution: (B, A*K, h, w) logits and (B, A*4, h, w) box codes."""
        def branch(convs: nn.Sequential, last: nn.Conv2d) -> Tensor:
            x = f
            for conv in convs:  # Conv2dNormActivation without a norm: conv, ReLU
                x = conv(x if fmask is None else x * fmask)
            return last(x if fmask is None else x * fmask)

        h = self.head
        return (branch(h.classification_head.conv, h.classification_head.cls_logits),
                branch(h.regression_head.conv, h.regression_head.bbox_reg))

    def grid_anchors(self, f: Tensor) -> Tensor:
        """The anchors of every cell of features (B, D, h, w): (h, w, A, 4) x0, y0, x1, y1 in pixels."""
        h, w = f.shape[-2:]
        s = torch.tensor(self.cfg.stride, device=f.device)
        self.anchor_generator.set_cell_anchors(f.dtype, f.device)
        return self.anchor_generator.grid_anchors([[h, w]], [[s, s]])[0].view(h, w, -1, 4)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"name={self.name!r}, backbone={c.backbone}, stride={c.stride}, head_dim={c.head_dim}, "
                f"anchors={list(c.anchor_sizes)}x{list(c.aspect_ratios)}, classes={c.num_classes}, "
                f"detections={c.detections_per_img}")


def per_anchor(maps: Tensor, n: int) -> Tensor:
    """(A*n, h, w) head output of one image -> (h*w*A, n), torchvision's order (rows, columns, anchors)."""
    _, h, w = maps.shape
    return maps.view(-1, n, h, w).permute(2, 3, 0, 1).reshape(-1, n)


def pixel_targets(targets: list[dict], sizes: list[tuple[int, int]], device: torch.device) -> list[dict]:
    """The task's targets (``boxes`` (M, 4) cx, cy, w, h in [0, 1] of the real image, ``labels`` (M,)
    in 0..K-1) -> torchvision's (``boxes`` x0, y0, x1, y1 in pixels; labels as they are: RetinaNet's
    classes are sigmoids, with no background index to shift them past)."""
    out = []
    for t, (h, w) in zip(targets, sizes):
        scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=device)
        boxes = box_convert(t["boxes"].to(device, torch.float32).view(-1, 4), "cxcywh", "xyxy") * scale
        out.append({"boxes": boxes, "labels": t["labels"].to(device, torch.int64)})
    return out


def detr_outputs(dets: list[dict], sizes: list[tuple[int, int]], n: int, num_classes: int) -> dict:
    """torchvision's detections (per image ``scores`` (M,), ``labels`` (M,), ``boxes`` (M, 4) x0, y0,
    x1, y1 in pixels, M <= n) -> DETR's ``logits`` (B, n, K+1) and ``boxes`` (B, n, 4) cx, cy, w, h in
    [0, 1] of each real image."""
    ref = dets[0]["scores"]
    logits = torch.full((len(dets), n, num_classes + 1), NO_SCORE, dtype=ref.dtype, device=ref.device)
    logits[..., num_classes] = 0.0
    boxes = torch.zeros(len(dets), n, 4, dtype=ref.dtype, device=ref.device)
    for b, (d, (h, w)) in enumerate(zip(dets, sizes)):
        m, s = len(d["scores"]), d["scores"]
        logits[b, torch.arange(m, device=s.device), d["labels"]] = s.log().clamp(min=NO_SCORE)
        logits[b, :m, num_classes] = torch.log1p(-s).clamp(min=NO_SCORE)
        scale = torch.tensor([w, h, w, h], dtype=ref.dtype, device=ref.device)
        boxes[b, :m] = box_convert(d["boxes"], "xyxy", "cxcywh") / scale
    return {"logits": logits, "boxes": boxes}


def _retinanet(name: str, overrides: dict, **base) -> RetinaNetDetector:
    return RetinaNetDetector(config_from(RetinaNetConfig, base, overrides, model=name), name=name)


@register_model("retinanet_small")
def retinanet_small(**overrides) -> RetinaNetDetector:
    """The CNN detector set beside DETR for tree crowns: RGB 400-px tiles, DETR's 3-stage SmallCNN
    (32-64-128, stride 8), a 128-channel head, 15 anchors per cell (16-64 px x ratios 0.5, 1, 2),
    300 detections per image, 1 class."""
    return _retinanet("retinanet_small", overrides)


@register_model("retinanet_digits")
def retinanet_digits(**overrides) -> RetinaNetDetector:
    """The CPU configuration for the digit canvases, detr_digits' backbone (64x64 greyscale,
    16-32-64, stride 8: an 8x8 feature map), a 64-channel head, 9 anchors per cell (12-28 px x
    ratios 0.5, 1, 2), 10 classes, 100 detections per image."""
    return _retinanet("retinanet_digits", overrides, num_classes=10, in_chans=1, cnn_widths=(16, 32, 64), head_dim=64,
                      anchor_sizes=(12, 18, 28), detections_per_img=100, img_size=64)

