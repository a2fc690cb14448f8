"""Exported graphs, the part every graph format shares (ONNX, ``torch.export`` ``.pt2``): what a
model exports as, and writing and reading a set of graph files all or nothing.

What is exported (:func:`graphs_of`):

- an image classifier (a model that declares
  :class:`attnlab.models.capabilities.ImageClassifier`: the ViTs, the compact Transformers, the
  small ResNet): images (B, C, H, W) -> logits (B, K), B dynamic; H and W fixed at the model's
  size, or, for a ``dynamic_img_size`` ViT, any multiples of the patch size (the graph resamples the
  position embeddings, as the eager model does).
- a language model (:class:`attnlab.models.capabilities.LanguageModel`): a window of token ids
  (B, T) -> logits (B, T, V), B dynamic; T dynamic up to the context length for a Transformer,
  fixed (``window``) for a recurrent model, whose recurrence torch.export unrolls; a recurrent
  model starts from the zero state. A Transformer also gives a ``step`` graph: one token with its
  key/value cache as input and output, for generation (see :mod:`attnlab.export.lm`).
- the encoder–decoder Transformer (a model whose ``layout`` is
  :data:`attnlab.models.capabilities.TRANSFORMER_LAYOUT`): two graphs, ``encoder`` and ``decoder`` (one decoding step
  with its key/value cache as inputs and outputs), see :mod:`attnlab.export.seq2seq`.

:class:`GraphFormat` is the adapter a graph format builds on (:mod:`attnlab.export.onnx`,
:mod:`attnlab.export.pt2`): it supplies how one graph is saved, opened and its metadata read.
All or nothing: :meth:`GraphFormat.write` writes every graph of a model into a private folder
beside the target (``.attnlab-export-<pid>-<random>.tmp``, on the same filesystem), then renames
them into place. Every graph records one ``attnlab_export`` entry (ONNX metadata, a ``.pt2``
extra file): the format version, an export id shared by the graphs of one export, the names of
the set, and what the model expects as input (:mod:`attnlab.export.inputs`);
:meth:`GraphFormat.load` refuses a graph whose set is incomplete or mixes two exports, and the
next export removes the folder of a killed one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import uuid
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.export import Dim

from attnlab.errors import ConfigError, DataError, UnsupportedError
from attnlab.export.adapter import ExportFormat, ExportOptions, LoadedGraph, Written
from attnlab.export.lm import LMStepGraph, lm_cache_zeros
from attnlab.export.seq2seq import DecoderStepGraph, EncoderGraph, self_cache_zeros
from attnlab.models.capabilities import TRANSFORMER_LAYOUT, ImageClassifier, ImageInput, LanguageModel, layout_of

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


def _image_input(model: nn.Module) -> ImageInput | None:
    """The images ``model`` classifies, if it declares itself an image classifier."""
    return model.image_input if isinstance(model, ImageClassifier) else None


def _is_lm(model: nn.Module) -> bool:
    return isinstance(model, LanguageModel)


def _is_encoder_decoder(model: nn.Module) -> bool:
    """Whether ``model`` has the encoder–decoder Transformer's stacks, which :mod:`attnlab.export.seq2seq` reads."""
    return layout_of(model) == TRANSFORMER_LAYOUT


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
    if (images := _image_input(model)) is not None:
        example = batch * images.channels * images.size[0] * images.size[1] * 4
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
    if (images := _image_input(model)) is not None:
        dims = {0: b}
        if (p := images.multiple_of) is not None:  # a dynamic_img_size ViT: position embeddings resampled in the graph
            dims.update({2: p * Dim("grid_h", min=1, max=1024), 3: p * Dim("grid_w", min=1, max=1024)})
        x = torch.randn(batch, images.channels, *images.size)
        return [Graph("", model, (x,), ["images"], ["logits"], {"images": dims})]
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
    if _is_encoder_decoder(model):
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
    raise UnsupportedError(f"cannot export a {type(model).__name__}: export supports the image classifiers, the language models "
                           f"and the encoder-decoder Transformer")


def export_program(g: Graph) -> torch.export.ExportedProgram:
    """``torch.export.export`` of one graph, its dynamic dimensions marked. Strict mode (TorchDynamo):
    the decoder step's cache lengths go through ``len()``, which non-strict tracing would turn
    into constants."""
    with torch.no_grad():
        return torch.export.export(g.module, g.args, dynamic_shapes=g.dynamic_shapes(), strict=True)



def piece_path(path: str | os.PathLike, name: str) -> Path:
    """Where a named piece of a multi-graph export goes: ``m.onnx`` -> ``m.encoder.onnx``."""
    p = Path(path)
    return p if not name else p.with_name(f"{p.stem}.{name}{p.suffix}")



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


