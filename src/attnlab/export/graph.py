"""Exported graphs: ONNX and ``torch.export`` programs (``.pt2``) with a dynamic batch dimension.

ONNX goes through the exporter torch recommends (``torch.onnx.export(..., dynamo=True)``,
which captures the model with ``torch.export``); ONNX Runtime runs it. Needs the optional
extra: ``pip install 'attnlab[export]'`` (onnx, onnxscript, onnxruntime, torchao).

What is exported (:func:`graphs_of`):

- a ViT: images (B, C, H, W) -> logits (B, K), B dynamic; H and W fixed at the model's size,
  or, for a ``dynamic_img_size`` model, any multiples of the patch size (the graph resamples the
  position embeddings, as the eager model does).
- a language model: a window of token ids (B, T) -> logits (B, T, V), B dynamic; T dynamic up
  to the context length for a Transformer, fixed (``window``) for a recurrent model, whose
  recurrence torch.export unrolls; a recurrent model starts from the zero state. A Transformer
  also gives a ``step`` graph: one token with its key/value cache as input and output, for
  generation (see :mod:`attnlab.export.lm`).
- the encoder–decoder Transformer: two graphs, ``encoder`` and ``decoder`` (one decoding step
  with its key/value cache as inputs and outputs), see :mod:`attnlab.export.seq2seq`.

``int8``: ``.pt2`` programs hold the model after :func:`attnlab.export.int8.quantize_int8`
(dynamic int8 Linear layers, torchao; loading one needs torchao installed). ONNX files are
exported in fp32, then ONNX Runtime's dynamic quantization turns the weights of MatMul/Gemm
nodes with a constant weight into int8 (per output channel), the same layers as on the torch side.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.export import Dim

from attnlab.errors import UnsupportedError
from attnlab.export.int8 import _torchao_quantization, quantize_int8
from attnlab.export.lm import LMStepGraph, lm_cache_zeros
from attnlab.export.seq2seq import DecoderStepGraph, EncoderGraph, self_cache_zeros
from attnlab.io import atomic_write, atomic_write_bytes
from attnlab.nn.transformer import Transformer

FORMATS = ("onnx", "pt2")


@dataclass
class Graph:
    """One exportable piece: a module, example inputs, their names and dynamic dimensions."""

    name: str  # "" for the main graph; "encoder" / "decoder" (encoder–decoder Transformer), "step" (Transformer LM)
    module: nn.Module
    args: tuple[Tensor, ...]
    input_names: list[str]
    output_names: list[str]
    dynamic: dict[str, dict[int, Dim]] = field(default_factory=dict)  # input name -> {axis: Dim}

    def dynamic_shapes(self) -> tuple[dict[int, Dim], ...]:
        return tuple(self.dynamic.get(n, {}) for n in self.input_names)


class LMWindowGraph(nn.Module):
    """idx (B, T) -> logits (B, T, V) of a language model (recurrent ones from the zero state)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: Tensor) -> Tensor:
        out = self.model(idx)
        return out[0] if isinstance(out, tuple) else out  # a recurrent model also returns its state


def _is_vit(model: nn.Module) -> bool:
    from attnlab.models.vit import VisionTransformer

    return isinstance(model, VisionTransformer)


def _is_lm(model: nn.Module) -> bool:
    from attnlab.models.lm import RecurrentLM, TransformerLM

    return isinstance(model, (RecurrentLM, TransformerLM))


