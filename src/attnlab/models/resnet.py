"""Backbones of the detector: ResNet-50 with frozen batch norm (He et al. 2016; the layout of
torchvision and timm, which DETR checkpoints use) and a small CNN for the CPU.

Both map images (B, C, H, W) to a feature map (B, out_channels, H/s, W/s) and say their
``out_channels`` and ``stride``; both take the pixel mask of a padded batch (B, H, W), True = a
real pixel. The small CNN honours it (the features of a padded image equal the unpadded one's);
ResNet-50 ignores it, as DETR and Hugging Face do (see :meth:`ResNet50.forward`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.errors import ShapeError


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (buffers, not trained):
    y = (x - mean) / sqrt(var + eps) * weight + bias. The eps is inside the square root as in
    DETR and Hugging Face (torchvision's own frozen BN has none)."""

    def __init__(self, n: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """y = x * scale + shift, per channel."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        scale, shift = self.scale_shift()
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def conv_bn(conv: nn.Conv2d, bn: FrozenBatchNorm2d, x: Tensor) -> Tensor:
    """bn(conv(x)) as one convolution: frozen BN is affine, so it folds into the kernel and a bias
    (BN(W * x) = (scale · W) * x + shift): the same function, one pass over the activations."""
    scale, shift = bn.scale_shift()
    return F.conv2d(x, conv.weight * scale[:, None, None, None], shift, conv.stride, conv.padding)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride here, as torchvision's v1.5) -> 1x1 expand (x4), plus the
    shortcut (a strided 1x1 conv + BN where the shape changes): y = ReLU(F(x) + shortcut(x))."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out, 1, stride=stride, bias=False), FrozenBatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else conv_bn(self.downsample[0], self.downsample[1], x)
        y = self.relu(conv_bn(self.conv1, self.bn1, x))
        y = self.relu(conv_bn(self.conv2, self.bn2, y))
        return self.relu(conv_bn(self.conv3, self.bn3, y) + identity)


class ResNet50(nn.Module):
    """ResNet-50 up to ``layer4`` (stride 32, 2048 channels), no pooling or classifier.

    Parameter names are torchvision's (``conv1``, ``bn1``, ``layer{1..4}.{j}.conv1`` ...,
    ``downsample.0/1``), which are also timm's and those under ``backbone.0.body.`` in DETR
    checkpoints. As in DETR, the stem and ``layer1`` are not trained (``requires_grad=False``).
    """

    out_channels = 2048
    stride = 32

    def __init__(self, in_chans: int = 3, layers: tuple[int, ...] = (3, 4, 6, 3), train_stem: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        ch = 64
        for i, (n, width) in enumerate(zip(layers, (64, 128, 256, 512))):
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(ch, width, stride=2 if (j == 0 and i > 0) else 1))
                ch = width * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if not train_stem:
            for p in [*self.conv1.parameters(), *self.layer1.parameters()]:
                p.requires_grad_(False)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # (B, C, H, W) -> (B, 2048, H/32, W/32)
        """``mask`` is not used, as in DETR and Hugging Face, whose checkpoints this loads: padding
        enters the border features. Zeroing the padding before every 3x3 or 7x7 convolution would
        make it padding-invariant (1x1 convolutions, frozen BN and ReLU act per pixel; max pooling
        follows a ReLU, so a zero and a missing value give one max; a stride-2 convolution's
        real outputs, centred on even pixels, read padding only where the unpadded image reads
        the convolution's own zero padding), but would change these checkpoints' outputs."""
        x = x.contiguous(memory_format=torch.channels_last)  # CPU convolutions run faster on NHWC
        x = self.maxpool(self.relu(conv_bn(self.conv1, self.bn1, x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def masked_group_norm(x: Tensor, mask: Tensor, norm: nn.GroupNorm) -> Tensor:
    """``norm`` (GroupNorm) with its statistics over the real pixels only: x (B, C, h, w),
    mask (B, 1, h, w) float, 1 = real. Mean and (biased) variance of each group over its
    channels and real pixels, as GroupNorm computes them over all pixels of an unpadded image."""
    b, c, h, w = x.shape
    xg, m = x.view(b, norm.num_groups, -1, h, w), mask.view(b, 1, 1, h, w)
    n = m.sum((2, 3, 4), keepdim=True) * xg.shape[2]  # (B, 1, 1, 1, 1) values per group
    mean = (xg * m).sum((2, 3, 4), keepdim=True) / n
    var = ((xg - mean) * m).square().sum((2, 3, 4), keepdim=True) / n
    y = ((xg - mean) * (var + norm.eps).rsqrt()).view(b, c, h, w)
    return y * norm.weight[None, :, None, None] + norm.bias[None, :, None, None]


class SmallCNN(nn.Module):
    """A few 3x3 conv + GroupNorm + ReLU stages, each halving the resolution: the CPU backbone.
    ``widths`` (one per stage) decide the stride, 2 ** len(widths).

    With a pixel mask (a padded batch) it is padding-invariant: the input's padding is zeroed,
    GroupNorm's statistics count real pixels only (:func:`masked_group_norm`) and the padding is
    zeroed again after every ReLU, the mask following each stride-2 convolution by keeping its
    even pixels. A convolution's real outputs then read, beyond the real pixels, only zeros, as
    the unpadded image's convolutions read their zero padding. The padded size must be a
    multiple of the stride (so that DETR's nearest-neighbour mask of the feature map is this
    one); the real sizes need not be."""

    def __init__(self, in_chans: int = 1, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        layers, ch = [], in_chans
        for w in widths:
            layers += [nn.Conv2d(ch, w, 3, stride=2, padding=1, bias=False), nn.GroupNorm(8, w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.GroupNorm(8, w), nn.ReLU(inplace=True)]
            ch = w
        self.body = nn.Sequential(*layers)
        self.out_channels = ch
        self.stride = 2 ** len(widths)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # (B, C, H, W) -> (B, widths[-1], H/s, W/s)
        if mask is None:
            return self.body(x)
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride:
            raise ShapeError(f"a padded batch of {x.shape[-2]}x{x.shape[-1]} pixels: pad images to a multiple of the "
                             f"backbone's stride {self.stride} (attnlab.detect.batching.pad_batch(..., multiple))")
        m = mask[:, None].to(x.dtype)  # (B, 1, H, W)
        x = x * m
        for conv, norm in zip(self.body[0::3], self.body[1::3]):
            x = conv(x)
            m = m[..., ::conv.stride[0], ::conv.stride[1]]
            x = F.relu(masked_group_norm(x, m, norm)) * m
        return x
