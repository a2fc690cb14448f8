"""What an exported model expects as input, stored in every export's record (ONNX
``metadata_props``, the ``.pt2`` extra file, the CTranslate2 folder's ``attnlab_export.json``)
and printed by ``attnlab export``; a loaded graph gives it back as ``LoadedGraph.inputs``.

- images: the tensor's layout and size, the channel order, and the normalisation the model was
  trained with (a run's own mean/std, else the default for its channels);
- tokens: the tensor's layout, and each tokenizer (source and target for translation): its kind,
  vocabulary size, special tokens with their ids, and the whole tokenizer as
  :meth:`attnlab.data.tokenizers.Tokenizer.to_dict` writes it (``tokenizer_from_dict`` reads it).
"""

from __future__ import annotations

from torch import nn

from attnlab.data.transforms import default_normalization
from attnlab.export.graph import _image_input, _is_encoder_decoder, _is_lm

CHANNELS = {1: "grey", 3: "RGB"}


def describe_inputs(model: nn.Module, extras: dict | None = None) -> dict:
    """What ``model`` expects; ``extras``: a run's extras (its ``normalize``, its tokenizers), or
    None for a registered model with fresh weights."""
    extras = extras or {}
    if _image_input(model) is not None:
        return _images(model, extras)
    if _is_lm(model):
        return _tokens("tokens (B, T) int64", {"tokenizer": extras.get("tokenizer")}, model.cfg.vocab_size)
    if _is_encoder_decoder(model):
        return _tokens("src (B, Ts) int64, right-padded", {"source": extras.get("src_tokenizer"),
                                                           "target": extras.get("tgt_tokenizer")},
                       model.cfg.src_vocab_size, model.cfg.tgt_vocab_size)
    return {}


def _images(model: nn.Module, extras: dict) -> dict:
    cfg = model.cfg
    c = int(cfg.in_chans)
    h, w = (cfg.img_size, cfg.img_size) if isinstance(cfg.img_size, int) else tuple(cfg.img_size)
    own = extras.get("normalize")
    norm = own if own is not None else default_normalization(model)
    size = (f"any multiple of {cfg.patch_size} (trained at {h}x{w})" if getattr(cfg, "dynamic_img_size", False)
            else f"{h}x{w}")
    return {"kind": "images", "tensor": f"images (B, {c}, H, W) float32", "size": size,
            "channels": CHANNELS.get(c, f"{c} channels"), "pixels": "x / 255 for 8-bit pixels, then (x - mean) / std",
            "mean": [round(float(v), 6) for v in norm.mean], "std": [round(float(v), 6) for v in norm.std],
            "normalization": "the run's" if own is not None else "the default for its channels, no run statistics"}


def _tokens(tensor: str, tokenizers: dict, *vocab_sizes: int) -> dict:
    out = {"kind": "tokens", "tensor": tensor, "vocab_size": list(vocab_sizes) if len(vocab_sizes) > 1 else vocab_sizes[0]}
    for role, tok in tokenizers.items():
        out[role] = None if tok is None else {
            "kind": tok.kind, "vocab_size": tok.vocab_size,
            "specials": {r: tok.token_to_id(t) for r, t in tok.specials.items()}, "tokenizer": tok.to_dict()}
    return out


def summary(inputs: dict) -> str:
    """One line saying what ``inputs`` (a :func:`describe_inputs` dict) expects."""
    if inputs.get("kind") == "images":
        return (f"input: {inputs['tensor']}, {inputs['size']}, {inputs['channels']}; {inputs['pixels']} with mean "
                f"{inputs['mean']} and std {inputs['std']} ({inputs['normalization']})")
    if inputs.get("kind") == "tokens":
        toks = [f"{'' if role == 'tokenizer' else role + ': '}{t['kind']} tokenizer, {t['vocab_size']} tokens, "
                f"special ids {t['specials'] or 'none'}" for role, t in inputs.items() if isinstance(t, dict)]
        none = [role for role, t in inputs.items() if role in ("tokenizer", "source", "target") and t is None]
        said = "; ".join(toks + [f"no {role} tokenizer (a model name: fresh weights)" for role in none])
        return f"input: {inputs['tensor']} token ids; {said} (stored in the file)"
    return "input: not described"
