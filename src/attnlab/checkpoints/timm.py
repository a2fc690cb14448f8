"""timm's VisionTransformer layout (``timm.models.vision_transformer``).

timm and attnlab agree on most names; they differ in the attention and MLP module names and
in the position embedding, a bare parameter in timm. Older timm versions had a pre-logits
layer ``pre_logits.fc`` (Linear + tanh); current ones have none, so a model with pre-logits
cannot be exported to timm.
"""

from __future__ import annotations

import re

from torch import Tensor

from attnlab.checkpoints.keys import Renames

NAME = "timm"
#: the input its weights expect: timm's differ per model name, so the model's own pretrained_cfg says
INPUT = None

RENAMES = Renames([
    ("pos_embed.weight", "pos_embed"),
    ("blocks.{i}.self_attn.", "blocks.{i}.attn."),
    ("blocks.{i}.ff.", "blocks.{i}.mlp."),
    ("cls_token", "cls_token"),
    ("patch_embed.proj.", "patch_embed.proj."),
    ("blocks.{i}.norm1.", "blocks.{i}.norm1."),
    ("blocks.{i}.norm2.", "blocks.{i}.norm2."),
    ("norm.", "norm."),
    ("fc_norm.", "fc_norm."),
    ("head.", "head."),
])

# Keys only timm writes (ours say self_attn / ff / pos_embed.weight).
_SIGNATURE = re.compile(r"^(pos_embed$|blocks\.\d+\.(attn|mlp)\.)")


def score(keys) -> int:
    return sum(bool(_SIGNATURE.match(k)) for k in keys)


def to_ours(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Rename to our layout; keys with no counterpart keep their name (they are reported as
    unexpected). Returns the tensors and ``{our key: source key}``."""
    out, origin = {}, {}
    for k, v in tensors.items():
        if k.startswith("pre_logits.fc."):  # timm < 0.9
            new = k
        else:
            new = RENAMES.to_ours(k) or k
        out[new], origin[new] = v, k
    return out, origin


def from_ours(state: dict[str, Tensor], cfg=None) -> dict[str, Tensor]:
    """Our state dict in timm's names; UnsupportedError for keys it has no place for
    (:func:`attnlab.checkpoints.save.save_checkpoint` says which formats can hold the model)."""
    return RENAMES.export(state, "timm's VisionTransformer", advice="")
