"""Reading checkpoint files safely: safetensors, PyTorch pickles restricted to tensors
(``weights_only=True``), NumPy ``.npz`` without pickles, and Hugging Face style directories.

Everything that goes wrong while reading becomes a :class:`~attnlab.errors.CheckpointError`
that names the file and says what is wrong with it. Nothing here knows about model layouts;
:func:`read_checkpoint` returns a flat ``{name: tensor}`` dict plus whatever configuration the
file carries.
"""

from __future__ import annotations

import argparse
import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from attnlab.errors import CheckpointError
from attnlab.io import load_torch_file

SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
NUMPY_SUFFIXES = (".npz",)

# Directory layouts, tried in this order (the Hugging Face names first).
DIR_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
             "pytorch_model.bin.index.json")

# Keys under which training scripts commonly store the weights, most specific first.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "params")
# Prefixes added by wrappers: DistributedDataParallel, torch.compile, Lightning modules.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
# Classes a weights-only load may build beyond tensors and plain containers: exactly timm's
# allow-list (timm.models._helpers._torch_load), the argparse.Namespace that timm's train.py
# stores under "args" in model_best.pth.tar.
SAFE_GLOBALS = (argparse.Namespace,)


@dataclass
class RawCheckpoint:
    """A checkpoint as read from disk, before any layout conversion.

    ``tensors``: flat name -> tensor; ``metadata``: safetensors header metadata (str -> str);
    ``config``: a ``config.json`` found beside the weights (Hugging Face) or ``None``;
    ``notes``: what was unwrapped or skipped on the way, for the load report.
    """

    tensors: dict[str, Tensor]
    source: str
    file_format: str
    metadata: dict[str, str] = field(default_factory=dict)
    config: dict | None = None
    config_path: str | None = None
    notes: list[str] = field(default_factory=list)


def _bad(path, why: str) -> CheckpointError:
    return CheckpointError(f"cannot read checkpoint {str(path)!r}: {why}")


