"""The encoder–decoder Transformer as a CTranslate2 model, built from our weights through
CTranslate2's model-spec API (``ctranslate2.specs.TransformerSpec``), and greedy decoding with it.

- :func:`to_ctranslate2`: :class:`attnlab.nn.Transformer` -> a CTranslate2 model folder
  (``model.bin``, ``config.json``, vocabularies), fp32 or quantized (``int8``, ``int8_float32``, ...).
- :func:`load_translator` / :func:`ct2_greedy`: token ids (B, Ts) in, token ids out, with the
  semantics of :func:`attnlab.decode.search.greedy_search` (start token, end token, the start
  and padding tokens never produced), so in fp32 both give the same tokens.

The vocabulary is the token ids themselves written as strings ("0" .. "V-1"), so ids map 1:1
whatever tokenizer the model was trained with; the start, end and unknown tokens are our ids.
Refused (:class:`attnlab.errors.UnsupportedError`), rather than exported wrong: rotary or
relative positions, top-k / windowed / random-k attention, a final LayerNorm after a post-LN stack.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import torch
from torch import Tensor, nn

from attnlab.decode.search import SearchConfig, greedy_search
from attnlab.errors import ConfigError, ShapeError, UnsupportedError
from attnlab.export.adapter import ExportFormat, ExportOptions, Written
from attnlab.models.capabilities import TRANSFORMER_LAYOUT, layout_of
from attnlab.nn.attention import MultiHeadAttention
from attnlab.nn.layers import DecoderLayer, EncoderLayer, FeedForward
from attnlab.nn.transformer import Transformer

try:
    import ctranslate2
    from ctranslate2.specs import common_spec, model_spec, transformer_spec
except ImportError:  # the export extra is not installed: only calling this module's functions fails
    ctranslate2 = None

#: attnlab activation name -> the CTranslate2 activation computing the same function.
ACTIVATIONS = {"relu": "RELU", "gelu": "GELU", "gelu_tanh": "GELUTanh", "silu": "SWISH"}
#: Position encodings added to the embeddings, which CTranslate2 takes as a table.
ADDED_POSITIONS = ("sinusoidal", "learned", "none")
_SEARCH = SearchConfig()
#: The file in a CTranslate2 folder that says attnlab wrote it (what -o may replace).
RECORD = "attnlab_export.json"


def _require_ctranslate2() -> None:
    if ctranslate2 is None:
        raise UnsupportedError("CTranslate2 export needs the ctranslate2 package: pip install 'attnlab[export]'")


def to_ctranslate2(model: Transformer, out_dir: str | Path, quantization: str | None = None, *,
                   bos: int = _SEARCH.bos, eos: int = _SEARCH.eos, unk: int | None = None, inputs: dict | None = None) -> Path:
    """Write ``model`` as a CTranslate2 model in the folder ``out_dir``; returns the folder.

    ``out_dir`` must be new, empty, or a CTranslate2 folder attnlab wrote (its ``RECORD`` file),
    which is replaced. The folder is written beside ``out_dir`` under a private name and renamed
    into place, so a killed export leaves the old folder or the new one, never half of one.
    ``quantization``: None (fp32) or a CTranslate2 weight type (``int8``, ``int8_float32``,
    ``int16``, ``float16``, ``bfloat16``); the loaded model computes in it by default.
    ``bos``/``eos``/``unk``: our start, end and unknown token ids (``unk=None``: the model has
    none; CTranslate2's ``unk_token`` is then ``<unk>``, a string outside the id vocabulary).
    Positions: CTranslate2 holds the first ``model.cfg.max_len`` of ours and refuses longer
    sources or translations. ``inputs``: what the model expects (:mod:`attnlab.export.inputs`),
    stored in the folder's ``RECORD`` file.
    """
    _require_ctranslate2()
    if quantization is not None and quantization not in model_spec.ACCEPTED_MODEL_TYPES:
        raise ConfigError(f"unknown CTranslate2 quantization {quantization!r}; choose one of "
                          f"{', '.join(model_spec.ACCEPTED_MODEL_TYPES)}")
    out = Path(out_dir)
    check_target(out)
    spec = transformer_spec_of(model, bos=bos, eos=eos, unk=unk)
    spec.validate()
    spec.optimize(quantization=quantization)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        spec.save(str(staging))
        record = {"version": 1, "export_id": uuid.uuid4().hex, "format": "ctranslate2", "quantization": quantization,
                  "bos": bos, "eos": eos, "unk": unk, "vocabulary": "token ids written as strings: '0' .. 'V-1'",
                  "inputs": inputs or {}}
        (staging / RECORD).write_text(json.dumps(record) + "\n")
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def check_target(out: Path) -> None:
    """Refuse (one line) an output that is a file, or a non-empty folder attnlab did not export."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; a CTranslate2 model is a folder: choose another output path")
    if out.is_dir() and any(out.iterdir()) and not (out / RECORD).is_file():
        raise ConfigError(f"{out} is a folder attnlab did not export to CTranslate2; it is left untouched: "
                          "choose another output folder")


