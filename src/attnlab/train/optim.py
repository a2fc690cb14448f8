"""The optimizer and the learning-rate schedules.

- :func:`param_groups` splits parameters into a decayed group (matrices: linear and conv
  weights) and an undecayed one (biases, norm scales and shifts, position embeddings, class
  tokens, ``nn.Embedding`` tables), the usual AdamW recipe (Loshchilov & Hutter 2019; the ViT
  and BERT training code); ``lr_scales`` gives parts of the model their own learning rate
  (DETR: the backbone at a tenth of the transformer's).
- A schedule is a function ``factor(step) -> float`` that multiplies each group's base learning
  rate. It depends on the step alone, so resuming needs only the step counter.
  ``warmup_cosine`` (ViT), ``warmup_linear``, ``constant`` and ``inverse_sqrt`` (the Transformer
  paper, eq. 3) are built in; :func:`register_schedule` adds more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from attnlab.errors import ConfigError

#: Parameter names (or name endings) never decayed, whatever their shape.
NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token", "reg_token", "position_embedding", "pos_embedding")

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.RMSNorm)


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters that AdamW should not decay.

    Biases and every 1-D parameter (norm scales), the parameters of normalisation layers and of
    ``nn.Embedding`` tables, names listed by ``model.no_weight_decay()`` (timm's convention) and
    names ending in one of :data:`NO_DECAY_NAMES`.
    """
    skip: set[str] = set()
    explicit = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if (
                p.ndim <= 1
                or isinstance(module, (*_NORMS, nn.Embedding))
                or full in explicit
                or pname in explicit
                or any(full == n or full.endswith("." + n) for n in NO_DECAY_NAMES)
            ):
                skip.add(full)
    return skip


def param_groups(model: nn.Module, weight_decay: float, lr: float | None = None,
                 lr_scales: dict[str, float] | None = None) -> list[dict]:
    """AdamW parameter groups ``{"params", "weight_decay", "name"}``: with decay, then without.

    ``lr_scales`` maps a parameter-name prefix (``"backbone."``) to a factor on ``lr``: the
    parameters under it get groups of their own (``"backbone.:decay"``, ...) with ``"lr"`` set;
    the first matching prefix wins; a prefix that matches no trainable parameter adds no group."""
    scales = dict(lr_scales or {})
    if scales and lr is None:
        raise ConfigError("param_groups: lr_scales need the base lr")
    skip = no_decay_names(model)
    groups = {(prefix, decayed): [] for prefix in ["", *scales] for decayed in (True, False)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            prefix = next((k for k in scales if name.startswith(k)), "")
            groups[prefix, name not in skip].append(p)
    out = []
    for (prefix, decayed), params in groups.items():
        if params or not prefix:  # the two default groups always exist
            g = {"params": params, "weight_decay": weight_decay if decayed else 0.0,
                 "name": f"{prefix}:" * bool(prefix) + ("decay" if decayed else "no_decay")}
            if prefix:
                g["lr"] = lr * scales[prefix]
            out.append(g)
    return out


OPTIMIZERS = ("adamw", "sgd")


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8,
                    name: str = "adamw", momentum: float = 0.0,
                    lr_scales: dict[str, float] | None = None) -> torch.optim.Optimizer:
    """AdamW (or SGD) over :func:`param_groups` (``lr_scales``: see there).

    SGD is the classic recipe of recurrent language models (Zaremba et al. 2014: plain SGD, a
    large rate, gradient clipping); its weight decay is the coupled L2 kind.
    """
    groups = param_groups(model, weight_decay, lr, lr_scales)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


# --- schedules ---------------------------------------------------------------------------------
# A schedule maker takes (total_steps, warmup_steps, min_ratio) and returns factor(step), where
# step counts optimizer updates from 0 and the learning rate is base_lr * factor(step).

ScheduleMaker = Callable[[int, int, float], Callable[[int], float]]
SCHEDULES: dict[str, ScheduleMaker] = {}


def register_schedule(name: str):
    """Decorator: make a schedule available by name (``--schedule NAME``)."""

    def deco(fn: ScheduleMaker) -> ScheduleMaker:
        SCHEDULES[name] = fn
        return fn

    return deco


def _warm(step: int, warmup: int) -> float:
    return (step + 1) / warmup if warmup > 0 and step < warmup else 1.0


@register_schedule("cosine")
def warmup_cosine(total: int, warmup: int, min_ratio: float = 0.0):
    """Linear warm-up over ``warmup`` steps to 1, then half a cosine down to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup:
            return _warm(step, warmup)
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


@register_schedule("linear")
def warmup_linear(total: int, warmup: int, min_ratio: float = 0.0):
    """Linear warm-up, then a straight line down to ``min_ratio`` at the last step."""

    def factor(step: int) -> float:
        if step < warmup:
            return _warm(step, warmup)
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1.0 - (1.0 - min_ratio) * t

    return factor


@register_schedule("constant")
def warmup_constant(total: int, warmup: int, min_ratio: float = 0.0):
    """Linear warm-up, then constant."""
    return lambda step: _warm(step, warmup)


@register_schedule("inverse-sqrt")
def inverse_sqrt(total: int, warmup: int, min_ratio: float = 0.0):
    """The Transformer paper's schedule (Vaswani et al. 2017, eq. 3), normalised to peak at 1:

        lrate = d_model^-0.5 * min(n^-0.5, n * warmup^-1.5),  n = step + 1
              = peak * min(n / warmup, sqrt(warmup / n)),    peak = (d_model * warmup)^-0.5

    so ``--lr`` is the peak; :func:`noam_peak_lr` gives the paper's value.
    """
    w = max(1, warmup)

    def factor(step: int) -> float:
        n = step + 1
        return min(n / w, math.sqrt(w / n))

    return factor


def noam_peak_lr(d_model: int, warmup: int, scale: float = 1.0) -> float:
    """The peak learning rate of the paper's schedule: scale * (d_model * warmup)^-0.5."""
    return scale * (d_model * warmup) ** -0.5


def make_schedule(name: str, total: int, warmup: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name](total, warmup, min_ratio)


class Scheduler:
    """Sets each group's learning rate to ``base_lr * factor(step)``; its state is the step."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[int], float], base_lrs: Iterable[float] | None = None):
        self.optimizer = optimizer
        self.factor = factor
        self.base_lrs = list(base_lrs) if base_lrs is not None else [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0
        self._apply()

    def _apply(self) -> None:
        f = self.factor(self.step_count)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"step": self.step_count, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step"])
        self.base_lrs = list(state["base_lrs"])
        self._apply()
