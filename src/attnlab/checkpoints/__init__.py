"""Checkpoints: our format (a run directory is one: :mod:`attnlab.checkpoints.rundir` reads it),
and loading what people already have.

:func:`load_checkpoint` reads a file, directory or run directory (safetensors, ``torch.load``
restricted to tensors, JAX ``.npz``), detects its layout (attnlab, timm, torchvision, Hugging
Face, JAX, DETR's Hugging Face and original layouts) from the key names, converts it to ours and
hands it to :func:`load_into`, the one strict loader: every key and shape checked against the
model (a learned position embedding of another grid resampled, a class head of another size left
fresh when asked) before anything is copied. :func:`load_model` builds the model from a
checkpoint that carries its config (or, for DETR, its shapes). :func:`save_checkpoint` writes
our layout or a foreign one.

One adapter per foreign layout (``timm``, ``torchvision``, ``hf``, ``jax``, and
:data:`~attnlab.checkpoints.detr.HF_LAYOUT` / ``ORIGINAL_LAYOUT``), each with ``score(keys)``,
``to_ours(tensors)`` and, where saving makes sense, a :class:`~attnlab.checkpoints.save.Saver`.
"""

from attnlab.checkpoints.io import RawCheckpoint, read_checkpoint
from attnlab.checkpoints.load import FORMATS, detect_format, load_checkpoint, load_into, load_model
from attnlab.checkpoints.save import SAVE_FORMATS, save_checkpoint

__all__ = [
    "FORMATS", "SAVE_FORMATS", "RawCheckpoint", "detect_format", "load_checkpoint", "load_into", "load_model",
    "read_checkpoint", "save_checkpoint",
]
