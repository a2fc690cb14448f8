"""The ``torch.export`` program format (``.pt2``): one archive per graph, run by
``torch.export.load(...).module()``.

``int8``: the program holds the model after :func:`attnlab.export.int8.quantize_int8` with
torchao (dynamic int8 Linear layers: int8 weights per output channel, activations quantized at
run time; loading one needs torchao). What a file holds (measured, README "Deployment"): the
weights (``data/weights``: raw fp32 tensors, or torchao's pickled int8 tensors, which torch's
weights-only unpickler accepts), the graph (``models/model.json``, one JSON node per operation:
an int8 Linear is a dozen operations, quantizing its input, an int8 matmul and rescaling, so an
int8 graph is several times the fp32 one) and attnlab's record (``extra/attnlab_export.json``).

Untrusted files: ``torch.export.load`` runs Python from an archive in four places (pickled
payloads, shape guards, symbolic-shape strings given to ``sympy.sympify``, and node targets
resolved by name). :meth:`Pt2Format.load` reads the archive's members first, without running
any of them (:mod:`attnlab.export.untrusted`), and refuses one that holds such code unless the
caller passes ``trusted=True``; attnlab's own programs, int8 ones included, pass.
"""

from __future__ import annotations

import copy
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.export.pt2_archive import constants as pt2

from attnlab.errors import DataError, UnsupportedError
from attnlab.export.graph import RECORD_KEY, Graph, GraphFormat, _first_line, export_program
from attnlab.export.int8 import _torchao_quantization, quantize_int8
from attnlab.export.untrusted import archive_members, check_archive

# Node metadata a program needs only for debugging its tracing, dropped from a saved .pt2: the
# Python stack of every traced operation (file paths of this machine) and the chain of graph
# passes each node came from. They were half the graph of an fp32 ViT and 55% of an int8 one.
TRACING_METADATA = ("stack_trace", "from_node")


def save_pt2(g: Graph, path: str | os.PathLike, record: str | None = None) -> None:
    """Write the graph's ``torch.export`` program to ``path`` (fsynced; :meth:`GraphFormat.write` makes
    it appear atomically), with ``record`` as its ``attnlab_export.json`` extra file. The archive
    holds the weights, the graph (one JSON node per operation, with the module path and the
    operator of each) and the record; not the example batch it was traced with (its
    ``sample_inputs`` member is empty, ``example_inputs`` None after loading) nor the
    :data:`TRACING_METADATA`."""
    program = export_program(g)
    program.example_inputs = None
    for node in program.graph.nodes:
        for key in TRACING_METADATA:
            node.meta.pop(key, None)
    extra = {f"{RECORD_KEY}.json": record} if record is not None else None
    with open(path, "wb") as f:
        torch.export.save(program, f, extra_files=extra)
        f.flush()
        os.fsync(f.fileno())


def load_pt2(path: Path, trusted: bool) -> Callable[..., tuple[Tensor, ...]]:
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
            module = torch.export.load(f).module()  # (torch.export logs a traceback first: quiet_libraries hides it)
        except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged archive
            raise DataError(f"{path} is not a torch.export program this PyTorch can load: {_first_line(e)}") from None

    def run_pt2(*args: Tensor) -> tuple[Tensor, ...]:
        with torch.no_grad():
            out = module(*args)
        return out if isinstance(out, tuple) else (out,)

    return run_pt2


class Pt2Format(GraphFormat):
    name = "pt2"
    suffix = ".pt2"
    supports = ("a torch.export program per graph (ViT, language models, encoder-decoder Transformer); "
                "--int8: torchao dynamic int8 Linear layers")

    def prepare(self, model: nn.Module, int8: bool) -> nn.Module:
        # torch.export traces torchao's int8 tensors
        return quantize_int8(copy.deepcopy(model), backend="torchao") if int8 else model

    def save(self, g: Graph, path: Path, int8: bool, record: str) -> None:
        save_pt2(g, path, record)

    def read_text(self, path: Path, key: str) -> str | None:
        with zipfile.ZipFile(path) as z:
            return z.read(archive_members(z)[f"{pt2.EXTRA_DIR}{key}.json"]).decode()

    def open(self, path: Path, threads: int | None, trusted: bool) -> Callable[..., tuple[Tensor, ...]]:
        return load_pt2(path, trusted)


PT2 = Pt2Format()
