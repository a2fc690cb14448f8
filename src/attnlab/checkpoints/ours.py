"""attnlab's own checkpoint format: a safetensors file of the model's state dict (the native
names, see :mod:`attnlab.models.vit`) whose header metadata carries the model config as JSON
under ``attnlab_config`` and the model name under ``attnlab_model``. The config may also sit
in a JSON file of the same stem beside the weights (``model.safetensors`` + ``model.json``),
either as ``{"attnlab_config": {...}, "attnlab_model": ...}`` or as the bare config."""

from __future__ import annotations

import dataclasses
import json
import re

from torch import Tensor

from attnlab.errors import CheckpointError

NAME = "attnlab"
#: the input its weights expect: a run records its own; a bare checkpoint states none
INPUT = None
CONFIG_KEY = "attnlab_config"
MODEL_KEY = "attnlab_model"

_SIGNATURE = re.compile(r"^(pos_embed\.weight$|blocks\.\d+\.(self_attn|ff)\.)")


def score(keys) -> int:
    return sum(bool(_SIGNATURE.match(k)) for k in keys)


def to_ours(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    return dict(tensors), {k: k for k in tensors}


def from_ours(state: dict[str, Tensor], cfg=None) -> dict[str, Tensor]:
    return dict(state)


def metadata_for(model) -> dict[str, str]:
    """safetensors metadata: the config as JSON, the model's name, the library version."""
    from attnlab import __version__

    meta = {"format": "pt", "attnlab_version": __version__, MODEL_KEY: str(getattr(model, "name", type(model).__name__))}
    cfg = getattr(model, "cfg", None)
    if cfg is not None and dataclasses.is_dataclass(cfg):
        meta[CONFIG_KEY] = json.dumps(dataclasses.asdict(cfg))
    return meta


def config_of(metadata: dict[str, str], config: dict | None, source: str) -> tuple[dict | None, str | None]:
    """(config dict, model name) carried by a checkpoint in our format, or (None, None)."""
    if CONFIG_KEY in metadata:
        try:
            cfg = json.loads(metadata[CONFIG_KEY])
        except ValueError as e:
            raise CheckpointError(f"checkpoint {source!r}: its {CONFIG_KEY} metadata is not valid JSON ({e})") from None
        return cfg, metadata.get(MODEL_KEY)
    if isinstance(config, dict):
        if isinstance(config.get(CONFIG_KEY), dict):
            return config[CONFIG_KEY], config.get(MODEL_KEY)
        if "embed_dim" in config and "depth" in config and "model_type" not in config:
            return config, None
    return None, None
