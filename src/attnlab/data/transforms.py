"""Image transforms on uint8 batches: training augmentation (random crop with zero padding,
horizontal flip) and normalisation ``(x / 255 - mean) / std``, with the per-channel statistics
of a run's training images or, for a model without a run, :func:`default_normalization`.
:func:`choose_normalization` is the one rule for which of them reads an image."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.errors import ConfigError
from attnlab.models.capabilities import input_stats


class Augment:
    """Random crop with zero padding and horizontal flip on uint8 batches (B, C, H, W).

    ``params`` draws each sample's crop offset and flip from a generator, so the randomness of
    a sample depends only on its position in the global batch, not on the process holding it.
    """

    def __init__(self, padding: int = 0, flip: bool = False) -> None:
        self.padding, self.flip = int(padding), bool(flip)

    def __bool__(self) -> bool:
        return self.padding > 0 or self.flip

    def params(self, n: int, g: torch.Generator) -> dict[str, Tensor]:
        p = self.padding
        return {"dy": torch.randint(0, 2 * p + 1, (n,), generator=g), "dx": torch.randint(0, 2 * p + 1, (n,), generator=g),
                "flip": torch.rand(n, generator=g) < 0.5}

    def apply(self, x: Tensor, prm: dict[str, Tensor]) -> Tensor:
        b, _, h, w = x.shape
        if self.padding > 0:
            p = self.padding
            xp = F.pad(x, (p, p, p, p))
            rows = prm["dy"][:, None] + torch.arange(h)  # (B, H)
            cols = prm["dx"][:, None] + torch.arange(w)  # (B, W)
            x = xp[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
            x = x.permute(0, 3, 1, 2).contiguous()
        if self.flip:
            x = torch.where(prm["flip"][:, None, None, None], x.flip(-1), x)
        return x

    def describe(self) -> dict:
        return {"crop_padding": self.padding, "flip": self.flip}


def channel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, as fractions of 255."""
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    n = 0
    for chunk in images.split(8192):
        x = chunk.to(torch.float64).div_(255.0).transpose(0, 1).reshape(c, -1)
        s += x.sum(1)
        s2 += (x * x).sum(1)
        n += x.shape[1]
    mean = s / max(n, 1)
    std = (s2 / max(n, 1) - mean**2).clamp(min=1e-12).sqrt()
    return [round(float(v), 6) for v in mean], [round(max(float(v), 1e-3), 6) for v in std]


class Normalize:
    """uint8 (B, C, H, W) -> float ``(x / 255 - mean) / std``."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.mean, self.std = list(mean), list(std)
        self._cache: dict = {}

    def __call__(self, x: Tensor) -> Tensor:
        key = x.device
        if key not in self._cache:
            std = torch.tensor(self.std, dtype=torch.float32, device=x.device)[:, None, None]
            mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device)[:, None, None]
            self._cache[key] = (1.0 / (255.0 * std), -mean / std)
        a, b = self._cache[key]
        return torch.addcmul(b, x.float(), a)


def default_normalization(model) -> Normalize:
    """The normalisation of a model that brings no statistics of its own (a registered name, a
    checkpoint file whose layout states none): :func:`attnlab.models.capabilities.input_stats`,
    the model's ``pretrained_cfg`` (0.5 for timm's ViT names), else ImageNet's mean and std for
    an RGB model and pixels in [0, 1] otherwise."""
    return Normalize(*input_stats(model))


def choose_normalization(model, own: Normalize | None = None, mean: Sequence[float] | None = None,
                         std: Sequence[float] | None = None) -> Normalize:
    """How an image is normalised for ``model``: ``mean``/``std`` when either is given (the other
    0 or 1 per channel), else ``own`` (a run's, from its training images), else
    :func:`default_normalization`. Values that would make every input NaN or infinite, or a
    count other than one per channel, raise ConfigError."""
    if mean is None and std is None:
        return own if own is not None else default_normalization(model)
    c = int(model.cfg.in_chans)
    mean, std = list(mean) if mean is not None else [0.0] * c, list(std) if std is not None else [1.0] * c
    if not all(math.isfinite(m) for m in mean):
        raise ConfigError(f"--mean {' '.join(map(str, mean))}: every mean must be a finite number")
    if not all(0 < s < math.inf for s in std):
        raise ConfigError(f"--std {' '.join(map(str, std))}: every standard deviation must be a positive finite number")
    if len(mean) != c or len(std) != c:
        raise ConfigError(f"--mean and --std need {c} values (one per channel), "
                          f"got {len(mean)} and {len(std)}")
    return Normalize(mean, std)
