"""Checkpoints: our format, and loading what people already have.

:func:`load_checkpoint` reads a file or directory (safetensors, ``torch.load`` restricted
to tensors, JAX ``.npz``), detects its layout (attnlab, timm, torchvision, Hugging Face,
JAX) from the key names, converts it to ours, checks every key and shape against the model
(resampling a learned position embedding of another grid) and only then copies it in.
:func:`load_model` builds the model from a checkpoint that carries its config.
:func:`save_checkpoint` writes our layout or timm's, torchvision's or Hugging Face's.

One adapter module per foreign layout (``timm``, ``torchvision``, ``hf``, ``jax``), each
with ``score(keys)``, ``to_ours(tensors)`` and, where exporting makes sense, ``from_ours``.
"""

from attnlab.checkpoints.io import RawCheckpoint, read_checkpoint
from attnlab.checkpoints.load import FORMATS, detect_format, load_checkpoint, load_model
from attnlab.checkpoints.save import SAVE_FORMATS, save_checkpoint

__all__ = [
    "FORMATS", "SAVE_FORMATS", "RawCheckpoint", "detect_format", "load_checkpoint", "load_model",
    "read_checkpoint", "save_checkpoint",
]
