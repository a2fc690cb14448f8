"""Shared by the benchmark scripts: write one section of BENCHMARKS.md between markers, keeping
the other sections, atomically."""

from __future__ import annotations

import platform
import re
import sys
from pathlib import Path

import torch

from attnlab.io import atomic_write

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEach section is written by the script named in it; rerun that command to refresh it.\n"


def machine() -> str:
    """The processor (model, the ISA level torch dispatches to, VNNI/AMX: int8 speed depends on
    them), threads and versions, for the line under every figure."""
    from attnlab.cpu import describe_cpu

    return (f"{describe_cpu()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def command() -> str:
    script = Path(sys.argv[0])
    script = script.relative_to(ROOT) if script.is_absolute() else script
    return "python " + " ".join([str(script), *sys.argv[1:]])


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section tagged ``name`` in BENCHMARKS.md."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    start, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    with atomic_write(BENCHMARKS, "w") as f:
        f.write(text)
