"""Record the attention weights of any model, as they are computed, without changing it.

:class:`AttentionRecorder` hooks every :class:`~attnlab.nn.MultiHeadAttention` (and Bahdanau's
:class:`~attnlab.nn.AdditiveAttention`, and deformable attention) of a model. After each call of
a multi-head attention the hook runs the same call once more on the explicit path
(``need_weights=True``) and keeps the weights softmax(QKᵀ/√d_k + mask): the model's own output is
untouched, so the fused kernel keeps serving the forward pass. Deformable attention
(:class:`~attnlab.nn.deformable.MultiScaleDeformableAttention`) is recorded the same way, as its
equivalent dense map over the values (B, H, Tq, S). Use it on a forward pass without a
key/value cache.

    with AttentionRecorder(model) as rec:
        model(src, tgt)
    rec.maps["decoder.layers.0.cross_attn"]   # [(B, H, Tq, Tk)], one entry per call
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor, nn

from attnlab.errors import ConfigError
from attnlab.nn.attention import AdditiveAttention, MultiHeadAttention
from attnlab.nn.deformable import MultiScaleDeformableAttention


class AttentionRecorder:
    """Context manager: ``maps[module name]`` is the list of (B, H, Tq, Tk) weights of each call
    (additive attention: (B, 1, Tq, Tk))."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.maps: dict[str, list[Tensor]] = defaultdict(list)
        self._handles: list = []

    def __enter__(self) -> AttentionRecorder:
        for name, m in self.model.named_modules():
            if isinstance(m, (MultiHeadAttention, MultiScaleDeformableAttention)):
                self._handles.append(m.register_forward_hook(self._mha_hook(name), with_kwargs=True))
            elif isinstance(m, AdditiveAttention):
                self._handles.append(m.register_forward_hook(self._additive_hook(name)))
        if not self._handles:
            raise ConfigError(f"{type(self.model).__name__} has no attention layer to record (a recurrent model?)")
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _mha_hook(self, name: str):
        def hook(module, args, kwargs, output):
            if kwargs.get("need_weights"):
                self.maps[name].append(output[1].detach())
                return
            if kwargs.get("cache") is not None:
                raise ConfigError("record attention on a forward pass without a key/value cache")
            with torch.no_grad():
                _, w = module.forward(*args, **{**kwargs, "need_weights": True})
            self.maps[name].append(w.detach())
        return hook

    def _additive_hook(self, name: str):
        def hook(module, args, output):
            w = output[1].detach()  # (B, Tk) or (B, Tq, Tk)
            self.maps[name].append((w[:, None] if w.dim() == 2 else w)[:, None])  # (B, 1, Tq, Tk)
        return hook

    def stacked(self, name_part: str) -> list[Tensor]:
        """The weights of the modules whose names contain ``name_part``, in model order, one
        tensor per module (calls joined along the query axis: a step-by-step decoder's rows)."""
        return [torch.cat(v, dim=-2) for k, v in self.maps.items() if name_part in k]
