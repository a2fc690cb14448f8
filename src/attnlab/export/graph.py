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

All or nothing: :func:`export_model` writes every graph of a model into a private folder beside
the target (``.attnlab-export-<pid>-<random>.tmp``, on the same filesystem), then renames them
into place. Every graph records one ``attnlab_export`` entry (ONNX metadata, a ``.pt2`` extra
file): the format version, an export id shared by the graphs of one export, and the names of the
set; :func:`load_graph` refuses a graph whose set is incomplete or mixes two exports, and the
next export removes the folder of a killed one.

Untrusted files: ``torch.export.load`` runs Python from a ``.pt2`` archive in four places
(pickled payloads, shape guards, symbolic-shape strings given to ``sympy.sympify``, and node
targets resolved by name). :func:`load_graph` reads the archive's members first, without running
any of them (:mod:`attnlab.export.untrusted`), and refuses one that holds such code unless the
caller passes ``trusted=True``.
Pickled payloads that torch's weights-only unpickler accepts (tensors, and torchao's int8
tensors, which torchao registers as safe) pass, so attnlab's own int8 programs load untrusted.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.export import Dim
from torch.export.pt2_archive import constants as pt2

from attnlab.errors import ConfigError, DataError, UnsupportedError
from attnlab.export.int8 import _torchao_quantization, quantize_int8
from attnlab.export.lm import LMStepGraph, lm_cache_zeros
from attnlab.export.seq2seq import DecoderStepGraph, EncoderGraph, self_cache_zeros
from attnlab.export.untrusted import archive_members, check_archive
from attnlab.nn.transformer import Transformer

FORMATS = ("onnx", "pt2")
RECORD_KEY = "attnlab_export"  # ONNX metadata key, and "<key>.json" among a .pt2 archive's extra files
RECORD_VERSION = 1
STAGING_PREFIX = ".attnlab-export-"  # + "<pid>-<random>.tmp": the folder an export writes into first
# torch.export unrolls a recurrent model's window step by step: 1024 tokens take one to two
# minutes to export (2 CPU cores), and the time grows faster than the window.
MAX_RECURRENT_WINDOW = 1024


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


def check_exportable(model: nn.Module, window: int = 64, batch: int = 2) -> None:
    """Refuse (:class:`ConfigError`), before anything is traced, an export that cannot finish: a
    recurrent model's ``window`` over :data:`MAX_RECURRENT_WINDOW`, or weights and example input
    over a third of this machine's memory (tracing, the exported program and its file each hold
    the weights). ``model`` may be a meta-device probe
    (:func:`attnlab.models.registry.probe_model`), to check settings before building them."""
    if _is_lm(model) and model.is_recurrent and window > MAX_RECURRENT_WINDOW:
        raise ConfigError(f"a window of {window} tokens is too long for a recurrent model's graph, which is unrolled "
                          f"token by token: give at most {MAX_RECURRENT_WINDOW} (--window)")
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    example = 0
    if _is_vit(model):
        size = model.cfg.img_size
        h, w = (size, size) if isinstance(size, int) else size
        example = batch * model.cfg.in_chans * h * w * 4
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if 3 * (weights + example) > memory:
        raise ConfigError(f"{type(model).__name__} with these settings holds {(weights + example) / 2**30:.1f} GiB of "
                          f"weights and example input; exporting needs about three times that and this machine has "
                          f"{memory / 2**30:.0f} GiB: choose smaller settings")


def graphs_of(model: nn.Module, batch: int = 2, window: int = 64) -> list[Graph]:
    """The graphs that export ``model`` (in eval mode), with example inputs of batch ``batch``
    (>= 2: torch.export specialises a dimension whose example size is 0 or 1). ``window``: the
    fixed number of tokens a recurrent language model's graph takes, at most
    :data:`MAX_RECURRENT_WINDOW`."""
    check_exportable(model, window, batch)
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


def save_pt2(g: Graph, path: str | os.PathLike, record: str | None = None) -> None:
    """Write the graph's ``torch.export`` program to ``path`` (fsynced; :func:`export_model` makes
    it appear atomically), with ``record`` as its ``attnlab_export.json`` extra file."""
    program = export_program(g)
    extra = {f"{RECORD_KEY}.json": record} if record is not None else None
    with open(path, "wb") as f:
        torch.export.save(program, f, extra_files=extra)
        f.flush()
        os.fsync(f.fileno())


