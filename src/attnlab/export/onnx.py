"""The ONNX format: one ``.onnx`` file per graph, written by the exporter torch recommends
(``torch.onnx.export(..., dynamo=True)``, which captures the model with ``torch.export``) and run
by ONNX Runtime. Needs the optional extra: ``pip install 'attnlab[export]'``.

``int8``: exported in fp32, then ONNX Runtime's dynamic quantization turns the weights of
MatMul/Gemm nodes with a constant weight into int8 (per output channel), the same layers as on
the torch side. attnlab's record and the graph's input description are ``metadata_props``
entries, read without parsing the graph. An ONNX file holds no code.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from attnlab.errors import DataError, UnsupportedError
from attnlab.export.graph import RECORD_KEY, Graph, GraphFormat, _first_line, _quiet, export_program

# Weights above this size go to a "<file>.data" beside the .onnx file (protobuf caps one file at 2 GB).
ONNX_INLINE_LIMIT = 1 << 30


def save_onnx(g: Graph, path: str | os.PathLike, int8: bool = False, record: str | None = None) -> None:
    """Write the graph as ONNX (torch.onnx.export with dynamo=True) to ``path``, with ``record``
    as its ``attnlab_export`` metadata; ``int8``: with ONNX Runtime's dynamic int8 quantization of
    the MatMul/Gemm weights (an fp32 file ``fp32.<name>`` is written beside ``path`` first and
    removed: :meth:`GraphFormat.write` gives each export a folder of its own). Weights over
    :data:`ONNX_INLINE_LIMIT` bytes go to ``<path>.data`` beside it (ONNX Runtime finds it there)."""
    _require("onnx", "onnxscript", *(["onnxruntime"] if int8 else []))
    program = torch.onnx.export(export_program(g), (), dynamo=True, input_names=g.input_names, output_names=g.output_names,
                                verbose=False)
    if record is not None:
        program.model.metadata_props[RECORD_KEY] = record  # ONNX Runtime's quantization keeps it
    path = Path(path)
    nbytes = sum(t.numel() * t.element_size() for t in [*g.module.parameters(), *g.module.buffers()])
    if not int8:
        program.save(path, external_data=nbytes > ONNX_INLINE_LIMIT)
        return
    fp32 = path.with_name(f"fp32.{path.name}")
    program.save(fp32, external_data=nbytes > ONNX_INLINE_LIMIT)
    _quantize_onnx(fp32, path, external=nbytes / 4 > ONNX_INLINE_LIMIT)
    for f in path.parent.glob(f"{fp32.name}*"):
        f.unlink()


def _quantize_onnx(src: Path, dst: Path, external: bool) -> None:
    """ONNX Runtime's dynamic int8 quantization of the weights of MatMul/Gemm nodes (per output channel)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet("", level=logging.ERROR):  # quantize_dynamic logs advice on the root logger
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"],
                         use_external_data_format=external, extra_options={"MatMulConstBOnly": True})


def _onnx_metadata(path: Path, key: str) -> str | None:
    """The value of ``key`` in an ONNX file's ``metadata_props`` (ModelProto field 14), read by
    skipping the other top-level fields (the graph is never parsed). ValueError: not protobuf."""
    with open(path, "rb") as f:
        for entry in _proto_fields(f, os.fstat(f.fileno()).st_size, 14):
            fields = dict(_proto_fields(io.BytesIO(entry), len(entry), 1, 2, numbered=True))
            if fields.get(1) == key.encode():
                return fields.get(2, b"").decode()
    return None


def _proto_fields(f, end: int, *wanted: int, numbered: bool = False) -> Iterator:
    """The length-delimited fields numbered ``wanted`` of a protobuf message read from ``f`` up to
    ``end`` (their bytes, or (number, bytes) with ``numbered``), the others skipped."""
    while f.tell() < end:
        key = _varint(f)
        number, wire = key >> 3, key & 7
        if wire == 0:  # a varint
            _varint(f)
            continue
        if wire not in (1, 2, 5):
            raise ValueError("not a protobuf message")
        size = _varint(f) if wire == 2 else {1: 8, 5: 4}[wire]
        if f.tell() + size > end:
            raise ValueError("not a protobuf message")
        if number in wanted:
            data = f.read(size)
            yield (number, data) if numbered else data
        else:
            f.seek(size, 1)


def _varint(f) -> int:
    value = 0
    for shift in range(0, 64, 7):
        b = f.read(1)
        if not b:
            raise ValueError("truncated varint")
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
    raise ValueError("varint too long")


def load_onnx(path: Path, threads: int | None) -> Callable[..., tuple[Tensor, ...]]:
    _require("onnxruntime")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = opts.inter_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's InvalidProtobuf, Fail, ...: the file is not a model it runs
        raise DataError(f"{path} is not an ONNX model ONNX Runtime can run: {_first_line(e)}") from None
    names = [i.name for i in session.get_inputs()]

    def run_onnx(*args: Tensor) -> tuple[Tensor, ...]:
        outs = session.run(None, {n: a.detach().cpu().numpy() for n, a in zip(names, args)})
        return tuple(torch.from_numpy(o) for o in outs)

    return run_onnx


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UnsupportedError(f"ONNX needs {', '.join(missing)}: pip install 'attnlab[export]'")


class OnnxFormat(GraphFormat):
    name = "onnx"
    suffix = ".onnx"
    supports = ("an ONNX graph per graph (ViT, language models, encoder-decoder Transformer), run by ONNX Runtime; "
                "--int8: its dynamic int8 MatMul weights")

    def save(self, g: Graph, path: Path, int8: bool, record: str) -> None:
        save_onnx(g, path, int8=int8, record=record)

    def read_text(self, path: Path, key: str) -> str | None:
        return _onnx_metadata(path, key)

    def open(self, path: Path, threads: int | None, trusted: bool) -> Callable[..., tuple[Tensor, ...]]:
        return load_onnx(path, threads)


ONNX = OnnxFormat()
