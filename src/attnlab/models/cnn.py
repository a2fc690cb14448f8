"""A small ResNet for small images (He et al. 2016, the CIFAR-10 layout of §4.2): the
convolutional baseline of the inductive-bias experiment (ViT vs CNN against data size).

    x (B, C, H, W) -> 3x3 conv, BN, ReLU -> stages of BasicBlocks (the first block of each stage
    after the first halves H and W) -> global average pool -> linear head

BasicBlock: y = ReLU(BN(conv3x3(ReLU(BN(conv3x3(x))))) + shortcut(x)), the shortcut a 1x1
strided conv + BN when the shape changes (option B of the paper).

It has the fields the image task reads from a model config (``img_size``, ``in_chans``,
``num_classes``), so ``attnlab train image`` can train it once the task lists it among its
model kinds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError, ShapeError
from attnlab.models.capabilities import ImageInput
from attnlab.models.registry import config_from, register_model


@dataclass
class ResNetConfig:
    img_size: int = 32
    in_chans: int = 3
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)  # channels of each stage
    blocks: int = 1  # BasicBlocks per stage (3 per stage: ResNet-20)

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if not self.widths or min(self.widths) < 1 or min(self.img_size, self.in_chans, self.num_classes, self.blocks) < 1:
            raise ConfigError("ResNetConfig: img_size, in_chans, num_classes, blocks and every width must be >= 1")


class BasicBlock(nn.Module):
    """y = ReLU(F(x) + shortcut(x)), F = conv3x3 -> BN -> ReLU -> conv3x3 -> BN."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, H, W) -> (B, C_out, H/s, W/s)
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, stages of BasicBlocks, global average pooling, linear classifier."""

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_chans, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(inplace=True))
        layers, c = [], w[0]
        for i, width in enumerate(w):
            for j in range(cfg.blocks):
                layers.append(BasicBlock(c, width, 2 if (i > 0 and j == 0) else 1))
                c = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Linear(c, cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def image_input(self) -> ImageInput:
        """The images it classifies (:class:`attnlab.models.capabilities.ImageClassifier`)."""
        return ImageInput(self.cfg.in_chans, (self.cfg.img_size, self.cfg.img_size))

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) -> logits (B, num_classes)."""
        if x.dim() != 4 or x.shape[1] != self.cfg.in_chans:
            raise ShapeError(f"expected images (B, {self.cfg.in_chans}, H, W), got shape {tuple(x.shape)}")
        x = self.stages(self.stem(x))  # (B, C, H', W')
        return self.head(torch.flatten(x.mean((2, 3)), 1))


@register_model("resnet_cifar_small")
def resnet_cifar_small(**overrides) -> ResNet:
    """A ResNet-8 for CIFAR-10 (32x32 RGB): stages of 32, 64, 128 channels, one BasicBlock each
    (0.31M parameters), the CNN of the ViT-vs-CNN experiment."""
    return ResNet(config_from(ResNetConfig, {}, overrides, "resnet_cifar_small"))


@register_model("resnet_digits")
def resnet_digits(**overrides) -> ResNet:
    """The same ResNet-8 layout for 8x8 greyscale digits: stages of 16, 32, 64 channels."""
    return ResNet(config_from(ResNetConfig, dict(img_size=8, in_chans=1, widths=(16, 32, 64)), overrides, "resnet_digits"))