def graphs_of(model: nn.Module, batch: int = 2, window: int = 64) -> list[Graph]:
    """The graphs that export ``model`` (in eval mode), with example inputs of batch ``batch``
    (>= 2: torch.export specialises a dimension whose example size is 0 or 1). ``window``: the
    fixed number of tokens a recurrent language model's graph takes."""
    model.eval()
    b = Dim("batch", min=1, max=4096)
    if _is_vit(model):
        cfg = model.cfg
        h, w = (cfg.img_size, cfg.img_size) if isinstance(cfg.img_size, int) else cfg.img_size
        dims = {0: b}
        if cfg.dynamic_img_size:  # any multiple of the patch size; position embeddings resampled in the graph
            p = cfg.patch_size
            dims.update({2: p * Dim("grid_h", min=1, max=1024), 3: p * Dim("grid_w", min=1, max=1024)})
        return [Graph("", model, (torch.randn(batch, cfg.in_chans, h, w),), ["images"], ["logits"], {"images": dims})]
    if _is_lm(model):
        if model.is_recurrent:  # torch.export unrolls the recurrence: one program per window length
            idx = torch.randint(0, model.cfg.vocab_size, (batch, window))
            return [Graph("", LMWindowGraph(model), (idx,), ["tokens"], ["logits"], {"tokens": {0: b}})]
        t = Dim("time", min=1, max=model.cfg.max_len)  # the positions end at the context length
        idx = torch.randint(0, model.cfg.vocab_size, (batch, min(8, model.cfg.max_len)))
        past = Dim("past", min=0, max=model.cfg.max_len - 1)
        sk, sv = lm_cache_zeros(model, batch, length=3)
        return [Graph("", LMWindowGraph(model), (idx,), ["tokens"], ["logits"], {"tokens": {0: b, 1: t}}),
                Graph("step", LMStepGraph(model), (idx[:, :1], sk, sv), ["tokens", "self_k", "self_v"],
                      ["logits", "self_k_out", "self_v_out"],
                      {"tokens": {0: b}, "self_k": {1: b, 3: past}, "self_v": {1: b, 3: past}})]
    if isinstance(model, Transformer):
        cfg = model.cfg
        ts = Dim("src_len", min=1, max=cfg.max_len)  # the source positions end at max_len too
        past = Dim("past", min=0, max=cfg.max_len - 1)  # the positions (sinusoidal/learned table) end at max_len
        src = torch.randint(3, cfg.src_vocab_size, (batch, 5))
        enc = EncoderGraph(model)
        mask, ck, cv = enc(src)
        sk, sv = self_cache_zeros(model, batch, length=3)
        tokens = torch.randint(3, cfg.tgt_vocab_size, (batch, 1))
        return [
            Graph("encoder", enc, (src,), ["src"], ["memory_mask", "cross_k", "cross_v"], {"src": {0: b, 1: ts}}),
            Graph("decoder", DecoderStepGraph(model), (tokens, mask, sk, sv, ck, cv),
                  ["tokens", "memory_mask", "self_k", "self_v", "cross_k", "cross_v"], ["logits", "self_k_out", "self_v_out"],
                  {"tokens": {0: b}, "memory_mask": {0: b, 3: ts}, "self_k": {1: b, 3: past}, "self_v": {1: b, 3: past},
                   "cross_k": {1: b, 3: ts}, "cross_v": {1: b, 3: ts}}),
        ]
    raise UnsupportedError(f"cannot export a {type(model).__name__}: export supports the ViT family, the language models "
                           f"and the encoder-decoder Transformer")


def export_program(g: Graph) -> torch.export.ExportedProgram:
    """``torch.export.export`` of one graph, its dynamic dimensions marked. Strict mode (TorchDynamo):
    the decoder step's cache lengths go through ``len()``, which non-strict tracing would turn
    into constants."""
    with torch.no_grad():
        return torch.export.export(g.module, g.args, dynamic_shapes=g.dynamic_shapes(), strict=True)


def save_pt2(g: Graph, path: str | os.PathLike) -> None:
    """Write the graph's ``torch.export`` program to ``path`` (atomically)."""
    program = export_program(g)
    with atomic_write(path) as f:
        torch.export.save(program, f)


# Weights above this size go to a "<file>.data" beside the .onnx file (protobuf caps one file at 2 GB).
ONNX_INLINE_LIMIT = 1 << 30