# Weights above this size go to a "<file>.data" beside the .onnx file (protobuf caps one file at 2 GB).
ONNX_INLINE_LIMIT = 1 << 30


def save_onnx(g: Graph, path: str | os.PathLike, int8: bool = False, record: str | None = None) -> None:
    """Write the graph as ONNX (torch.onnx.export with dynamo=True) to ``path``, with ``record``
    as its ``attnlab_export`` metadata; ``int8``: with ONNX Runtime's dynamic int8 quantization of
    the MatMul/Gemm weights (an fp32 file ``fp32.<name>`` is written beside ``path`` first and
    removed: :func:`export_model` gives each export a folder of its own). Weights over
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

    with _quiet("", logging.ERROR):  # quantize_dynamic logs advice on the root logger
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"],
                         use_external_data_format=external, extra_options={"MatMulConstBOnly": True})


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
    ``int8`` quantizes a copy of the model; ``model`` is unchanged. ``window``: see :func:`graphs_of`.

    The graphs are written into a private folder beside ``path`` first (created before any
    tracing, so an unwritable location is refused at once, naming ``path``), then renamed into
    place; each records the export's id (see the module docstring)."""
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".")
    if fmt not in FORMATS:
        raise UnsupportedError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    graphs = graphs_of(model, window=window)
    with _staging(path) as folder:
        if int8 and fmt == "pt2":
            quantized = quantize_int8(copy.deepcopy(model), backend="torchao")  # torch.export traces torchao int8 tensors
            graphs = graphs_of(quantized, window=window)
        export_id = uuid.uuid4().hex
        names = [g.name for g in graphs]
        targets = [piece_path(path, name) for name in names]
        for g, target in zip(graphs, targets):
            record = json.dumps({"version": RECORD_VERSION, "export_id": export_id, "graph": g.name, "graphs": names})
            if fmt == "pt2":
                save_pt2(g, folder / target.name, record)
            else:
                save_onnx(g, folder / target.name, int8=int8, record=record)
        _move_in(folder, targets)
    return targets


