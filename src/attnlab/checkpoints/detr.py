"""DETR checkpoints in the two layouts people hold, both ways.

- ``hf_detr``: Hugging Face ``DetrForObjectDetection`` (``facebook/detr-resnet-50``). On disk:
  ``model.backbone.conv_encoder.model.*`` (timm's ResNet), ``model.input_projection``,
  ``model.query_position_embeddings``, ``model.{encoder,decoder}.layers.{i}.*`` with separate
  ``q_proj/k_proj/v_proj`` and ``out_proj``, ``fc1/fc2``, ``*_layer_norm``,
  ``model.decoder.layernorm``, ``class_labels_classifier``, ``bbox_predictor.layers.{i}``.
  transformers >= 5 names some modules differently in memory (``model.backbone.model.``,
  ``o_proj``, ``mlp.fc1``); those are read too, so a ``model.state_dict()`` loads.
- ``detr``: the original facebookresearch/detr checkpoints (``detr-r50-e632da11.pth``,
  ``{"model": state_dict}``): ``backbone.0.body.*`` (torchvision's ResNet), ``input_proj``,
  ``query_embed``, ``transformer.{encoder,decoder}.layers.{i}.*`` (``nn.MultiheadAttention``'s
  fused ``in_proj_weight`` = our ``qkv``, ``linear1/linear2``, ``norm1..3``),
  ``transformer.decoder.norm``, ``class_embed``, ``bbox_embed.layers.{i}``.

Our names are :class:`attnlab.models.detr.DETR`'s; the tables below rename both ways
(:class:`~attnlab.checkpoints.keys.Renames`), and q/k/v are split or stacked apart.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from attnlab.checkpoints.keys import Renames, block_indices
from attnlab.errors import CheckpointError, UnsupportedError
from attnlab.models.capabilities import DETR_LAYOUT, IMAGENET_MEAN, IMAGENET_STD, layout_of

HF, ORIGINAL = "hf_detr", "detr"

_E, _D = "encoder.{i}.", "decoder.{i}."
_HE, _HD = "model.encoder.layers.{i}.", "model.decoder.layers.{i}."
# Our name -> the Hugging Face on-disk name (q/k/v handled apart).
HF_RENAMES = Renames([
    ("backbone.", "model.backbone.conv_encoder.model."),
    ("input_proj.", "model.input_projection."),
    ("query_embed.", "model.query_position_embeddings."),
    (_E + "self_attn.proj.", _HE + "self_attn.out_proj."),
    (_E + "norm1.", _HE + "self_attn_layer_norm."),
    (_E + "ff.fc1.", _HE + "fc1."),
    (_E + "ff.fc2.", _HE + "fc2."),
    (_E + "norm2.", _HE + "final_layer_norm."),
    (_D + "self_attn.proj.", _HD + "self_attn.out_proj."),
    (_D + "norm1.", _HD + "self_attn_layer_norm."),
    (_D + "cross_attn.proj.", _HD + "encoder_attn.out_proj."),
    (_D + "norm2.", _HD + "encoder_attn_layer_norm."),
    (_D + "ff.fc1.", _HD + "fc1."),
    (_D + "ff.fc2.", _HD + "fc2."),
    (_D + "norm3.", _HD + "final_layer_norm."),
    ("decoder_norm.", "model.decoder.layernorm."),
    ("class_embed.", "class_labels_classifier."),
    ("bbox_embed.", "bbox_predictor."),
])
# The in-memory names of transformers >= 5, read only.
HF_MODERN = Renames([
    ("backbone.", "model.backbone.model."),
    (_E + "self_attn.proj.", _HE + "self_attn.o_proj."),
    (_E + "ff.fc1.", _HE + "mlp.fc1."),
    (_E + "ff.fc2.", _HE + "mlp.fc2."),
    (_D + "self_attn.proj.", _HD + "self_attn.o_proj."),
    (_D + "cross_attn.proj.", _HD + "encoder_attn.o_proj."),
    (_D + "ff.fc1.", _HD + "mlp.fc1."),
    (_D + "ff.fc2.", _HD + "mlp.fc2."),
])
_HF_QKV = re.compile(r"^model\.(?P<stack>encoder|decoder)\.layers\.(?P<i>\d+)\.(?P<attn>self_attn|encoder_attn)\."
                     r"(?P<n>q|k|v)_proj\.(?P<p>weight|bias)$")
_OUR_QKV = re.compile(r"^(?P<stack>encoder|decoder)\.(?P<i>\d+)\.(?P<attn>self_attn|cross_attn)\.qkv\.(?P<p>weight|bias)$")

_OE, _OD = "transformer.encoder.layers.{i}.", "transformer.decoder.layers.{i}."
ORIGINAL_RENAMES = Renames([
    ("backbone.", "backbone.0.body."),
    ("input_proj.", "input_proj."),
    ("query_embed.", "query_embed."),
    (_E + "self_attn.qkv.weight", _OE + "self_attn.in_proj_weight"),
    (_E + "self_attn.qkv.bias", _OE + "self_attn.in_proj_bias"),
    (_E + "self_attn.proj.", _OE + "self_attn.out_proj."),
    (_E + "ff.fc1.", _OE + "linear1."),
    (_E + "ff.fc2.", _OE + "linear2."),
    (_E + "norm1.", _OE + "norm1."),
    (_E + "norm2.", _OE + "norm2."),
    (_D + "self_attn.qkv.weight", _OD + "self_attn.in_proj_weight"),
    (_D + "self_attn.qkv.bias", _OD + "self_attn.in_proj_bias"),
    (_D + "self_attn.proj.", _OD + "self_attn.out_proj."),
    (_D + "cross_attn.qkv.weight", _OD + "multihead_attn.in_proj_weight"),
    (_D + "cross_attn.qkv.bias", _OD + "multihead_attn.in_proj_bias"),
    (_D + "cross_attn.proj.", _OD + "multihead_attn.out_proj."),
    (_D + "ff.fc1.", _OD + "linear1."),
    (_D + "ff.fc2.", _OD + "linear2."),
    (_D + "norm1.", _OD + "norm1."),
    (_D + "norm2.", _OD + "norm2."),
    (_D + "norm3.", _OD + "norm3."),
    ("decoder_norm.", "transformer.decoder.norm."),
    ("class_embed.", "class_embed."),
    ("bbox_embed.", "bbox_embed."),
])

_SIGNATURES = {HF: re.compile(r"^(model\.(backbone\.conv_encoder|input_projection|query_position_embeddings)|"
                              r"class_labels_classifier|bbox_predictor)"),
               ORIGINAL: re.compile(r"^(backbone\.0\.body\.|transformer\.(encoder|decoder)\.|query_embed\.|class_embed\.|"
                                    r"bbox_embed\.)")}


def _skip(key: str) -> bool:
    return key.endswith("num_batches_tracked")  # frozen BN keeps no counter


def hf_to_ours(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face names (on disk or in memory) -> ours; q/k/v stacked into ``qkv``.
    Keys with no counterpart keep their name (the load reports them as unexpected)."""
    out: dict[str, Tensor] = {}
    parts: dict[str, dict[str, Tensor]] = {}
    for k, v in tensors.items():
        if _skip(k):
            continue
        if m := _HF_QKV.match(k):
            attn = "self_attn" if m["attn"] == "self_attn" else "cross_attn"
            parts.setdefault(f"{m['stack']}.{m['i']}.{attn}.qkv.{m['p']}", {})[m["n"]] = v
            continue
        out[HF_RENAMES.to_ours(k) or HF_MODERN.to_ours(k) or k] = v
    for name, got in parts.items():
        if set(got) != {"q", "k", "v"}:
            raise CheckpointError(f"the checkpoint has only {'/'.join(sorted(got))} of the q/k/v projections for {name}")
        out[name] = torch.cat([got["q"], got["k"], got["v"]], dim=0)
    return out