def _sniff(path: Path) -> str:
    """Guess a file's kind from its first bytes when the suffix says nothing."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:2] == b"PK":  # a zip: a PyTorch archive (data.pkl inside) or a NumPy .npz
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile as e:
            raise _bad(path, f"corrupt zip archive ({e})") from None
        if names and all(n.endswith(".npy") for n in names):
            return "numpy"
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        return "safetensors"
    return "torch"  # legacy (non-zip) torch.save files


def file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return "safetensors"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix in NUMPY_SUFFIXES:
        return "numpy"
    return _sniff(path)


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError (truncated, bad header), OSError
        raise _bad(path, f"not a valid safetensors file, it may be truncated or corrupt ({_first_line(e)})") from None
    return tensors, metadata


def read_torch(path: Path):
    """``torch.load`` with ``weights_only=True`` (:func:`attnlab.io.load_torch_file`): tensors and
    plain containers only, plus what timm allow-lists (:data:`SAFE_GLOBALS`); any other pickled
    object (a class instance, a function) is refused, never executed."""
    with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
        return load_torch_file(path, "checkpoint")


def read_numpy(path: Path) -> dict[str, Tensor]:
    import numpy as np

    try:
        with np.load(str(path), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:  # object arrays would need pickle
        raise _bad(path, f"the .npz holds something other than plain numeric arrays ({_first_line(e)})") from None
    except Exception as e:  # BadZipFile, EOFError, OSError
        raise _bad(path, f"not a readable .npz archive, it may be truncated or corrupt ({_first_line(e)})") from None
    out = {}
    for k, a in arrays.items():
        if a.dtype.kind not in "fiub":
            raise _bad(path, f"array {k!r} has dtype {a.dtype}, not a numeric tensor")
        out[k] = torch.from_numpy(np.ascontiguousarray(a))
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _read_sharded(index_path: Path, reader) -> tuple[dict[str, Tensor], dict[str, str]]:
    try:
        index = json.loads(index_path.read_text())
        shards = sorted(set(index["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise _bad(index_path, f"not a valid shard index ({_first_line(e)})") from None
    tensors: dict[str, Tensor] = {}
    metadata: dict[str, str] = {}
    for name in shards:
        part, meta = reader(index_path.parent / name)
        tensors.update(part)
        metadata.update(meta)
    return tensors, metadata


def _read_config(path: Path) -> dict:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise _bad(path, f"config is not valid JSON ({_first_line(e)})") from None
    if not isinstance(cfg, dict):
        raise _bad(path, "config is not a JSON object")
    return cfg


def unwrap(obj, source: str) -> tuple[dict[str, Tensor], list[str]]:
    """Find the state dict inside what ``torch.load`` returned: descend into the usual
    container keys (``state_dict``, ``model``, ...), drop non-tensor entries (reported) and
    strip wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``) shared by every key."""
    notes: list[str] = []
    path = []
    while isinstance(obj, Mapping) and not _is_state_dict(obj):
        inner = next((k for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        path.append(inner)
        obj = obj[inner]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {source!r} holds a {type(obj).__name__}, not a state dict of tensors")
    if path:
        notes.append("unwrapped container key " + " -> ".join(repr(p) for p in path))
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    skipped = [str(k) for k, v in obj.items() if not isinstance(v, Tensor)]
    if skipped:
        notes.append(f"ignored {len(skipped)} non-tensor entries: {', '.join(skipped[:5])}")
    if not tensors:
        raise CheckpointError(f"checkpoint {source!r} contains no tensors (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix):]: v for k, v in tensors.items()}
                notes.append(f"stripped the prefix {prefix!r}")
                changed = True
    return tensors, notes


def _is_state_dict(obj: Mapping) -> bool:
    """A mapping that is mostly tensors (a state dict), not a training-state container."""
    if not obj:
        return False
    n = sum(isinstance(v, Tensor) for v in obj.values())
    return n > 0 and n >= len(obj) // 2


def read_checkpoint(path: str | os.PathLike) -> RawCheckpoint:
    """Read a checkpoint file or directory (see the module docstring) into a :class:`RawCheckpoint`."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    config = config_path = None
    if path.is_dir():
        found = next((path / n for n in DIR_FILES if (path / n).is_file()), None)
        if found is None:
            raise CheckpointError(f"directory {str(path)!r} contains none of {', '.join(DIR_FILES)}")
        if (path / "config.json").is_file():
            config_path = path / "config.json"
            config = _read_config(config_path)
        weights = found
    else:
        weights = path
        # Our format may keep its config in a JSON file of the same stem; a file with a
        # Hugging Face name takes the config.json of its directory.
        beside = path.with_suffix(".json")
        if path.name in DIR_FILES and (path.parent / "config.json").is_file():
            beside = path.parent / "config.json"
        if beside.is_file() and beside != path:
            config_path, config = beside, _read_config(beside)
    notes: list[str] = []
    metadata: dict[str, str] = {}
    if weights.name.endswith(".index.json"):
        if "safetensors" in weights.name:
            tensors, metadata = _read_sharded(weights, read_safetensors)
            kind = "safetensors"
        else:
            tensors, metadata = _read_sharded(weights, lambda p: (unwrap(read_torch(p), str(p))[0], {}))
            kind = "torch"
    else:
        kind = file_kind(weights)
        if kind == "safetensors":
            tensors, metadata = read_safetensors(weights)
        elif kind == "numpy":
            tensors = read_numpy(weights)
        else:
            tensors, notes = unwrap(read_torch(weights), str(weights))
    if not tensors:
        raise _bad(weights, "it contains no tensors")
    return RawCheckpoint(tensors=tensors, source=str(weights), file_format=kind, metadata=metadata,
                         config=config, config_path=None if config_path is None else str(config_path), notes=notes)
