"""The export formats, one adapter each (:class:`attnlab.export.adapter.ExportFormat`), in one
table, as the checkpoint formats are in :mod:`attnlab.checkpoints`: ``attnlab export``,
:func:`export_model` and :func:`load_graph` ask it and know no format by name. Adding a format is
writing its adapter and adding it to :data:`FORMATS`."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from attnlab.errors import ConfigError, UnsupportedError
from attnlab.export.adapter import ExportFormat, ExportOptions, LoadedGraph
from attnlab.export.ctranslate2 import CTRANSLATE2
from attnlab.export.onnx import ONNX
from attnlab.export.pt2 import PT2

FORMATS: dict[str, ExportFormat] = {f.name: f for f in (ONNX, PT2, CTRANSLATE2)}


def format_named(name: str) -> ExportFormat:
    if name not in FORMATS:
        raise UnsupportedError(f"unknown export format {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def format_of(path: str | os.PathLike) -> ExportFormat | None:
    """The format whose suffix ``path`` ends in, or None."""
    return next((f for f in FORMATS.values() if str(path).endswith(f.suffix)), None)


def format_for(name: str | None, output: str | os.PathLike | None) -> ExportFormat:
    """The format named, else the one of ``output``'s suffix, else the first of the table (ONNX)."""
    if name is not None:
        return format_named(name)
    if output is None:
        return next(iter(FORMATS.values()))
    found = format_of(output)
    if found is None:
        names = ", ".join(FORMATS)
        suffixes = ", ".join(f.suffix for f in FORMATS.values())
        raise ConfigError(f"cannot tell the format from {str(output)!r}: give --format {names}, or end -o with {suffixes}")
    return found


def export_model(model: nn.Module, path: str | os.PathLike, fmt: str | None = None, int8: bool = False,
                 window: int = 64, inputs: dict | None = None) -> list[Path]:
    """Export ``model`` (unchanged) to ``path`` in format ``fmt`` (default: from the suffix);
    returns what was written: for the graph formats one file per graph (``<stem>.encoder<suffix>``
    and ``<stem>.decoder<suffix>`` for the encoder–decoder Transformer; the window graph at
    ``path`` and ``<stem>.step<suffix>`` for a Transformer LM; an ONNX file over 1 GiB of weights
    has its ``<file>.data`` beside it). ``window``: a recurrent LM's tokens per graph;
    ``inputs``: what the model expects (:func:`attnlab.export.inputs.describe_inputs`), stored in
    every file."""
    path = Path(path)
    f = format_named(fmt) if fmt else format_of(path)
    if f is None:
        raise UnsupportedError(f"{path}: cannot tell the export format; end it in "
                               f"{', '.join(f.suffix for f in FORMATS.values())} or pass fmt")
    options = ExportOptions(int8=int8, window=window, inputs=dict(inputs or {}))
    f.check(model, path, options)
    return f.write(model, path, options)


def load_graph(path: str | os.PathLike, threads: int | None = None, trusted: bool = False) -> LoadedGraph:
    """An export ready to run, by its suffix: a graph (``.onnx`` in ONNX Runtime with ``threads``
    intra-op threads, ``.pt2`` as a ``torch.export`` module) takes tensors in the graph's input
    order and returns a tuple of tensors; ``.inputs`` says what it expects. A graph of a
    multi-graph export is refused (:class:`DataError`) if its companions are missing or from
    another export. ``trusted``: a ``.pt2`` archive can hold Python that loading or calling it
    runs; unless ``trusted=True``, one that does is refused before anything in it runs (pass it
    only for files you would run as code). A ``.ct2`` folder gives a ``ctranslate2.Translator``."""
    path = Path(path)
    f = format_of(path)
    if f is None:
        raise UnsupportedError(f"{path}: an export ends in {', '.join(f.suffix for f in FORMATS.values())}")
    return f.load(path, threads=threads, trusted=trusted)


def read_export_record(path: str | os.PathLike) -> dict | None:
    """The ``attnlab_export`` record of an export attnlab wrote (``version``, ``export_id``, the
    graphs of the set, ``inputs``), or None for any other file; runs nothing in the file."""
    f = format_of(path)
    return f.read_record(Path(path)) if f is not None else None
