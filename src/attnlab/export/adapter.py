"""What an export format is: the contract every adapter in :data:`attnlab.export.formats.FORMATS`
fulfils. ``attnlab export``, :func:`~attnlab.export.formats.export_model` and
:func:`~attnlab.export.formats.load_graph` know formats only through it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn


@dataclass
class ExportOptions:
    """How to export: the CLI's options by the same names."""

    int8: bool = False  # int8 Linear weights (each format says how it stores them)
    window: int = 64  # tokens per window of a recurrent language model's graph
    inputs: dict = field(default_factory=dict)  # what the graph expects: stored in the file (attnlab.export.inputs)
    extras: dict = field(default_factory=dict)  # a run's extras (its tokenizers), for formats that need them


@dataclass
class Written:
    """One file (or folder) an export wrote and how it compares with the eager model."""

    path: Path
    mib: float
    check: str  # one clause: "max |difference| from the fp32 eager model on an example batch: 1e-07"


@dataclass
class LoadedGraph:
    """An exported graph, ready to run: tensors in (in the graph's input order), a tuple of
    tensors out; ``record`` is the ``attnlab_export`` record stored in the file (None for a file
    attnlab did not write), ``inputs`` what the graph expects (see :mod:`attnlab.export.inputs`)."""

    path: Path
    run: Callable[..., tuple[Tensor, ...]]
    record: dict | None

    def __call__(self, *args: Tensor) -> tuple[Tensor, ...]:
        return self.run(*args)

    @property
    def inputs(self) -> dict:
        return (self.record or {}).get("inputs", {})


class ExportFormat:
    """One export format. Subclasses set the class attributes and implement the methods."""

    name: str  # the --format name: "onnx"
    suffix: str  # of the file, or of the folder: ".onnx", ".ct2"
    folder: bool = False  # the export is one folder (else one file per graph)
    supports: str  # one line for --help: which models, what --int8 stores

    def check(self, model: nn.Module, path: Path, options: ExportOptions) -> None:
        """Refuse (ConfigError/UnsupportedError), before any slow work, a model this format cannot
        hold or a target it may not write (a directory, another suffix, a file attnlab did not write)."""
        raise NotImplementedError

    def write(self, model: nn.Module, path: Path, options: ExportOptions) -> list[Path]:
        """Export ``model`` (unchanged) to ``path``; returns what was written, all or nothing."""
        raise NotImplementedError

    def verify(self, model: nn.Module, written: list[Path], options: ExportOptions) -> list[Written]:
        """Run what was written on an example input and compare it with the eager ``model``."""
        raise NotImplementedError

    def read_record(self, path: Path) -> dict | None:
        """The ``attnlab_export`` record of an export attnlab wrote, None for anything else;
        reads metadata only (nothing in the file runs)."""
        raise NotImplementedError

    def load(self, path: Path, threads: int | None = None, trusted: bool = False) -> LoadedGraph:
        """The export at ``path``, ready to run (see :class:`LoadedGraph`)."""
        raise NotImplementedError
