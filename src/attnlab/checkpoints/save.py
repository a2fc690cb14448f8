"""Saving a model's weights in our layout or a foreign one, always as safetensors written
atomically (a crash leaves the old file or the new one, never half of one).

- ``"attnlab"``: our names; the config as JSON in the metadata (``attnlab_config``) and the
  model name (``attnlab_model``), so :func:`attnlab.checkpoints.load_model` can rebuild it.
- ``"timm"``: timm's names; ``timm.create_model(...).load_state_dict(load_file(path))``.
- ``"torchvision"``: torchvision's names (class-token models only).
- ``"hf"``: a directory with ``model.safetensors`` and ``config.json`` that
  ``transformers.ViTForImageClassification.from_pretrained(dir)`` loads offline.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from torch import Tensor, nn

from attnlab.checkpoints import hf, ours, timm, torchvision
from attnlab.errors import UnsupportedError
from attnlab.io import atomic_write_json, save_safetensors_atomic

SAVE_FORMATS = ("attnlab", "timm", "torchvision", "hf")
FOREIGN = {"timm": timm, "torchvision": torchvision, "hf": hf}

# What each foreign layout needs of a ViTConfig (the rest of its layout is checked key by key).
NEEDS = {
    "timm": dict(patch_embed="conv"),
    "torchvision": dict(class_token=True, global_pool="token", pos_embed="learn", patch_embed="conv"),
    "hf": dict(class_token=True, global_pool="token", pos_embed="learn", patch_embed="conv", pre_logits=False),
}


def _tensors(model: nn.Module, state: dict[str, Tensor], fmt: str) -> dict[str, Tensor]:
    """``state`` under ``fmt``'s names; UnsupportedError saying why when ``fmt`` cannot hold ``model``."""
    from attnlab.models.vit import VisionTransformer

    if fmt == "attnlab":
        return ours.from_ours(state)
    if not isinstance(model, VisionTransformer):
        raise UnsupportedError(f"the {fmt} layout holds Vision Transformers only")
    cfg = model.cfg
    bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in NEEDS[fmt].items() if getattr(cfg, k) != v]
    if fmt == "hf" and cfg.num_classes <= 0:
        bad.append("num_classes=0 (ViTForImageClassification needs a head)")
    if bad:
        raise UnsupportedError(", ".join(bad))
    return FOREIGN[fmt].from_ours(state, cfg)


def save_formats(model: nn.Module) -> list[str]:
    """The formats ``model`` can be saved in (``"attnlab"`` holds every model)."""
    state = model.state_dict()
    ok = []
    for fmt in SAVE_FORMATS:
        with contextlib.suppress(UnsupportedError):
            _tensors(model, state, fmt)
            ok.append(fmt)
    return ok


def save_checkpoint(model: nn.Module, path: str | os.PathLike, format: str = "attnlab") -> Path:
    """Write ``model``'s weights to ``path`` in ``format`` (see the module docstring) and
    return the path of the weights file. ``path`` is a file for attnlab/timm/torchvision (a
    directory gets ``model.safetensors`` inside) and a directory for hf. A format that cannot
    hold the model is refused in one line naming those that can (:func:`save_formats`)."""
    if format not in SAVE_FORMATS:
        raise UnsupportedError(f"unknown checkpoint format {format!r}; choose one of {', '.join(SAVE_FORMATS)}")
    path = Path(path)
    state = model.state_dict()
    try:
        tensors = _tensors(model, state, format)
    except UnsupportedError as e:
        can = " or ".join(repr(f) for f in save_formats(model))
        raise UnsupportedError(f"cannot save a {type(model).__name__} in the {format} layout: {e}; "
                               f"it can be saved with format={can}") from None

    if format == "hf":
        dtype = str(next(iter(state.values())).dtype).replace("torch.", "")
        path.mkdir(parents=True, exist_ok=True)
        weights = path / "model.safetensors"
        save_safetensors_atomic(tensors, weights, metadata={"format": "pt"})
        atomic_write_json(path / "config.json", hf.make_config(model.cfg, model.cfg.num_classes, dtype))
        return weights

    if path.is_dir():
        path = path / "model.safetensors"
    metadata = ours.metadata_for(model) if format == "attnlab" else {"format": "pt"}
    save_safetensors_atomic(tensors, path, metadata=metadata)
    return path