def save_onnx(g: Graph, path: str | os.PathLike, int8: bool = False) -> None:
    """Write the graph as ONNX (torch.onnx.export with dynamo=True) to ``path``; ``int8``: with
    ONNX Runtime's dynamic int8 quantization of the MatMul/Gemm weights. Weights over
    :data:`ONNX_INLINE_LIMIT` bytes go to ``<path>.data`` beside it (ONNX Runtime finds it there);
    each file is replaced atomically, the weights file first."""
    _require("onnx", "onnxscript", *(["onnxruntime"] if int8 else []))
    program = torch.onnx.export(export_program(g), (), dynamo=True, input_names=g.input_names, output_names=g.output_names,
                                verbose=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbytes = sum(t.numel() * t.element_size() for t in [*g.module.parameters(), *g.module.buffers()])
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        fp32 = Path(tmp) / ("fp32.onnx" if int8 else path.name)
        program.save(fp32, external_data=nbytes > ONNX_INLINE_LIMIT)
        out = fp32
        if int8:
            out = Path(tmp) / path.name
            _quantize_onnx(fp32, out, external=nbytes / 4 > ONNX_INLINE_LIMIT)
            for f in Path(tmp).glob("fp32.onnx*"):
                f.unlink()
        data = out.with_name(out.name + ".data")
        if data.exists():
            os.replace(data, path.with_name(data.name))
        atomic_write_bytes(path, out.read_bytes())


def _quantize_onnx(src: Path, dst: Path, external: bool) -> None:
    """ONNX Runtime's dynamic int8 quantization of the weights of MatMul/Gemm nodes (per output channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs advice on the root logger
    try:
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"],
                         use_external_data_format=external, extra_options={"MatMulConstBOnly": True})
    finally:
        root.setLevel(level)


def piece_path(path: str | os.PathLike, name: str) -> Path:
    """Where a named piece of a multi-graph export goes: ``m.onnx`` -> ``m.encoder.onnx``."""
    p = Path(path)
    return p if not name else p.with_name(f"{p.stem}.{name}{p.suffix}")


def export_model(model: nn.Module, path: str | os.PathLike, fmt: str | None = None, int8: bool = False,
                 window: int = 64) -> list[Path]:
    """Export ``model`` to ``path`` as ONNX or ``.pt2`` (``fmt``; default: from the suffix);
    returns the graph files written (two for the encoder–decoder Transformer: ``<stem>.encoder<suffix>``
    and ``<stem>.decoder<suffix>``; for a Transformer LM the window graph at ``path`` and
    ``<stem>.step<suffix>``); an ONNX file over 1 GiB of weights has its ``<file>.data`` beside it.
    ``int8`` quantizes a copy of the model; ``model`` is unchanged. ``window``: see :func:`graphs_of`."""
    fmt = fmt or Path(path).suffix.lstrip(".")
    if fmt not in FORMATS:
        raise UnsupportedError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if int8 and fmt == "pt2":
        model = quantize_int8(copy.deepcopy(model), backend="torchao")  # torch.export traces torchao int8 tensors
    written = []
    for g in graphs_of(model, window=window):
        out = piece_path(path, g.name)
        if fmt == "pt2":
            save_pt2(g, out)
        else:
            save_onnx(g, out, int8=int8)
        written.append(out)
    return written


def load_graph(path: str | os.PathLike, threads: int | None = None) -> Callable[..., tuple[Tensor, ...]]:
    """A function running an exported graph: tensors in (in the graph's input order), a tuple of
    tensors out. ``.onnx`` files run in ONNX Runtime (``threads`` intra-op threads), ``.pt2``
    programs as ``torch.export`` modules. ``torch.export.load`` unpickles what it cannot store as
    plain tensors (an int8 program's torchao weights), so load only ``.pt2`` files you trust, as
    with any pickle; an ONNX file holds no code."""
    path = Path(path)
    if path.suffix == ".onnx":
        _require("onnxruntime")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = opts.inter_op_num_threads = threads
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run_onnx(*args: Tensor) -> tuple[Tensor, ...]:
            outs = session.run(None, {n: a.detach().cpu().numpy() for n, a in zip(names, args)})
            return tuple(torch.from_numpy(o) for o in outs)

        return run_onnx
    try:
        _torchao_quantization()  # registers the int8 operators an int8 program calls
    except UnsupportedError:
        pass  # an fp32 program does not need them
    module = torch.export.load(path).module()

    def run_pt2(*args: Tensor) -> tuple[Tensor, ...]:
        with torch.no_grad():
            out = module(*args)
        return out if isinstance(out, tuple) else (out,)

    return run_pt2


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UnsupportedError(f"ONNX needs {', '.join(missing)}: pip install 'attnlab[export]'")

