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

import os
from pathlib import Path

from torch import nn

from attnlab.checkpoints import hf, ours, timm, torchvision
from attnlab.errors import UnsupportedError
from attnlab.io import atomic_write_json, save_safetensors_atomic

SAVE_FORMATS = ("attnlab", "timm", "torchvision", "hf")


def _require(cfg, fmt: str, **wanted) -> None:
    bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in wanted.items() if getattr(cfg, k) != v]
    if bad:
        raise UnsupportedError(f"cannot save in the {fmt} layout: {', '.join(bad)}; save with format='attnlab'")


def save_checkpoint(model: nn.Module, path: str | os.PathLike, format: str = "attnlab") -> Path:
    """Write ``model``'s weights to ``path`` in ``format`` (see the module docstring) and
    return the path of the weights file. ``path`` is a file for attnlab/timm/torchvision (a
    directory gets ``model.safetensors`` inside) and a directory for hf."""
    if format not in SAVE_FORMATS:
        raise UnsupportedError(f"unknown checkpoint format {format!r}; choose one of {', '.join(SAVE_FORMATS)}")
    path = Path(path)
    state = model.state_dict()
    cfg = getattr(model, "cfg", None)
    if format != "attnlab" and cfg is None:
        raise UnsupportedError(f"saving in the {format} layout needs a Vision Transformer (a model with .cfg)")

    if format == "hf":
        _require(cfg, "Hugging Face ViT", class_token=True, global_pool="token", pos_embed="learn", patch_embed="conv",
                 pre_logits=False)
        if cfg.num_classes <= 0:
            raise UnsupportedError("cannot save a model without a head as ViTForImageClassification; "
                                   "save with format='attnlab'")
        dtype = str(next(iter(state.values())).dtype).replace("torch.", "")
        tensors = hf.from_ours(state, cfg)
        path.mkdir(parents=True, exist_ok=True)
        weights = path / "model.safetensors"
        save_safetensors_atomic(tensors, weights, metadata={"format": "pt"})
        atomic_write_json(path / "config.json", hf.make_config(cfg, cfg.num_classes, dtype))
        return weights

    if path.is_dir():
        path = path / "model.safetensors"
    if format == "attnlab":
        save_safetensors_atomic(ours.from_ours(state), path, metadata=ours.metadata_for(model))
    elif format == "timm":
        _require(cfg, "timm", patch_embed="conv")
        save_safetensors_atomic(timm.from_ours(state, cfg), path, metadata={"format": "pt"})
    else:
        _require(cfg, "torchvision", class_token=True, global_pool="token", pos_embed="learn", patch_embed="conv")
        save_safetensors_atomic(torchvision.from_ours(state, cfg), path, metadata={"format": "pt"})
    return path
