"""torchvision's ``VisionTransformer`` layout (``torchvision.models.vit_b_16`` and friends).

The attention is an ``nn.MultiheadAttention`` whose ``in_proj_weight`` stacks Q, K, V in the
same order as our fused ``qkv``; the MLP is an ``nn.Sequential`` (``mlp.0`` and ``mlp.3``,
``mlp.linear_1`` / ``mlp.linear_2`` in checkpoints from torchvision < 0.12). torchvision
always uses a class token and classifies from it; ``representation_size`` adds a
pre-logits Linear + tanh (``heads.pre_logits``).
"""

from __future__ import annotations

import re

from torch import Tensor

from attnlab.checkpoints.keys import Renames
from attnlab.models.capabilities import IMAGENET_MEAN, IMAGENET_STD

NAME = "torchvision"
#: the input its weights expect, pixels in [0, 1] (torchvision's ViT transforms: ImageNet's mean and std)
INPUT = (IMAGENET_MEAN, IMAGENET_STD)

_L = "encoder.layers.encoder_layer_{i}."
RENAMES = Renames([
    ("cls_token", "class_token"),
    ("patch_embed.proj.", "conv_proj."),
    ("pos_embed.weight", "encoder.pos_embedding"),
    ("blocks.{i}.norm1.", _L + "ln_1."),
    ("blocks.{i}.self_attn.qkv.weight", _L + "self_attention.in_proj_weight"),
    ("blocks.{i}.self_attn.qkv.bias", _L + "self_attention.in_proj_bias"),
    ("blocks.{i}.self_attn.proj.", _L + "self_attention.out_proj."),
    ("blocks.{i}.norm2.", _L + "ln_2."),
    ("blocks.{i}.ff.fc1.", _L + "mlp.0."),
    ("blocks.{i}.ff.fc2.", _L + "mlp.3."),
    ("norm.", "encoder.ln."),
    ("pre_logits.fc.", "heads.pre_logits."),
    ("head.", "heads.head."),
])
# torchvision < 0.12 named the MLP layers; only read, never written.
LEGACY = Renames([
    ("blocks.{i}.ff.fc1.", _L + "mlp.linear_1."),
    ("blocks.{i}.ff.fc2.", _L + "mlp.linear_2."),
])

_SIGNATURE = re.compile(
    r"^(class_token$|conv_proj\.|encoder\.pos_embedding$|encoder\.layers\.encoder_layer_\d+\.|encoder\.ln\.|heads\.)")


def score(keys) -> int:
    return sum(bool(_SIGNATURE.match(k)) for k in keys)


def to_ours(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    out, origin = {}, {}
    for k, v in tensors.items():
        new = RENAMES.to_ours(k) or LEGACY.to_ours(k) or k
        out[new], origin[new] = v, k
    return out, origin


def from_ours(state: dict[str, Tensor], cfg=None) -> dict[str, Tensor]:
    """Our state dict in torchvision's names; UnsupportedError for keys it has no place for.
    torchvision always classifies from a class token: :data:`attnlab.checkpoints.save.NEEDS`
    refuses other models first, and says which formats can hold them."""
    return RENAMES.export(state, "torchvision's VisionTransformer", advice="")