@contextlib.contextmanager
def _staging(path: Path) -> Iterator[Path]:
    """A new private folder beside ``path`` to write an export into, removed on exit. Removes the
    folders that killed exports left there first. An unwritable location (or a write failing
    later) is a one-line :class:`ConfigError` naming ``path``."""
    parent = path.parent
    _remove_stale_staging(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", suffix=".tmp", dir=parent))
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror or e}; choose another output path") from None
    try:
        yield folder
    except OSError as e:  # a full disk, a folder made read-only meanwhile: name the user's path, not ours
        raise ConfigError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _remove_stale_staging(parent: Path) -> None:
    """Remove the staging folders in ``parent`` whose export process is gone (killed)."""
    for folder in parent.glob(f"{STAGING_PREFIX}*.tmp"):
        pid = folder.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _move_in(folder: Path, targets: list[Path]) -> None:
    """Rename the staged graphs (and any ``.data`` weights) onto ``targets``, one after another in
    the microseconds after the whole export is written; then fsync the directory."""
    for target in targets:
        data = folder / f"{target.name}.data"
        if data.exists():
            os.replace(data, target.with_name(data.name))
        os.replace(folder / target.name, target)
    with contextlib.suppress(OSError):
        fd = os.open(targets[0].parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------- the export record
def read_export_record(path: str | os.PathLike) -> dict | None:
    """The ``attnlab_export`` record of a graph attnlab exported (``version``, ``export_id``,
    ``graph``, ``graphs``), or None for any other file. Reads metadata only: nothing in the file
    is unpickled or run, and an ONNX graph is not parsed."""
    path = Path(path)
    try:
        if path.suffix == ".onnx":
            text = _onnx_metadata(path, RECORD_KEY)
        elif path.suffix == ".pt2":
            with zipfile.ZipFile(path) as z:
                text = z.read(archive_members(z)[f"{pt2.EXTRA_DIR}{RECORD_KEY}.json"])
        else:
            return None
        record = json.loads(text)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return None
    ok = (isinstance(record, dict) and record.get("version") == RECORD_VERSION and isinstance(record.get("export_id"), str)
          and isinstance(record.get("graphs"), list) and record.get("graph") in record["graphs"])
    return record if ok else None


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


def _check_set(path: Path, record: dict) -> None:
    """Refuse a graph whose other graphs (by attnlab's names: ``m.encoder.onnx`` beside
    ``m.decoder.onnx``) are missing or come from another export: a killed export's torn set."""
    name, suffix = record["graph"], path.suffix
    tail = f".{name}{suffix}" if name else suffix
    if len(record["graphs"]) < 2 or not path.name.endswith(tail):
        return
    base = path.with_name(path.name[:-len(tail)] + suffix)
    for other in (piece_path(base, n) for n in record["graphs"] if n != name):
        found = read_export_record(other) if other.exists() else None
        if found is None or found["export_id"] != record["export_id"]:
            why = "is missing" if not other.exists() else "comes from another export"
            raise DataError(f"{path} belongs with {other}, which {why} (an interrupted export?): export again")


# ---------------------------------------------------------------------- loading
def load_graph(path: str | os.PathLike, threads: int | None = None, trusted: bool = False) -> Callable[..., tuple[Tensor, ...]]:
    """A function running an exported graph: tensors in (in the graph's input order), a tuple of
    tensors out. ``.onnx`` files run in ONNX Runtime (``threads`` intra-op threads), ``.pt2``
    programs as ``torch.export`` modules. A graph of a multi-graph export is refused
    (:class:`DataError`) if its companions are missing or from another export.

    ``trusted``: a ``.pt2`` archive can hold Python that loading or calling it runs (see the
    module docstring); unless ``trusted=True``, one that does is refused (:class:`DataError`)
    before anything in it runs. Pass ``trusted=True`` only for files you would run as code. An
    ONNX file holds no code. A file that is not a graph is a one-line :class:`DataError`."""
    path = Path(path)
    if path.suffix not in (".onnx", ".pt2"):
        raise UnsupportedError(f"{path}: a graph file ends in .onnx or .pt2")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    record = read_export_record(path)
    if record is not None:
        _check_set(path, record)
    return _load_onnx(path, threads) if path.suffix == ".onnx" else _load_pt2(path, trusted)


def _load_onnx(path: Path, threads: int | None) -> Callable[..., tuple[Tensor, ...]]:
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


def _load_pt2(path: Path, trusted: bool) -> Callable[..., tuple[Tensor, ...]]:
    try:
        _torchao_quantization()  # registers the int8 operators an int8 program calls, and its tensors as safe to unpickle
    except UnsupportedError:
        pass  # an fp32 program does not need them
    with open(path, "rb") as f:  # one open file for the check and the load: the checked bytes are the loaded ones
        try:
            with zipfile.ZipFile(f) as z:
                check_archive(z, path, trusted)
        except zipfile.BadZipFile:
            raise DataError(f"{path} is not a torch.export program (.pt2): not a zip archive") from None
        f.seek(0)
        try:
            with _quiet("torch.export"):  # it logs a traceback before raising
                module = torch.export.load(f).module()
        except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged archive
            raise DataError(f"{path} is not a torch.export program this PyTorch can load: {_first_line(e)}") from None

    def run_pt2(*args: Tensor) -> tuple[Tensor, ...]:
        with torch.no_grad():
            out = module(*args)
        return out if isinstance(out, tuple) else (out,)

    return run_pt2


@contextlib.contextmanager
def _quiet(logger: str, level: int = logging.CRITICAL) -> Iterator[None]:
    """Show only records of ``level`` and above from ``logger`` ("" the root) and its children
    during the block."""
    log = logging.getLogger(logger)
    before = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(before)


def _first_line(e: Exception) -> str:
    """The first non-blank line of an exception's message, at most 200 characters."""
    line = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return line if len(line) <= 200 else line[:197] + "..."


def _require(*modules: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UnsupportedError(f"ONNX needs {', '.join(missing)}: pip install 'attnlab[export]'")