def _swap_in(staging: Path, out: Path) -> None:
    """Rename the finished folder ``staging`` to ``out``; an old ``out`` (empty, or our export) is
    renamed aside first and removed after."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.old")
        os.rename(out, old)
    os.rename(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_supported(model: Transformer) -> None:
    """UnsupportedError, in one line, for what a CTranslate2 TransformerSpec cannot compute."""
    if layout_of(model) != TRANSFORMER_LAYOUT:
        raise UnsupportedError(f"CTranslate2 export takes the encoder–decoder Transformer, not {type(model).__name__}")
    cfg = model.cfg
    if cfg.position not in ADDED_POSITIONS:
        raise UnsupportedError(f"CTranslate2 export supports {', '.join(ADDED_POSITIONS)} positions, "
                               f"not {cfg.position!r} (its Transformer has no equivalent of ours)")
    if cfg.activation not in ACTIVATIONS:
        raise UnsupportedError(f"CTranslate2 has no {cfg.activation!r} activation; supported: {', '.join(ACTIVATIONS)}")
    if not cfg.norm_first and _final_norm(model):
        raise UnsupportedError("CTranslate2 has no final LayerNorm after a post-LN stack (final_norm=True with norm_first=False)")
    for name, m in model.named_modules():
        # top-k, window or random-k attributes, or a pre-hook that narrows the mask (nearest-k, models/ablations.py)
        if isinstance(m, MultiHeadAttention) and ((m.topk, m.window, m.random_k) != (None, None, None) or m._forward_pre_hooks):
            raise UnsupportedError(f"CTranslate2 computes full attention only; {name} has top-k, window, random-k "
                                   "or nearest-k attention")


def _final_norm(model: Transformer) -> bool:
    """Whether the stacks end with a LayerNorm (``build_stacks`` gives both one or neither)."""
    return isinstance(model.encoder.norm, nn.LayerNorm)


def transformer_spec_of(model: Transformer, *, bos: int, eos: int, unk: int | None) -> transformer_spec.TransformerSpec:
    """The filled ``TransformerSpec``: ``pre_norm`` = our ``norm_first``; ``no_final_norm`` when a
    pre-LN model has no final LayerNorm; ``activation`` ours; the vocabularies and the config's
    tokens (``decoder_start_token`` = ``bos``, no source BOS/EOS added, ``layer_norm_epsilon``)."""
    check_supported(model)
    cfg = model.cfg
    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.num_encoder_layers, cfg.num_decoder_layers), cfg.num_heads, pre_norm=cfg.norm_first,
        no_final_norm=cfg.norm_first and not _final_norm(model),
        activation=getattr(common_spec.Activation, ACTIVATIONS[cfg.activation]))
    with torch.no_grad():
        positions = _position_table(model)
        _set_encoder(spec.encoder, model, positions)
        _set_decoder(spec.decoder, model, positions)
    spec.register_source_vocabulary([str(i) for i in range(cfg.src_vocab_size)])
    spec.register_target_vocabulary([str(i) for i in range(cfg.tgt_vocab_size)])
    spec.config.bos_token, spec.config.eos_token = str(bos), str(eos)
    spec.config.unk_token = "<unk>" if unk is None else str(unk)
    spec.config.decoder_start_token = str(bos)
    spec.config.add_source_bos = spec.config.add_source_eos = False
    spec.config.layer_norm_epsilon = cfg.norm_eps
    return spec


def _np(t: Tensor):
    return t.detach().float().cpu().numpy().copy()


def _position_table(model: Transformer):
    """(max_len, C): what our position encoding adds at positions 0 .. max_len-1 (zeros for
    ``none``). It fills ``position_encodings.encodings`` so CTranslate2 adds exactly our
    vectors (its built-in sinusoids concatenate sin and cos; ours interleave them)."""
    zeros = torch.zeros(1, model.cfg.max_len, model.cfg.d_model)
    return _np(model.pos.add(zeros)[0])


def _set_inputs(stack_spec, emb_spec, emb: nn.Embedding, positions) -> None:
    """``embeddings.weight`` ours; ``scale_embeddings`` True (CTranslate2 multiplies by
    √d_model, as :meth:`Transformer.embed` does); ``position_encodings.encodings`` the table."""
    emb_spec.weight = _np(emb.weight)
    stack_spec.scale_embeddings = True
    stack_spec.position_encodings.encodings = positions


def _set_encoder(spec, model: Transformer, positions) -> None:
    """Embeddings (``embeddings[0]``: one source embedding, no factors), layers, final LayerNorm (pre-LN)."""
    _set_inputs(spec, spec.embeddings[0], model.src_embed, positions)
    for layer_spec, layer in zip(spec.layer, model.encoder.layers):
        _set_encoder_layer(layer_spec, layer)
    if isinstance(model.encoder.norm, nn.LayerNorm):
        _set_norm(spec.layer_norm, model.encoder.norm)


def _set_decoder(spec, model: Transformer, positions) -> None:
    """Embeddings, layers, final LayerNorm (pre-LN), and ``projection`` = our output layer
    (tied to the target embedding or not: CTranslate2 aliases equal weights when saving)."""
    _set_inputs(spec, spec.embeddings, model.tgt_embed, positions)
    for layer_spec, layer in zip(spec.layer, model.decoder.layers):
        _set_decoder_layer(layer_spec, layer)
    if isinstance(model.decoder.norm, nn.LayerNorm):
        _set_norm(spec.layer_norm, model.decoder.norm)
    _set_linear(spec.projection, model.out.weight, model.out.bias)


def _set_encoder_layer(spec, layer: EncoderLayer) -> None:
    """``self_attention.layer_norm`` = norm1 and ``ffn.layer_norm`` = norm2: CTranslate2 puts
    each LayerNorm inside its sublayer, before it (pre-LN) or after the residual sum (post-LN),
    which is where ours are."""
    _set_self_attention(spec.self_attention, layer.self_attn, layer.norm1)
    _set_ffn(spec.ffn, layer.ff, layer.norm2)


def _set_decoder_layer(spec, layer: DecoderLayer) -> None:
    """Self-attention with norm1, cross-attention (``attention``) with norm2, FFN with norm3."""
    _set_self_attention(spec.self_attention, layer.self_attn, layer.norm1)
    _set_cross_attention(spec.attention, layer.cross_attn, layer.norm2)
    _set_ffn(spec.ffn, layer.ff, layer.norm3)


def _set_self_attention(spec, attn: MultiHeadAttention, norm: nn.LayerNorm) -> None:
    """``linear[0]`` = our fused qkv (rows Q, K, V: CTranslate2's fused layout), ``linear[1]`` = W_O."""
    _set_linear(spec.linear[0], attn.qkv.weight, attn.qkv.bias)
    _set_linear(spec.linear[1], attn.proj.weight, attn.proj.bias)
    _set_norm(spec.layer_norm, norm)


def _set_cross_attention(spec, attn: MultiHeadAttention, norm: nn.LayerNorm) -> None:
    """``linear[0]`` = the Q rows of qkv, ``linear[1]`` = the fused K, V rows (applied to the
    encoder memory), ``linear[2]`` = W_O."""
    c, w, b = attn.embed_dim, attn.qkv.weight, attn.qkv.bias
    _set_linear(spec.linear[0], w[:c], None if b is None else b[:c])
    _set_linear(spec.linear[1], w[c:], None if b is None else b[c:])
    _set_linear(spec.linear[2], attn.proj.weight, attn.proj.bias)
    _set_norm(spec.layer_norm, norm)


def _set_ffn(spec, ff: FeedForward, norm: nn.LayerNorm) -> None:
    """``linear_0`` = fc1, ``linear_1`` = fc2, ``layer_norm`` the FFN sublayer's LayerNorm."""
    _set_linear(spec.linear_0, ff.fc1.weight, ff.fc1.bias)
    _set_linear(spec.linear_1, ff.fc2.weight, ff.fc2.bias)
    _set_norm(spec.layer_norm, norm)


def _set_linear(spec, weight: Tensor, bias: Tensor | None) -> None:
    spec.weight = _np(weight)
    if bias is not None:
        spec.bias = _np(bias)


def _set_norm(spec, norm: nn.LayerNorm) -> None:
    spec.gamma, spec.beta = _np(norm.weight), _np(norm.bias)


# --- decoding --------------------------------------------------------------------------------------

def load_translator(model_dir: str | Path, *, intra_threads: int = 0, inter_threads: int = 1,
                    compute_type: str = "default") -> ctranslate2.Translator:
    """A CPU ``ctranslate2.Translator`` of a folder written by :func:`to_ctranslate2`.

    ``intra_threads``: threads per translation (0: CTranslate2's default); ``inter_threads``:
    translations run in parallel; ``compute_type`` ``default`` computes in the weights' saved
    type (the export's quantization).
    """
    _require_ctranslate2()
    if not (Path(model_dir) / "model.bin").is_file():
        raise ConfigError(f"{model_dir} is not a CTranslate2 model folder (no model.bin); write one with to_ctranslate2")
    return ctranslate2.Translator(str(model_dir), device="cpu", compute_type=compute_type,
                                  intra_threads=intra_threads, inter_threads=inter_threads)


def source_tokens(src: Tensor, pad: int) -> list[list[str]]:
    """src (B, Ts) right-padded with ``pad`` -> each sentence's ids as vocabulary strings.
    CTranslate2 masks by length, so padding anywhere but at the end is refused."""
    if src.dim() != 2:
        raise ShapeError(f"expected source token ids (B, Ts), got shape {tuple(src.shape)}")
    rows = []
    for row in src.tolist():
        n = len(row)
        while n and row[n - 1] == pad:
            n -= 1
        if pad in row[:n]:
            raise ShapeError("CTranslate2 takes right-padded sources; a sentence has padding before its last token")
        rows.append([str(t) for t in row[:n]])
    return rows


def ct2_greedy(translator: ctranslate2.Translator | str | Path, src: Tensor, max_new_tokens: int, *,
               bos: int = _SEARCH.bos, eos: int | None = _SEARCH.eos, pad: int = _SEARCH.pad,
               **load_options) -> list[list[int]]:
    """Greedy decoding with CTranslate2 (``translate_batch``, ``beam_size=1``): src (B, Ts)
    right-padded with ``pad`` -> each sentence's new token ids, without start and end tokens.

    The same tokens as ``greedy_search(model, src, max_len_a=0, max_len_b=max_new_tokens, bos=,
    eos=, pad=)``: the start and padding tokens are suppressed, at most ``max_new_tokens``
    tokens (the end token included) are decoded, the end token may come first (an empty
    translation: ``min_decoding_length=0``; CTranslate2's default 1 forbids it), no source is
    truncated (``max_input_length=0``), and ``eos=None`` decodes exactly
    ``max_new_tokens`` tokens (``end_token=[]``: no token ends a sentence), which is what speed
    measurements time. ``translator``: a loaded Translator, or a model folder loaded with
    ``load_options`` (those of :func:`load_translator`).
    """
    if isinstance(translator, str | Path):
        translator = load_translator(translator, **load_options)
    elif load_options:
        raise ConfigError(f"{', '.join(load_options)} apply when loading: pass them to load_translator")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    results = translator.translate_batch(
        source_tokens(src, pad), beam_size=1, max_decoding_length=max_new_tokens, min_decoding_length=0, max_input_length=0,
        suppress_sequences=[[str(t)] for t in {bos, pad} if t != eos],
        end_token=[] if eos is None else str(eos))
    return [[int(t) for t in r.hypotheses[0]] for r in results]


# --- the export adapter ----------------------------------------------------------------------------

class CTranslate2Format(ExportFormat):
    """``attnlab export --format ctranslate2``: the folder of :func:`to_ctranslate2`, with the
    start, end and unknown ids of the run's target tokenizer; checked by greedy decoding."""

    name = "ctranslate2"
    suffix = ".ct2"
    folder = True
    supports = "the encoder-decoder Transformer as a CTranslate2 model folder; --int8: its int8 weights"

    def check(self, model: nn.Module, path: Path, options: ExportOptions) -> None:
        check_supported(model)
        check_target(path)

    def write(self, model: nn.Module, path: Path, options: ExportOptions) -> list[Path]:
        return [to_ctranslate2(model, path, "int8" if options.int8 else None, **self._ids(options), inputs=options.inputs)]

    def verify(self, model: nn.Module, written: list[Path], options: ExportOptions) -> list[Written]:
        """The folder's greedy tokens on a few example sources against the eager fp32 model's."""
        [out] = written
        ids = {k: v for k, v in self._ids(options).items() if k != "unk"}
        src = torch.randint(4, model.cfg.src_vocab_size, (4, 12), generator=torch.Generator().manual_seed(0))
        want = greedy_search(model, src, SearchConfig(**ids, max_len_a=0, max_len_b=16))
        got = ct2_greedy(out, src, 16, **ids)
        same = sum(a == b for w, g in zip(want, got) for a, b in zip(w, g))
        total = sum(max(len(w), len(g)) for w, g in zip(want, got))
        size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
        return [Written(out, size, f"greedy tokens on 4 example sources: {same} of {total} equal to the fp32 eager "
                                   "model's")]

    def read_record(self, path: Path) -> dict | None:
        try:
            record = json.loads((path / RECORD).read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return record if isinstance(record, dict) and record.get("format") == self.name else None

    def load(self, path: Path, threads: int | None = None, trusted: bool = False) -> ctranslate2.Translator:
        return load_translator(path, intra_threads=threads or 0)

    @staticmethod
    def _ids(options: ExportOptions) -> dict:
        tok = options.extras.get("tgt_tokenizer")
        return dict(bos=tok.bos_id, eos=tok.eos_id, unk=tok.unk_id) if tok is not None else {}


CTRANSLATE2 = CTranslate2Format()
