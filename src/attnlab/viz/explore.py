"""The attention explorer: one self-contained, offline HTML page to look at a model's attention.

:func:`explore_vit`, :func:`explore_lm`, :func:`explore_translation` and :func:`explore_detr` run a
model once on one input and collect what the page shows, as a JSON-able dict ("page data"); :func:`write_page`
inlines that data with the page's own JS and CSS (``explore_page/``) into one HTML file that
makes no request to any server (images are data URIs, there is no CDN).

What is collected:

- attention weights softmax(QKᵀ/√d_k + bias) of every layer and head, (L, H, Tq, Tk), stored
  as 8 bits per weight relative to the maximum of its row (:func:`pack_attention`);
- the tokens, or for a ViT the input image and its patch grid, the attention rollout (Abnar &
  Zuidema 2020) after each block and the position-embedding similarity grid (ViT Fig. 7);
- for a DETR, the image and the detections (label, score, box), the decoder cross-attention
  rows of the shown queries (Fig. 6) and the encoder self-attention of every feature-map cell
  (Fig. 3);
- a *worked head*: for one layer and head the real Q, K, V (float32) from which the page
  recomputes Q·Kᵀ → ÷√d_k → softmax → ·V for any query, and at other temperatures. The
  recomputation is checked here against the model's own weights (``check`` in the data).

Text models (no ``get_attention_maps`` of their own) are observed with
:class:`attnlab.viz.record.AttentionRecorder`; the worked head's layer also has its inputs
kept (:func:`keep_inputs`) to recompute its Q, K and V.

A DETR is observed the same way (:func:`attnlab.viz.detection.detr_attention`); its worked
cross-attention head has three inputs: the decoder state and the memory plus their positions,
and the memory (:class:`Inputs` ``value``).

Extension point: a new model family adds an ``explore_<kind>`` collector returning
``{"kind": "<kind>", ...}`` and a renderer ``RENDER.<kind>`` in ``explore_page/page.js``.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.data.transforms import Normalize, default_normalization
from attnlab.errors import ConfigError, DataError, UnsupportedError
from attnlab.io import atomic_write_bytes
from attnlab.nn.attention import AdditiveAttention, MultiHeadAttention
from attnlab.nn.masks import causal_mask, off_diagonal_mask, window_mask
from attnlab.viz.record import AttentionRecorder
from attnlab.viz.text import token_labels

PAGE_DIR = Path(__file__).with_name("explore_page")
BUDGET_BYTES = 3_000_000  # the whole page, for ViT-Ti/16 at 224 with all 12 layers
MAX_TEXT_TOKENS = 128  # longer inputs are cut (the head view draws Tq x Tk lines per head)
DISPLAY_PIXELS = 512  # DETR: the longer side of the stored picture (the model reads 800)


# ---------------------------------------------------------------------- packing numbers
def b64(arr: np.ndarray) -> str:
    """Little-endian bytes of an array, base64 (what the page decodes)."""
    a = np.ascontiguousarray(arr)
    if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and not np.little_endian):
        a = a.byteswap().view(a.dtype.newbyteorder("<"))
    return base64.b64encode(a.tobytes()).decode("ascii")


def f32(t: Tensor | np.ndarray) -> str:
    return b64(np.asarray(t.detach().cpu() if isinstance(t, Tensor) else t, dtype=np.float32))


def pack_attention(weights: Tensor) -> dict:
    """(L, H, Tq, Tk) weights -> {"shape", "rowmax" (float32 (L, H, Tq)), "q" (uint8)}: each
    weight as round(255 · w / max of its row), so every row keeps 8 bits of its own range."""
    w = weights.detach().float().cpu()
    if w.dim() != 4:
        raise ConfigError(f"pack_attention expects (L, H, Tq, Tk) weights, got shape {tuple(w.shape)}")
    rowmax = w.amax(dim=-1)  # (L, H, Tq)
    q = torch.round(w / rowmax.clamp_min(1e-30)[..., None] * 255).clamp(0, 255).to(torch.uint8)
    return {"shape": list(w.shape), "rowmax": f32(rowmax), "q": b64(q.numpy())}


def unpack_attention(packed: dict) -> Tensor:
    """The inverse of :func:`pack_attention` (to within half a step of each row's 8 bits)."""
    shape = packed["shape"]
    q = np.frombuffer(base64.b64decode(packed["q"]), dtype=np.uint8).reshape(shape)
    rowmax = np.frombuffer(base64.b64decode(packed["rowmax"]), dtype="<f4").reshape(shape[:-1])
    return torch.from_numpy(q.astype(np.float32) / 255 * rowmax[..., None])


def packed_bytes(shape: Sequence[int]) -> int:
    """Bytes :func:`pack_attention` of ``shape`` takes in the page (base64)."""
    n = math.prod(shape)
    return 4 * (-(-n // 3)) + 4 * (-(-4 * (n // shape[-1]) // 3))


# ---------------------------------------------------------------------- observing attention
@dataclass
class Inputs:
    """What one call of an attention module was given: the query x (B, Tq, C), the key input
    ``context`` (B, Tk, C) of cross-attention or None, and the keyword arguments (mask, causal,
    pos, ...); ``value`` (B, Tk, C): the values' input where it is not the keys' (DETR adds
    positions to keys only)."""

    x: Tensor
    context: Tensor | None
    kwargs: dict
    value: Tensor | None = None


@contextlib.contextmanager
def keep_inputs(module: nn.Module) -> Iterator[list[Inputs]]:
    """While active, the inputs of every call of ``module`` (a forward pre-hook; nothing changes)."""
    got: list[Inputs] = []

    def hook(m, args, kwargs):
        key = args[1] if len(args) > 1 else kwargs.get("key")
        value = args[2] if len(args) > 2 else kwargs.get("value")
        got.append(Inputs(args[0].detach(), None if key is None else key.detach(), dict(kwargs),
                          None if value is None or value is key else value.detach()))

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield got
    finally:
        handle.remove()


def _only(calls: list, name: str):
    if len(calls) != 1:
        raise UnsupportedError(f"{name} ran {len(calls)} times in one forward pass; the explorer expects once")
    return calls[0]


def _stack(rec: AttentionRecorder, names: Sequence[str]) -> Tensor:
    """(L, H, Tq, Tk) of the first batch row, one layer per module name."""
    return torch.stack([_only(rec.maps[n], n)[0].float() for n in names])


# ---------------------------------------------------------------------- the worked head
@torch.no_grad()
def worked_head(mha: MultiHeadAttention, inputs: Inputs, weights: Tensor, head: int) -> dict:
    """Q, K, V of one head of one call (first batch row), recomputed from the call's ``inputs``
    with the module's own projections, plus what else enters its softmax: the score bias
    (relative positions), which keys each query may see (the module's causal, window and
    Locality Self-Attention ``exclude_self`` masks and the call's mask), the scale (1/√d_k, or
    the head's ``learned_scale``). ``check`` is the largest difference between
    softmax(QKᵀ·scale + bias) over the visible keys and the model's own ``weights``
    (B, H, Tq, Tk) of that call."""
    if not isinstance(mha, MultiHeadAttention):  # e.g. DETR's deformable cross-attention
        raise UnsupportedError(f"the worked head shows softmax(QKᵀ) attention; {type(mha).__name__} reads sampled "
                               "points instead")
    if not 0 <= head < mha.num_heads:
        raise ConfigError(f"head {head} out of range: this layer has heads 0..{mha.num_heads - 1}")
    if mha.topk is not None:
        raise UnsupportedError("the worked head does not show top-k sparse attention")
    if mha.random_k is not None:  # its keys are drawn anew at every call: the page could not recompute them
        raise UnsupportedError("the worked head does not show random-k attention (its keys are drawn at every call)")
    x, context, kw = inputs.x[:1], inputs.context, inputs.kwargs
    b, tq, c = x.shape
    d = mha.head_dim
    w, bias = mha.qkv.weight, mha.qkv.bias
    sl = lambda i: slice(i * c + head * d, i * c + (head + 1) * d)  # noqa: E731  rows of head `head` in W_q, W_k, W_v
    lin = lambda inp, i: F.linear(inp, w[sl(i)], None if bias is None else bias[sl(i)])  # noqa: E731  (1, T, D)
    src = x if context is None else context[:1]
    q, k, v = lin(x, 0), lin(src, 1), lin(src if inputs.value is None else inputs.value[:1], 2)
    pos = kw.get("pos")
    score_bias = None
    if context is None and pos is not None:
        qr, kr = pos.rotate(q[:, None], k[:, None], 0)  # rotary acts per head: (1, 1, T, D)
        q, k = qr[:, 0], kr[:, 0]
        full = pos.bias(tq, k.shape[1])
        score_bias = None if full is None else full[head].float()
    tk = k.shape[1]
    visible = torch.ones(tq, tk, dtype=torch.bool)
    if (mha.causal if kw.get("causal") is None else kw["causal"]):
        visible &= causal_mask(tq, tk)
    if mha.window is not None:
        visible &= window_mask(tq, tk, mha.window)
    if mha.exclude_self and context is None:
        visible &= off_diagonal_mask(tq, tk)
    mask = kw.get("mask")
    if mask is not None:
        visible &= mask.expand(mask.shape[0], mask.shape[1], tq, tk)[0, min(head, mask.shape[1] - 1)].cpu()
    scale = 1.0 / math.sqrt(d) if mha.scale is None else float(mha.scale[head])
    q, k, v = q[0].float(), k[0].float(), v[0].float()  # (T, D)
    scores = q @ k.T * scale + (0 if score_bias is None else score_bias)
    again = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    model_w = weights[0, head].float()
    return {
        "d_k": d, "scale": scale, "learned_scale": mha.scale is not None, "q": f32(q), "k": f32(k), "v": f32(v),
        "bias": None if score_bias is None else f32(score_bias),
        "visible": b64(visible.to(torch.uint8).numpy()), "tq": tq, "tk": tk,
        "weights": f32(model_w),
        "check": float((again - model_w).abs().max()),
    }


def _worked(set_id: str, layer: int, head: int, mha: MultiHeadAttention, inputs: Inputs, weights: Tensor,
            notes: list[str]) -> dict | None:
    """The page's worked head, or None with a note when the head's attention is not plain softmax."""
    try:
        return {"set": set_id, "layer": layer, "head": head, **worked_head(mha, inputs, weights, head)}
    except UnsupportedError as e:
        notes.append(f"No worked head: {e}.")
        return None


def _first(ids: list[int], limit: int, what: str, notes: list[str]) -> list[int]:
    """The first ``limit`` of ``ids``; when that cuts them, a note on the page says so."""
    if len(ids) > limit:
        notes.append(f"The {what} has {len(ids)} tokens; the first {limit} are shown.")
    return ids[:limit]


def _parse_layer(index: int, depth: int, what: str = "layer") -> int:
    if not -depth <= index < depth:
        raise ConfigError(f"{what} {index} out of range for {depth} layers (valid: {-depth}..{depth - 1})")
    return index % depth


# ---------------------------------------------------------------------- the size budget
def evenly_spaced(depth: int, n: int) -> list[int]:
    """``n`` of ``depth`` layer indices, evenly spaced, the last always among them."""
    n = max(1, min(depth, n))
    if n == 1:
        return [depth - 1]
    return sorted({round(depth - 1 - i * (depth - 1) / (n - 1)) for i in range(n)})


def _attach_sets(data: dict, sets: list[tuple[dict, Tensor]], budget: int, unit: str = "layers") -> dict:
    """``data["sets"]`` from (description, weights (L, H, Tq, Tk)) pairs: every layer if the page
    fits in ``budget`` bytes, else at most n evenly spaced layers per set (n as large as fits),
    what is left going to more layers of the sets with the smallest layers; a note says which
    were kept."""
    room = budget - len(render_page({**data, "sets": []}).encode("utf-8")) - 512 * len(sets)  # - each set's own keys
    depths, per_layer = [w.shape[0] for _, w in sets], [packed_bytes(w.shape[1:]) for _, w in sets]
    n = max(depths)
    while n > 1 and sum(min(d, n) * b for d, b in zip(depths, per_layer)) > room:
        n -= 1
    counts = [min(d, n) for d in depths]
    for i in sorted(range(len(sets)), key=per_layer.__getitem__):
        while counts[i] < depths[i] and sum(c * b for c, b in zip(counts, per_layer)) + per_layer[i] <= room:
            counts[i] += 1
    data["sets"] = []
    for (desc, w), depth, count in zip(sets, depths, counts):
        keep = evenly_spaced(depth, count)
        if len(keep) < depth:
            data["notes"].append(f"To keep the page under {budget / 1e6:.1f} MB, {len(keep)} of the {depth} {unit} of "
                                 f"the {desc['title']} are stored ({unit} {', '.join(map(str, keep))}).")
        data["sets"].append({**desc, "layers": keep, "attention": pack_attention(w[keep])})
    return data


# ---------------------------------------------------------------------- text
def _encode(tokenizer, text: str, what: str) -> list[int]:
    ids = tokenizer.encode(text)
    if not ids:
        raise DataError(f"the {what} {text!r} has no tokens; give some text")
    return ids


def _meta(model: nn.Module, label: str, random_init: bool) -> dict:
    return {"model": label, "family": type(model).__name__, "random_init": random_init,
            "parameters": sum(p.numel() for p in model.parameters())}


@torch.no_grad()
def explore_lm(model: nn.Module, tokenizer, text: str, *, label: str, random_init: bool = False,
               worked: tuple[int, int] = (-1, 0), max_tokens: int = MAX_TEXT_TOKENS, budget: int = BUDGET_BYTES) -> dict:
    """Page data of a causal Transformer language model (:class:`attnlab.models.lm.TransformerLM`)
    reading ``text``: each block's self-attention, the next token it predicts at each position,
    and the worked head ``worked`` = (layer, head); within ``budget`` bytes (:func:`_attach_sets`)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(isinstance(getattr(b, "self_attn", None), MultiHeadAttention) for b in blocks):
        raise UnsupportedError(f"{type(model).__name__} has no attention to explore (a recurrent model?); "
                               "the explorer shows Transformer language models")
    notes = []
    ids = _first(_encode(tokenizer, text, "prompt"), min(max_tokens, getattr(model.cfg, "max_len", max_tokens)),
                 "prompt", notes)
    names = [f"blocks.{i}.self_attn" for i in range(len(blocks))]
    layer = _parse_layer(worked[0], len(blocks))
    model.eval()
    with AttentionRecorder(model) as rec, keep_inputs(model.get_submodule(names[layer])) as inputs:
        logits = model(torch.tensor([ids], device=next(model.parameters()).device))
    probs = logits[0].float().softmax(-1)
    p, nxt = probs.max(-1)
    data = {
        "kind": "lm", "meta": _meta(model, label, random_init), "notes": notes,
        "text": {"tokens": token_labels(tokenizer, ids),
                 "next": [{"token": t, "p": round(float(pp), 4)} for t, pp in zip(token_labels(tokenizer, nxt.tolist()), p)]},
        "worked": _worked("self", layer, worked[1], model.get_submodule(names[layer]), _only(inputs, names[layer]),
                          rec.maps[names[layer]][0], notes),
    }
    desc = {"id": "self", "title": "self-attention (causal)", "queries": "tokens", "keys": "tokens"}
    return _attach_sets(data, [(desc, _stack(rec, names))], budget)


@torch.no_grad()
def explore_translation(model: nn.Module, src_tokenizer, tgt_tokenizer, source: str, target: str | None = None, *,
                        label: str, random_init: bool = False, worked: tuple[int, int] = (-1, 0), worked_set: str = "cross",
                        max_tokens: int = MAX_TEXT_TOKENS, budget: int = BUDGET_BYTES) -> dict:
    """Page data of a translation model on one sentence: the target is ``target`` (forced:
    teacher forcing on a given sentence) or the model's greedy translation; at every step the
    page has the target's next token and the model's own most likely one, which a forced target
    can contradict. For the Transformer: encoder self-attention,
    decoder self-attention and cross-attention of every layer, and the worked head ``worked`` =
    (layer, head) of ``worked_set`` ("enc", "dec" or "cross"); for the GRU with additive attention,
    its one alignment. Decoder row t is decoding step t (the model reads the target prefix up
    to t and predicts the next token), exactly as in step-by-step decoding. Within ``budget``
    bytes (:func:`_attach_sets`)."""
    from attnlab.decode.search import greedy_search

    bos, eos = tgt_tokenizer.bos_id, tgt_tokenizer.eos_id
    pad = src_tokenizer.pad_id if src_tokenizer.pad_id is not None else 0
    notes = []
    src_ids = _first(_encode(src_tokenizer, source, "source sentence"), max_tokens - 1, "source sentence", notes)
    src_ids.append(src_tokenizer.eos_id)
    src = torch.tensor([src_ids], device=next(model.parameters()).device)
    model.eval()
    if target is None:
        hyp = _first(greedy_search(model, src, bos=bos, eos=eos, pad=pad)[0], max_tokens - 1, "translation", notes)
        notes.append("The target is the model's own greedy translation.")
    else:
        hyp = _first(_encode(tgt_tokenizer, target, "target sentence"), max_tokens - 1, "target sentence", notes)
    tgt_in = torch.tensor([[bos] + hyp], device=src.device)
    out_ids = hyp + [eos]
    src_t, tgt_t = token_labels(src_tokenizer, src_ids), token_labels(tgt_tokenizer, [bos] + hyp)
    data = {"kind": "translation", "meta": _meta(model, label, random_init), "notes": notes,
            "text": {"source": src_t, "target": tgt_t, "output": token_labels(tgt_tokenizer, out_ids),
                     "forced": target is not None}}

    def own_predictions(logits: Tensor) -> None:
        """The model's most likely next token at each step (B, Tt, V) -> labels; said in a note when forced."""
        own = logits[0].argmax(-1).tolist()
        data["text"]["predicted"] = token_labels(tgt_tokenizer, own)
        if target is not None:
            differ = sum(a != b for a, b in zip(own, out_ids))
            notes.append(f"The target was given (--target) and forced: at each step the decoder reads the given target, "
                         f"not its own output. The model's own next token differs from the target's at {differ} of "
                         f"{len(out_ids)} steps; the page shows both.")

    if isinstance(getattr(model, "attention", None), AdditiveAttention):  # Bahdanau et al.: one alignment
        with AttentionRecorder(model) as rec:
            own_predictions(model(src, tgt_in))
        align = torch.cat(rec.maps["attention"], dim=-2)[:1].float()  # one row per decoding step: (1, 1, Tt, Ts)
        data["notes"].append("Additive attention (Bahdanau et al. 2015): score = vᵀ tanh(W s + U h), "
                             "so there is no Q·Kᵀ head to work through.")
        data["worked"] = None
        desc = {"id": "cross", "title": "additive attention (alignment)", "queries": "target", "keys": "source"}
        return _attach_sets(data, [(desc, align)], budget)

    enc = getattr(getattr(model, "encoder", None), "layers", None)
    dec = getattr(getattr(model, "decoder", None), "layers", None)
    if enc is None or dec is None or not hasattr(model, "encode") or getattr(model, "mask_id", None) is not None:
        raise UnsupportedError(f"{type(model).__name__}: the explorer shows the Transformer and the GRU with attention "
                               "(not the non-autoregressive mask-predict model)")
    names = {"enc": [f"encoder.layers.{i}.self_attn" for i in range(len(enc))],
             "dec": [f"decoder.layers.{i}.self_attn" for i in range(len(dec))],
             "cross": [f"decoder.layers.{i}.cross_attn" for i in range(len(dec))]}
    if worked_set not in names:
        raise ConfigError(f"the worked head's attention is one of {', '.join(names)}, not {worked_set!r}")
    layer = _parse_layer(worked[0], len(names[worked_set]))
    name = names[worked_set][layer]
    with AttentionRecorder(model) as rec, keep_inputs(model.get_submodule(name)) as inputs:
        own_predictions(model(src, tgt_in))
    data["worked"] = _worked(worked_set, layer, worked[1], model.get_submodule(name), _only(inputs, name), rec.maps[name][0],
                             notes)
    sets = [({"id": "enc", "title": "encoder self-attention", "queries": "source", "keys": "source"}, _stack(rec, names["enc"])),
            ({"id": "dec", "title": "decoder self-attention (causal)", "queries": "target", "keys": "target"},
             _stack(rec, names["dec"])),
            ({"id": "cross", "title": "cross-attention (target → source)", "queries": "target", "keys": "source"},
             _stack(rec, names["cross"]))]
    return _attach_sets(data, sets, budget)


# ---------------------------------------------------------------------- images
def image_data_uri(image: Tensor) -> str:
    """(C, H, W) in [0, 1] (1 or 3 channels) -> a PNG data URI."""
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    im = Image.fromarray(arr[0]) if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@torch.no_grad()
def explore_vit(model: nn.Module, image: Tensor, normalize: Normalize | None = None, *, label: str,
                random_init: bool = False, worked: tuple[int, int] = (-1, 0), class_names: Sequence[str] | None = None,
                budget: int = BUDGET_BYTES) -> dict:
    """Page data of a Vision Transformer on one uint8 image (C, H, W) at the model's size,
    normalised by ``normalize`` (:func:`attnlab.viz.vit.model_input`): every block's attention
    (:meth:`~attnlab.models.vit.VisionTransformer.get_attention_maps`), the rollout after each
    block, the position-embedding similarity, the top-5 predictions and the worked head
    ``worked`` = (block, head). When all blocks do not fit in ``budget`` bytes, evenly spaced
    blocks (the last among them) are kept and the page says so."""
    from attnlab.viz.vit import model_input, posembed_similarity

    x = model_input(model, image, normalize)
    depth = len(model.blocks)
    layer = _parse_layer(worked[0], depth, "block")
    model.eval()
    name = f"blocks.{layer}.self_attn"
    with keep_inputs(model.get_submodule(name)) as inputs:
        logits, maps = model.get_attention_maps(x, return_logits=True)
    attn = torch.stack([m[0].float() for m in maps])  # (L, H, N, N)
    k, (gh, gw) = model.num_prefix_tokens, model.token_grid(attn.shape[-1])
    rollout = torch.stack([model.attention_rollout(maps[: i + 1])[0] for i in range(depth)])  # (L, Gh, Gw)

    notes = []
    try:
        sim = posembed_similarity(model).reshape(gh * gw, gh * gw)
        posembed = {"kind": model.cfg.pos_embed, "q": b64(torch.round((sim.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).numpy())}
    except ConfigError as e:
        posembed = None
        notes.append(f"No position-embedding grid: {e}")
    data = {
        "kind": "vit", "meta": _meta(model, label, random_init), "notes": notes,
        "image": {"src": image_data_uri(image.float() / 255), "height": int(image.shape[-2]), "width": int(image.shape[-1])},
        "grid": [gh, gw], "prefix": k, "class_token": model.cls_token is not None,
        "rollout": {"shape": [depth, gh, gw], "values": f32(rollout)},
        "posembed": posembed,
        "predictions": _top5(logits[0], class_names) if model.cfg.num_classes > 0 else [],
        "worked": _worked("vit", layer, worked[1], model.get_submodule(name), _only(inputs, name), maps[layer], notes),
    }
    desc = {"id": "vit", "title": "self-attention", "queries": "patches", "keys": "patches"}
    _attach_sets(data, [(desc, attn)], budget, unit="blocks")
    if len(data["sets"][0]["layers"]) < depth:
        notes.append("The rollout uses all blocks.")
    return data


def _top5(logits: Tensor, class_names: Sequence[str] | None) -> list[dict]:
    p, idx = logits.float().softmax(-1).topk(min(5, logits.shape[-1]))
    name = (lambda i: class_names[i]) if class_names is not None else (lambda i: f"class {i}")
    return [{"label": name(int(i)), "p": round(float(pp), 4)} for pp, i in zip(p, idx)]


# ---------------------------------------------------------------------- DETR
def _display_size(image: Tensor, notes: list[str]) -> Tensor:
    """(C, H, W) shrunk (antialiased) to at most DISPLAY_PIXELS on its longer side: the page draws
    it 336 pixels wide, so an 800-pixel picture would only spend the size budget."""
    h, w = image.shape[-2:]
    if max(h, w) <= DISPLAY_PIXELS:
        return image
    f = DISPLAY_PIXELS / max(h, w)
    notes.append(f"The picture is stored at {round(w * f)}×{round(h * f)} pixels (the model read it at {w}×{h}).")
    return F.interpolate(image[None], size=(round(h * f), round(w * f)), mode="bilinear", antialias=True,
                         align_corners=False)[0].clamp(0, 1)


@torch.no_grad()
def explore_detr(model: nn.Module, image: Tensor, normalize: Normalize | None = None, labels: Sequence[str] | None = None,
                 *, label: str, random_init: bool = False, threshold: float = 0.7, max_queries: int = 20,
                 worked: tuple[int, int] = (-1, 0), budget: int = BUDGET_BYTES) -> dict:
    """Page data of a DETR (:class:`attnlab.models.detr.DETR`) on one image, uint8 (C, S, S) at the
    model's size, normalised by ``normalize`` (the run's; default
    :func:`~attnlab.data.transforms.default_normalization`), classes named by ``labels``
    (default: their indices): every query's detection (label, score,
    box in pixels, :func:`attnlab.detect.coco_eval.postprocess`); the decoder cross-attention
    (L, H, n, h·w) of the shown queries (score >= ``threshold``, at most ``max_queries``; the
    best three when none reach it), DETR Fig. 6; the encoder self-attention (L, H, h·w, h·w) of
    every feature-map cell, Fig. 3; and the worked head ``worked`` = (decoder layer, head) of the
    cross-attention, Q from the decoder state plus the query embedding, K from the memory plus
    its positions, V from the memory. Maps are recorded as every model's are
    (:func:`attnlab.viz.detection.detr_attention`)."""
    from attnlab.detect.coco_eval import postprocess
    from attnlab.viz.detection import detr_attention

    if image.dim() != 3 or image.dtype != torch.uint8:
        raise ConfigError(f"explore one uint8 image (C, H, W), got {image.dtype} of shape {tuple(image.shape)}")
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold {threshold} must be a probability in [0, 1]")
    normalize = normalize if normalize is not None else default_normalization(model)
    labels = labels if labels is not None else [str(i) for i in range(model.cfg.num_classes)]
    x = normalize(image[None].to(next(model.parameters()).device))
    layer = _parse_layer(worked[0], len(model.decoder), "decoder layer")
    mha = model.decoder[layer].cross_attn
    with keep_inputs(mha) as calls:
        att = detr_attention(model, x)
    out = att["out"]
    (fh, fw), size = out["feature_size"], tuple(image.shape[-2:])
    det = postprocess(out["logits"], out["boxes"], [size])[0]
    order = det["scores"].argsort(descending=True).tolist()
    shown = [i for i in order if det["scores"][i] >= threshold][:max_queries]
    notes = []
    if not shown:
        shown = order[:3]
        notes.append(f"No query reaches score {threshold:g}; the {len(shown)} most confident are shown.")
    queries = [{"query": int(i), "label": str(labels[int(det["labels"][i])]), "score": round(float(det["scores"][i]), 4),
                "box": [round(float(v), 2) for v in det["boxes"][i]]}
               for i in range(len(det["scores"]))]
    cross, enc = att["cross"][:, 0].float(), att["encoder"][:, 0].float()  # (L, H, N, T), (L, H, T, T)
    inputs = _only(calls, f"decoder.{layer}.cross_attn")  # Q from y + q, K from m + p, V from m
    data = {
        "kind": "detr", "meta": _meta(model, label, random_init), "notes": notes,
        "image": {"src": image_data_uri(_display_size(image.float() / 255, notes)), "height": size[0], "width": size[1]},
        "grid": [fh, fw], "threshold": threshold, "queries": queries, "shown": shown,
        "worked": _worked("cross", layer, worked[1], mha, inputs, att["cross"][layer], notes),
    }
    cross_desc = {"id": "cross", "title": "decoder cross-attention", "queries": "queries", "keys": "cells"}
    enc_desc = {"id": "enc", "title": "encoder self-attention", "queries": "cells", "keys": "cells"}
    fixed = len(render_page({**data, "sets": []}).encode("utf-8")) + 1024
    if fixed + packed_bytes(cross[:1, :, shown].shape) + packed_bytes(enc[:1].shape) > budget:
        enc = enc.mean(1, keepdim=True)  # not even one layer of every head fits: the heads' mean
        enc_desc["heads_mean"] = True
        notes.append(f"To keep the page under {budget / 1e6:.1f} MB, the encoder self-attention is stored as the mean of "
                     "its heads.")
    return _attach_sets(data, [(cross_desc, cross[:, :, shown]), (enc_desc, enc)], budget)


# ---------------------------------------------------------------------- the page
def _page_shell() -> str:
    return (PAGE_DIR / "template.html").read_text(encoding="utf-8")


def render_page(data: dict) -> str:
    """The HTML text: the template with the page's CSS, JS and ``data`` inlined (one pass over
    the template, so nothing inlined is read as a slot)."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("<", "\\u003c")
    title = f"attention of {data['meta']['model']}".replace("&", "&amp;").replace("<", "&lt;")
    slots = {"/*__CSS__*/": (PAGE_DIR / "page.css").read_text(encoding="utf-8"),
             "/*__JS__*/": (PAGE_DIR / "page.js").read_text(encoding="utf-8"),
             "__DATA__": payload, "__TITLE__": title}
    html = _page_shell()
    missing = [s for s in slots if s not in html]
    if missing:
        raise ConfigError(f"the explorer's template lacks its {', '.join(missing)} slot(s) (a broken install?)")
    return re.sub("|".join(map(re.escape, slots)), lambda m: slots[m.group(0)], html)


def check_output(path: str | os.PathLike) -> Path:
    """Refuse to write the page over a directory or over an existing file that is not HTML."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"-o {str(path)!r} is a directory; give the HTML file to write, e.g. {str(path / 'explore.html')!r}")
    if path.exists():
        with open(path, "rb") as f:
            head = f.read(512).lstrip().lower()
        if not head.startswith((b"<!doctype html", b"<html")):
            raise ConfigError(f"-o {str(path)!r} exists and is not an HTML page; refusing to overwrite it (choose another name)")
    return path


def write_page(data: dict, path: str | os.PathLike) -> Path:
    """Write the page atomically (after :func:`check_output`); returns the path."""
    path = check_output(path)
    atomic_write_bytes(path, render_page(data).encode("utf-8"))
    return path