def ours_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our names -> Hugging Face's on-disk names (what ``from_pretrained`` reads)."""
    out, rest = {}, {}
    for k, v in state.items():
        if m := _OUR_QKV.match(k):
            attn = "self_attn" if m["attn"] == "self_attn" else "encoder_attn"
            for n, t in zip("qkv", v.chunk(3, dim=0)):
                out[f"model.{m['stack']}.layers.{m['i']}.{attn}.{n}_proj.{m['p']}"] = t.contiguous()
        else:
            rest[k] = v
    return {**HF_RENAMES.export(rest, "Hugging Face's DetrForObjectDetection"), **out}


def original_to_ours(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {ORIGINAL_RENAMES.to_ours(k) or k: v for k, v in tensors.items() if not _skip(k)}


def ours_to_original(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return ORIGINAL_RENAMES.export(state, "the original DETR layout")


# --- configs -------------------------------------------------------------------------------------

def hf_config(cfg) -> dict:
    """A ``config.json`` for ``DetrForObjectDetection`` with the shapes of our DETRConfig ``cfg``.

    ``auxiliary_loss`` is written False whatever ``cfg.aux_loss``: Hugging Face's decoder with
    auxiliary losses feeds each layer the *normalised* output of the previous one (the original
    DETR normalises only the copies it predicts from), so True would change its outputs."""
    if cfg.backbone != "resnet50":
        raise UnsupportedError(f"Hugging Face's DETR has no {cfg.backbone!r} backbone (only ResNet-50 here); "
                               "save with format='attnlab'")
    return {
        "architectures": ["DetrForObjectDetection"], "model_type": "detr", "use_timm_backbone": True,
        "backbone": "resnet50", "use_pretrained_backbone": False, "num_channels": cfg.in_chans,
        "d_model": cfg.d_model, "encoder_layers": cfg.num_encoder_layers, "decoder_layers": cfg.num_decoder_layers,
        "encoder_attention_heads": cfg.num_heads, "decoder_attention_heads": cfg.num_heads,
        "encoder_ffn_dim": cfg.d_ff, "decoder_ffn_dim": cfg.d_ff, "num_queries": cfg.num_queries,
        "dropout": cfg.dropout, "activation_function": cfg.activation, "position_embedding_type": "sine",
        "auxiliary_loss": False, "id2label": {str(i): f"LABEL_{i}" for i in range(cfg.num_classes)},
    }


def config_from_hf(config: dict, source: str = "config.json") -> dict:
    """DETRConfig fields from a Hugging Face DETR ``config.json``; UnsupportedError for what we lack."""
    bad = []
    if config.get("position_embedding_type", "sine") != "sine":
        bad.append(f"position_embedding_type={config['position_embedding_type']!r}")
    if config.get("dilation"):
        bad.append("dilation=True (DC5)")
    backbone = config.get("backbone") or (config.get("backbone_config") or {}).get("backbone") or "resnet50"
    if backbone != "resnet50":
        bad.append(f"backbone={backbone!r}")
    if config.get("encoder_attention_heads", 8) != config.get("decoder_attention_heads", 8) or \
            config.get("encoder_ffn_dim", 2048) != config.get("decoder_ffn_dim", 2048):
        bad.append("different encoder and decoder heads or FFN sizes")
    if bad:
        raise UnsupportedError(f"{source}: attnlab's DETR does not support {', '.join(bad)}")
    labels = config.get("id2label") or {}
    return {"backbone": "resnet50", "in_chans": config.get("num_channels", 3), "d_model": config.get("d_model", 256),
            "num_heads": config.get("encoder_attention_heads", 8), "num_encoder_layers": config.get("encoder_layers", 6),
            "num_decoder_layers": config.get("decoder_layers", 6), "d_ff": config.get("encoder_ffn_dim", 2048),
            "dropout": config.get("dropout", 0.1), "activation": config.get("activation_function", "relu"),
            "num_queries": config.get("num_queries", 100), "num_classes": len(labels) if labels else 91}


def config_from_tensors(ours: dict[str, Tensor]) -> dict:
    """DETRConfig fields read off the shapes of a checkpoint without a config (its tensors in our
    names; the number of heads cannot be read: 8, the paper's, unless overridden)."""
    try:
        q, d = ours["query_embed.weight"].shape
        return {"backbone": "resnet50", "d_model": d, "num_queries": q,
                "num_classes": ours["class_embed.weight"].shape[0] - 1, "in_chans": ours["backbone.conv1.weight"].shape[1],
                "num_encoder_layers": len(block_indices(ours, "encoder.")),
                "num_decoder_layers": len(block_indices(ours, "decoder.")), "d_ff": ours["encoder.0.ff.fc1.weight"].shape[0]}
    except KeyError as e:
        raise CheckpointError(f"the DETR checkpoint has no {e.args[0]} (in our names); is it complete?") from None


# --- the two layouts as checkpoint adapters ------------------------------------------------------

class Layout:
    """One DETR layout as an adapter of :mod:`attnlab.checkpoints` (the same interface as the
    ViT adapters: ``NAME``, ``score``, ``to_ours``, plus ``model_config`` for ``load_model`` and
    ``tensors``/``write`` for ``save_checkpoint``)."""

    INPUT = (IMAGENET_MEAN, IMAGENET_STD)  # both layouts' weights: ImageNet's mean and std (DetrImageProcessor's)

    def __init__(self, name: str, read: Callable, export: Callable) -> None:
        self.NAME, self._read, self._export = name, read, export

    def score(self, keys) -> int:
        return sum(bool(_SIGNATURES[self.NAME].match(k)) for k in keys)

    def to_ours(self, tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
        out = self._read(tensors)
        return out, {k: k for k in out}

    def model_config(self, raw) -> tuple[str, dict]:
        """(registry name, DETRConfig fields) of a checkpoint: its config.json when it has one,
        else its tensors' shapes."""
        if raw.config is not None and raw.config.get("model_type") == "detr":
            return "detr_resnet50", config_from_hf(raw.config, raw.config_path or raw.source)
        return "detr_resnet50", config_from_tensors(self.to_ours(raw.tensors)[0])

    def tensors(self, model: nn.Module) -> dict[str, Tensor]:
        """``model``'s weights under this layout's names; UnsupportedError if it cannot hold them."""
        if layout_of(model) != DETR_LAYOUT:
            raise UnsupportedError(f"the {self.NAME} layout holds DETR models only")
        switches = [s for s, on in (("cross_attention='deformable'", model.cfg.cross_attention != "dense"),
                                    ("denoising=True", model.cfg.denoising)) if on]
        if switches:
            raise UnsupportedError(f"the {self.NAME} layout holds the original DETR, not one with {' and '.join(switches)}; "
                                   "save with format='attnlab'")
        if self.NAME == HF:
            hf_config(model.cfg)  # refuses what Hugging Face's DETR cannot express
        return self._export(model.state_dict())

    def write(self, model: nn.Module, tensors: dict[str, Tensor], path: Path) -> Path:
        """``hf_detr``: a directory (model.safetensors + config.json); ``detr``: the original
        ``torch.save({"model": state_dict})`` file, tensors only. Returns the weights file."""
        from attnlab.io import atomic_write, atomic_write_json, save_safetensors_atomic

        if self.NAME == HF:
            path.mkdir(parents=True, exist_ok=True)
            save_safetensors_atomic(tensors, path / "model.safetensors", metadata={"format": "pt"})
            atomic_write_json(path / "config.json", hf_config(model.cfg))
            return path / "model.safetensors"
        with atomic_write(path, "wb") as f:
            torch.save({"model": tensors}, f)
        return path


HF_LAYOUT = Layout(HF, hf_to_ours, ours_to_hf)
ORIGINAL_LAYOUT = Layout(ORIGINAL, original_to_ours, ours_to_original)