# ---------------------------------------------------------------------- the adapter of graph formats
class GraphFormat(ExportFormat):
    """A format holding each graph of :func:`graphs_of` as one file (``m.onnx``, or ``m.encoder.onnx``
    and ``m.decoder.onnx``). A subclass says how one graph is saved (:meth:`save`), opened
    (:meth:`open`) and a metadata entry read without running anything (:meth:`read_text`), and
    may change the model first (:meth:`prepare`)."""

    def prepare(self, model: nn.Module, int8: bool) -> nn.Module:
        """The model whose graphs are saved (a quantized copy for a format that traces int8 layers)."""
        return model

    def save(self, g: Graph, path: Path, int8: bool, record: str) -> None:
        raise NotImplementedError

    def read_text(self, path: Path, key: str) -> str | None:
        raise NotImplementedError

    def open(self, path: Path, threads: int | None, trusted: bool) -> Callable[..., tuple[Tensor, ...]]:
        raise NotImplementedError

    def check(self, model: nn.Module, path: Path, options: ExportOptions) -> None:
        """Refuse a directory, a suffix that is not the format's, or an existing file that attnlab
        did not export (recognised by its record, not by its layout); and a model with no graphs."""
        for g in graphs_of(model, window=options.window):
            target = piece_path(path, g.name)
            if target.is_dir():
                raise ConfigError(f"{target} is a directory; give -o a file name ending in {self.suffix}")
            if target.suffix != self.suffix:
                raise ConfigError(f"{target}: a {self.name} file must end in {self.suffix}")
            if target.exists() and self.read_record(target) is None:
                raise ConfigError(f"{target} exists and was not exported by attnlab; it is left untouched: "
                                  "choose another -o")

    def write(self, model: nn.Module, path: Path, options: ExportOptions) -> list[Path]:
        """The graphs, written into a private folder beside ``path`` first (created before any
        tracing, so an unwritable location is refused at once, naming ``path``), then renamed into
        place; each records the export's id and ``options.inputs``."""
        graphs_of(model, window=options.window)  # refuse an unexportable model before the folder
        with _staging(path) as folder, quiet_libraries():
            graphs = graphs_of(self.prepare(model, options.int8), window=options.window)
            export_id = uuid.uuid4().hex
            names = [g.name for g in graphs]
            targets = [piece_path(path, name) for name in names]
            for g, target in zip(graphs, targets):
                record = {"version": RECORD_VERSION, "export_id": export_id, "graph": g.name, "graphs": names,
                          "input_names": g.input_names, "inputs": options.inputs}
                self.save(g, folder / target.name, options.int8, json.dumps(record))
            _move_in(folder, targets)
        return targets

    def verify(self, model: nn.Module, written: list[Path], options: ExportOptions) -> list[Written]:
        """Each graph run on its example batch against the fp32 eager model: the largest difference."""
        out = []
        for path, g in zip(written, graphs_of(model, window=options.window)):
            with torch.no_grad():
                want = g.module(*g.args)
            got = self.load(path)(*g.args)
            want = want if isinstance(want, tuple) else (want,)
            err = max((a.float() - b.float()).abs().max().item() for a, b in zip(got, want) if a.is_floating_point())
            size = sum(f.stat().st_size for f in (path, path.with_name(path.name + ".data")) if f.exists()) / 2**20
            out.append(Written(path, size, f"max |difference| from the fp32 eager model on an example batch: {err:.2g}"))
        return out

    def read_record(self, path: Path) -> dict | None:
        try:
            text = self.read_text(path, RECORD_KEY)
            record = json.loads(text) if text is not None else None
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, zipfile.BadZipFile):
            return None
        ok = (isinstance(record, dict) and record.get("version") == RECORD_VERSION
              and isinstance(record.get("export_id"), str) and isinstance(record.get("graphs"), list)
              and record.get("graph") in record["graphs"])
        return record if ok else None

    def load(self, path: Path, threads: int | None = None, trusted: bool = False) -> LoadedGraph:
        """The graph at ``path`` (``threads``: intra-op threads of ONNX Runtime); refused
        (:class:`DataError`) if its companions are missing or from another export, or (``.pt2``,
        unless ``trusted``) if it holds code. A file that is not a graph is a one-line DataError."""
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        record = self.read_record(path)
        if record is not None:
            self._check_set(path, record)
        with quiet_libraries():
            return LoadedGraph(path, self.open(path, threads, trusted), record)

    def _check_set(self, path: Path, record: dict) -> None:
        """Refuse a graph whose other graphs (by attnlab's names: ``m.encoder.onnx`` beside
        ``m.decoder.onnx``) are missing or come from another export: a killed export's torn set."""
        name, suffix = record["graph"], path.suffix
        tail = f".{name}{suffix}" if name else suffix
        if len(record["graphs"]) < 2 or not path.name.endswith(tail):
            return
        base = path.with_name(path.name[:-len(tail)] + suffix)
        for other in (piece_path(base, n) for n in record["graphs"] if n != name):
            found = self.read_record(other) if other.exists() else None
            if found is None or found["export_id"] != record["export_id"]:
                why = "is missing" if not other.exists() else "comes from another export"
                raise DataError(f"{path} belongs with {other}, which {why} (an interrupted export?): export again")


@contextlib.contextmanager
def _quiet(*loggers: str, level: int = logging.CRITICAL) -> Iterator[None]:
    """Show only records of ``level`` and above from ``loggers`` ("" the root) and their children
    during the block."""
    logs = [logging.getLogger(name) for name in loggers]
    before = [log.level for log in logs]
    for log in logs:
        log.setLevel(level)
    try:
        yield
    finally:
        for log, lvl in zip(logs, before):
            log.setLevel(lvl)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Keep what torch.onnx and torch.export tell their own developers off the user's terminal
    during an export or a load: the ONNX exporter's "torchvision is not installed. Skipping
    torchvision::nms" (and roi_align, roi_pool, deform_conv2d) without torchvision, and library
    FutureWarnings/DeprecationWarnings (pickling a pytree ``LeafSpec`` warned from ``copyreg``
    in torch 2.13). Failures still raise: they do not go through these logs."""
    with warnings.catch_warnings(), _quiet("torch.onnx", "torch.export", "torch._export", "onnxscript"):
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _first_line(e: Exception) -> str:
    """The first non-blank line of an exception's message, at most 200 characters."""
    line = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    return line if len(line) <= 200 else line[:197] + "..."

