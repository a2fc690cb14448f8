"""Hugging Face ``transformers`` ViT layout (``ViTModel`` / ``ViTForImageClassification``)
and its ``config.json``.

On disk the weights are named ``vit.embeddings.*``, ``vit.encoder.layer.{i}.*``,
``vit.layernorm.*`` and ``classifier.*`` (``ViTModel`` drops the ``vit.`` prefix and may
carry a pooler, ``pooler.dense`` + tanh, which is our pre-logits layer). Query, key and value
are separate Linear layers that we stack into one ``qkv``. Recent ``transformers`` versions
name the modules differently in memory (``layers.{i}.attention.q_proj``, ``mlp.fc1``, ...);
those names are accepted too, so a ``torch.save(model.state_dict())`` also loads.

Hugging Face configurations use ``layer_norm_eps = 1e-12`` where timm and the JAX reference
use 1e-6: :func:`model_overrides` carries the checkpoint's value into our config.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from attnlab.checkpoints.keys import Renames
from attnlab.errors import UnsupportedError
from attnlab.models.capabilities import HALF_MEAN, HALF_STD

NAME = "hf"
#: the input its weights expect, pixels in [0, 1] (ViTImageProcessor's default: mean = std = 0.5)
INPUT = (HALF_MEAN, HALF_STD)

_L = "encoder.layer.{i}."
# Our name -> the on-disk name under the ``vit.`` prefix (q/k/v handled apart).
RENAMES = Renames([
    ("cls_token", "embeddings.cls_token"),
    ("pos_embed.weight", "embeddings.position_embeddings"),
    ("patch_embed.proj.", "embeddings.patch_embeddings.projection."),
    ("blocks.{i}.norm1.", _L + "layernorm_before."),
    ("blocks.{i}.self_attn.proj.", _L + "attention.output.dense."),
    ("blocks.{i}.norm2.", _L + "layernorm_after."),
    ("blocks.{i}.ff.fc1.", _L + "intermediate.dense."),
    ("blocks.{i}.ff.fc2.", _L + "output.dense."),
    ("norm.", "layernorm."),
    ("pre_logits.fc.", "pooler.dense."),
])
# The in-memory names of transformers >= 5, read only.
_N = "layers.{i}."
MODERN = Renames([
    ("blocks.{i}.norm1.", _N + "layernorm_before."),
    ("blocks.{i}.self_attn.proj.", _N + "attention.o_proj."),
    ("blocks.{i}.norm2.", _N + "layernorm_after."),
    ("blocks.{i}.ff.fc1.", _N + "mlp.fc1."),
    ("blocks.{i}.ff.fc2.", _N + "mlp.fc2."),
])
_QKV = re.compile(
    r"^(?:encoder\.layer\.(?P<i>\d+)\.attention\.attention\.(?P<n>query|key|value)"
    r"|layers\.(?P<j>\d+)\.attention\.(?P<m>q|k|v)_proj)\.(?P<p>weight|bias)$")
_ORDER = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}

# Names only a Hugging Face ViT uses (BERT shares encoder.layer.{i} but says attention.self).
_SIGNATURE = re.compile(
    r"^(vit\.)?(embeddings\.(cls_token$|position_embeddings$|patch_embeddings\.)"
    r"|encoder\.layer\.\d+\.(attention\.attention\.|layernorm_before\.|layernorm_after\.)"
    r"|layers\.\d+\.(attention\.[qkvo]_proj\.|layernorm_before\.|layernorm_after\.))")


def score(keys) -> int:
    return sum(bool(_SIGNATURE.match(k)) for k in keys)


def to_ours(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    out, origin = {}, {}
    parts: dict[tuple[int, str], dict[int, tuple[str, Tensor]]] = {}
    for k, v in tensors.items():
        body = k[4:] if k.startswith("vit.") else k
        if body.startswith("classifier."):
            new = "head." + body[len("classifier."):]
        elif m := _QKV.match(body):
            i = int(m.group("i") or m.group("j"))
            parts.setdefault((i, m.group("p")), {})[_ORDER[m.group("n") or m.group("m")]] = (k, v)
            continue
        else:
            new = RENAMES.to_ours(body) or MODERN.to_ours(body) or k
        out[new], origin[new] = v, k
    for (i, p), got in parts.items():
        if len(got) == 3:  # stack Q, K, V into our fused projection
            new = f"blocks.{i}.self_attn.qkv.{p}"
            out[new] = torch.cat([got[0][1], got[1][1], got[2][1]], dim=0)
            origin[new] = " + ".join(got[j][0] for j in range(3))
        else:  # incomplete: report the pieces as they are
            for name, v in got.values():
                out[name], origin[name] = v, name
    return out, origin


def from_ours(state: dict[str, Tensor], cfg=None) -> dict[str, Tensor]:
    """Our state dict in the on-disk names of ``ViTForImageClassification``."""
    out, lost = {}, []
    for k, v in state.items():
        if k.startswith("head."):
            out["classifier." + k[5:]] = v
        elif m := re.match(r"^blocks\.(\d+)\.self_attn\.qkv\.(weight|bias)$", k):
            for name, part in zip(("query", "key", "value"), v.chunk(3, dim=0)):
                out[f"vit.encoder.layer.{m.group(1)}.attention.attention.{name}.{m.group(2)}"] = part
        elif (new := RENAMES.from_ours(k)) is not None and not k.startswith("pre_logits."):
            out["vit." + new] = v
        else:
            lost.append(k)
    if lost:
        raise UnsupportedError(f"Hugging Face's ViTForImageClassification has no place for {', '.join(lost[:5])}")
    return out


# --- config.json ---------------------------------------------------------------------------

# Our ViT uses the exact (erf) GELU, which is transformers' "gelu".
ACTIVATIONS = ("gelu",)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


def config_summary(config: dict) -> dict:
    """The architecture a Hugging Face ViT config.json describes, in our field names."""
    if config.get("model_type") not in (None, "vit"):
        raise UnsupportedError(f"config.json describes a {config.get('model_type')!r} model, not a ViT ('vit')")
    c = config.get("hidden_size", 768)
    out = {
        "embed_dim": c,
        "depth": config.get("num_hidden_layers", 12),
        "num_heads": config.get("num_attention_heads", 12),
        "patch_size": _pair(config.get("patch_size", 16)),
        "img_size": _pair(config.get("image_size", 224)),
        "in_chans": config.get("num_channels", 3),
        "mlp_hidden": config.get("intermediate_size", 3072),
        "qkv_bias": bool(config.get("qkv_bias", True)),
        "norm_eps": float(config.get("layer_norm_eps", 1e-12)),
        "activation": config.get("hidden_act", "gelu"),
    }
    labels = config.get("id2label")
    out["num_classes"] = int(config.get("num_labels", len(labels) if labels else 2))
    return out


def model_overrides(config: dict, num_classes: int | None = None) -> dict:
    """Keyword arguments for our ViT config that reproduce a Hugging Face ViT."""
    s = config_summary(config)
    act = s["activation"]
    if act not in ACTIVATIONS:
        raise UnsupportedError(f"config.json uses hidden_act={act!r}; attnlab's ViT uses the exact GELU ('gelu')")
    if s["mlp_hidden"] % s["embed_dim"]:
        ratio = s["mlp_hidden"] / s["embed_dim"]
    else:
        ratio = float(s["mlp_hidden"] // s["embed_dim"])
    img = s["img_size"] if s["img_size"][0] != s["img_size"][1] else s["img_size"][0]
    patch = s["patch_size"][0]
    if s["patch_size"][0] != s["patch_size"][1]:
        raise UnsupportedError(f"non-square patches {s['patch_size']} are not supported")
    return dict(
        img_size=img, patch_size=patch, in_chans=s["in_chans"], embed_dim=s["embed_dim"], depth=s["depth"],
        num_heads=s["num_heads"], mlp_ratio=ratio, qkv_bias=s["qkv_bias"], norm_eps=s["norm_eps"],
        num_classes=s["num_classes"] if num_classes is None else num_classes,
        class_token=True, global_pool="token", pos_embed="learn", patch_embed="conv",
    )


def make_config(cfg, num_classes: int, dtype: str = "float32") -> dict:
    """A ``config.json`` for ``transformers.ViTForImageClassification`` matching our config."""
    img = _pair(cfg.img_size)
    patch = _pair(cfg.patch_size)
    c = cfg.embed_dim
    return {
        "architectures": ["ViTForImageClassification"],
        "model_type": "vit",
        "hidden_size": c,
        "num_hidden_layers": cfg.depth,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": int(c * cfg.mlp_ratio),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": float(cfg.norm_eps),
        "image_size": img[0] if img[0] == img[1] else list(img),
        "patch_size": patch[0] if patch[0] == patch[1] else list(patch),
        "num_channels": cfg.in_chans,
        "qkv_bias": bool(cfg.qkv_bias),
        "encoder_stride": patch[0],
        "id2label": {str(i): f"LABEL_{i}" for i in range(num_classes)},
        "label2id": {f"LABEL_{i}": i for i in range(num_classes)},
        "dtype": dtype,
    }
