"""Saving a model's weights in our layout or a foreign one, always as safetensors written
atomically (a crash leaves the old file or the new one, never half of one).

- ``"attnlab"``: our names; the config as JSON in the metadata (``attnlab_config``) and the
  model name (``attnlab_model``), so :func:`attnlab.checkpoints.load_model` can rebuild it.
- ``"timm"``: timm's names; ``timm.create_model(...).load_state_dict(load_file(path))``.
- ``"torchvision"``: torchvision's names (class-token models only).
- ``"hf"``: a directory with ``model.safetensors`` and ``config.json`` that
  ``transformers.ViTForImageClassification.from_pretrained(dir)`` loads offline.
- ``"hf_detr"``, ``"detr"``: a DETR as Hugging Face's ``DetrForObjectDetection`` directory or
  as the original repository's ``{"model": state_dict}`` file (:mod:`attnlab.checkpoints.detr`).

Each format is one :class:`Saver` in :data:`SAVERS`: the tensors under its names (refusing a
model it cannot hold) and how they are written.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn

from attnlab.checkpoints import hf, ours, timm, torchvision
from attnlab.checkpoints.detr import HF_LAYOUT, ORIGINAL_LAYOUT
from attnlab.errors import UnsupportedError
from attnlab.io import atomic_write_json, save_safetensors_atomic
from attnlab.models.capabilities import VIT_LAYOUT, layout_of

# What each foreign ViT layout needs of a ViTConfig (the rest of its layout is checked key by key).
NEEDS = {
    "timm": dict(patch_embed="conv"),
    "torchvision": dict(class_token=True, global_pool="token", pos_embed="learn", patch_embed="conv"),
    "hf": dict(class_token=True, global_pool="token", pos_embed="learn", patch_embed="conv", pre_logits=False),
}
VIT_LAYOUTS = {"timm": timm, "torchvision": torchvision, "hf": hf}


@dataclass(frozen=True)
class Saver:
    """One format: ``tensors(model)`` (UnsupportedError saying why it cannot hold ``model``) and
    ``write(model, tensors, path) -> the weights file``."""

    tensors: Callable[[nn.Module], dict[str, Tensor]]
    write: Callable[[nn.Module, dict[str, Tensor], Path], Path]


def _vit_tensors(fmt: str) -> Callable[[nn.Module], dict[str, Tensor]]:
    def tensors(model: nn.Module) -> dict[str, Tensor]:
        if layout_of(model) != VIT_LAYOUT:
            raise UnsupportedError(f"the {fmt} layout holds Vision Transformers only")
        cfg = model.cfg
        bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in NEEDS[fmt].items() if getattr(cfg, k) != v]
        if fmt == "hf" and cfg.num_classes <= 0:
            bad.append("num_classes=0 (ViTForImageClassification needs a head)")
        if bad:
            raise UnsupportedError(", ".join(bad))
        return VIT_LAYOUTS[fmt].from_ours(model.state_dict(), cfg)
    return tensors


def _file(metadata: Callable[[nn.Module], dict[str, str]]) -> Callable[[nn.Module, dict[str, Tensor], Path], Path]:
    """One safetensors file (a directory gets ``model.safetensors`` inside)."""
    def write(model: nn.Module, tensors: dict[str, Tensor], path: Path) -> Path:
        path = path / "model.safetensors" if path.is_dir() else path
        save_safetensors_atomic(tensors, path, metadata=metadata(model))
        return path
    return write


def _hf_dir(model: nn.Module, tensors: dict[str, Tensor], path: Path) -> Path:
    dtype = str(next(iter(tensors.values())).dtype).replace("torch.", "")
    path.mkdir(parents=True, exist_ok=True)
    save_safetensors_atomic(tensors, path / "model.safetensors", metadata={"format": "pt"})
    atomic_write_json(path / "config.json", hf.make_config(model.cfg, model.cfg.num_classes, dtype))
    return path / "model.safetensors"


def _plain(model: nn.Module) -> dict[str, str]:
    return {"format": "pt"}


SAVERS = {
    "attnlab": Saver(lambda model: ours.from_ours(model.state_dict()), _file(ours.metadata_for)),
    "timm": Saver(_vit_tensors("timm"), _file(_plain)),
    "torchvision": Saver(_vit_tensors("torchvision"), _file(_plain)),
    "hf": Saver(_vit_tensors("hf"), _hf_dir),
    HF_LAYOUT.NAME: Saver(HF_LAYOUT.tensors, HF_LAYOUT.write),
    ORIGINAL_LAYOUT.NAME: Saver(ORIGINAL_LAYOUT.tensors, ORIGINAL_LAYOUT.write),
}
SAVE_FORMATS = tuple(SAVERS)


def save_formats(model: nn.Module) -> list[str]:
    """The formats ``model`` can be saved in (``"attnlab"`` holds every model)."""
    ok = []
    for fmt, saver in SAVERS.items():
        with contextlib.suppress(UnsupportedError):
            saver.tensors(model)
            ok.append(fmt)
    return ok


def save_checkpoint(model: nn.Module, path: str | os.PathLike, format: str = "attnlab") -> Path:
    """Write ``model``'s weights to ``path`` in ``format`` (see the module docstring) and
    return the path of the weights file. ``path`` is a file for attnlab/timm/torchvision/detr
    (a directory gets ``model.safetensors`` inside) and a directory for hf/hf_detr. A format
    that cannot hold the model is refused in one line naming those that can
    (:func:`save_formats`)."""
    if format not in SAVERS:
        raise UnsupportedError(f"unknown checkpoint format {format!r}; choose one of {', '.join(SAVE_FORMATS)}")
    saver = SAVERS[format]
    try:
        tensors = saver.tensors(model)
    except UnsupportedError as e:
        can = " or ".join(repr(f) for f in save_formats(model))
        raise UnsupportedError(f"cannot save a {type(model).__name__} in the {format} layout: {e}; "
                               f"it can be saved with format={can}") from None
    return saver.write(model, tensors, Path(path))
