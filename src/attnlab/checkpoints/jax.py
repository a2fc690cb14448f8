"""The JAX/Flax reference layout: ``.npz`` files of google-research/vision_transformer
(``Transformer/encoderblock_{i}/...``) and of big_vision (``params/`` prefix, position
embedding at the top, sub-module numbering shifted, optionally all blocks stacked in one
``Transformer/encoderblock/`` array).

Flax stores a Dense kernel as (in, out), the transpose of a PyTorch Linear weight, a Conv
kernel as (H, W, in, out), and the attention projections with explicit heads: query, key and
value kernels (C, heads, head_dim) and biases (heads, head_dim), the output kernel
(heads, head_dim, C). Names (per block, reference / big_vision):

    LayerNorm_0/{scale,bias}                       -> norm1
    MultiHeadDotProductAttention_1 / _0            -> self_attn (query, key, value, out)
    LayerNorm_2 / LayerNorm_1                      -> norm2
    MlpBlock_3 / MlpBlock_0 /Dense_{0,1}           -> ff.fc1, ff.fc2

and ``cls``, ``embedding``, ``Transformer/posembed_input/pos_embedding`` (big_vision:
``pos_embedding``), ``Transformer/encoder_norm``, ``pre_logits``, ``head``.

Note that Flax's ``nn.gelu`` is the tanh approximation; models trained with it differ very
slightly from ones evaluated with the exact GELU (timm and attnlab's default).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from attnlab.models.capabilities import HALF_MEAN, HALF_STD

NAME = "jax"
#: the input its weights expect, pixels in [0, 1] (big_vision maps pixels to [-1, 1]: mean = std = 0.5)
INPUT = (HALF_MEAN, HALF_STD)

PREFIXES = ("opt/target/", "params/img/", "params/")
_SIGNATURE = re.compile(r"(^|/)(embedding/kernel|cls|Transformer/|pos_embedding|head/kernel|pre_logits/kernel)")


def score(keys) -> int:
    return sum(bool(_SIGNATURE.search(k)) for k in keys if "/" in k or k == "cls")


def _prefix(keys) -> str:
    for p in PREFIXES:
        if any(k.startswith(p + "embedding/") for k in keys):
            return p
    return ""


def _dense(w: Tensor) -> Tensor:  # Flax (in, out) -> PyTorch (out, in)
    return w.t() if w.dim() == 2 else w


def to_ours(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    prefix = _prefix(tensors)
    src = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    used: set[str] = set()

    def take(name: str) -> Tensor | None:
        if name in src:
            used.add(name)
            return src[name]
        return None

    def put(ours: str, value: Tensor | None, *names: str) -> None:
        if value is not None:
            out[ours] = value.contiguous()
            origin[ours] = " + ".join(prefix + n for n in names)

    put("cls_token", take("cls"), "cls")
    pos_name = "pos_embedding" if "pos_embedding" in src else "Transformer/posembed_input/pos_embedding"
    pos = take(pos_name)
    if pos is not None and pos.dim() == 2:  # (N, C)
        pos = pos[None]
    put("pos_embed.weight", pos, pos_name)
    k = take("embedding/kernel")
    if k is not None and k.dim() == 4:  # (p, p, in, C) -> (C, in, p, p)
        k = k.permute(3, 2, 0, 1)
    put("patch_embed.proj.weight", k, "embedding/kernel")
    put("patch_embed.proj.bias", take("embedding/bias"), "embedding/bias")
    for ln, ours in (("Transformer/encoder_norm", "norm"), ("pre_logits", "pre_logits.fc"), ("head", "head")):
        scale_or_kernel = "scale" if ln.endswith("norm") else "kernel"
        w = take(f"{ln}/{scale_or_kernel}")
        put(f"{ours}.weight", w if ln.endswith("norm") or w is None else _dense(w), f"{ln}/{scale_or_kernel}")
        put(f"{ours}.bias", take(f"{ln}/bias"), f"{ln}/bias")

    # Blocks: one group per block, or all blocks stacked along a leading axis (big_vision scan).
    stacked = any(k.startswith("Transformer/encoderblock/") for k in src)
    if stacked:
        depth = next(v.shape[0] for k, v in src.items() if k.startswith("Transformer/encoderblock/"))
    else:
        depth = 1 + max((int(m.group(1)) for k in src if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))), default=-1)
    for i in range(depth):
        bp = "Transformer/encoderblock/" if stacked else f"Transformer/encoderblock_{i}/"
        big_vision = f"{bp}MultiHeadDotProductAttention_0/query/kernel" in src
        mha = bp + ("MultiHeadDotProductAttention_0/" if big_vision else "MultiHeadDotProductAttention_1/")
        ln2 = bp + ("LayerNorm_1/" if big_vision else "LayerNorm_2/")
        mlp = bp + ("MlpBlock_0/" if big_vision else "MlpBlock_3/")

        def get(name: str, i: int = i) -> Tensor | None:
            v = take(name)
            return v[i] if (v is not None and stacked) else v

        o = f"blocks.{i}."
        put(o + "norm1.weight", get(bp + "LayerNorm_0/scale"), bp + "LayerNorm_0/scale")
        put(o + "norm1.bias", get(bp + "LayerNorm_0/bias"), bp + "LayerNorm_0/bias")
        qkv_w = [get(f"{mha}{n}/kernel") for n in ("query", "key", "value")]
        if all(w is not None for w in qkv_w):  # (C, H, D) -> (H*D, C), stacked Q, K, V
            put(o + "self_attn.qkv.weight", torch.cat([w.reshape(w.shape[0], -1).t() for w in qkv_w]),
                *(f"{mha}{n}/kernel" for n in ("query", "key", "value")))
        qkv_b = [get(f"{mha}{n}/bias") for n in ("query", "key", "value")]
        if all(b is not None for b in qkv_b):
            put(o + "self_attn.qkv.bias", torch.cat([b.reshape(-1) for b in qkv_b]),
                *(f"{mha}{n}/bias" for n in ("query", "key", "value")))
        w = get(mha + "out/kernel")
        if w is not None:  # (H, D, C) -> (C, H*D)
            w = w.reshape(-1, w.shape[-1]).t()
        put(o + "self_attn.proj.weight", w, mha + "out/kernel")
        put(o + "self_attn.proj.bias", get(mha + "out/bias"), mha + "out/bias")
        put(o + "norm2.weight", get(ln2 + "scale"), ln2 + "scale")
        put(o + "norm2.bias", get(ln2 + "bias"), ln2 + "bias")
        for j in (0, 1):
            w = get(f"{mlp}Dense_{j}/kernel")
            put(o + f"ff.fc{j + 1}.weight", None if w is None else _dense(w), f"{mlp}Dense_{j}/kernel")
            put(o + f"ff.fc{j + 1}.bias", get(f"{mlp}Dense_{j}/bias"), f"{mlp}Dense_{j}/bias")

    for k, v in tensors.items():  # anything not consumed is reported under its own name
        if not k.startswith(prefix) or k[len(prefix):] not in used:
            out[k], origin[k] = v, k
    return out, origin
