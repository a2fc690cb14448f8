"""An experiment's output folder: it must be new, empty or one the same experiment wrote, known by
the marker file the experiment writes there first (never by file names), which lists everything
the experiment writes; ``--overwrite`` removes only that."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from attnlab.errors import ConfigError
from attnlab.io import atomic_write_json

MARKER = ".attnlab-experiment.json"  # marks an experiment's output folder and lists what it wrote there
MARKER_FORMAT = "attnlab-experiment/1"


def new_marker(name: str) -> dict:
    return {"format": MARKER_FORMAT, "experiment": name, "wrote": [], "data_sha256": {}}


def read_marker(out: Path) -> dict | None:
    """The marker of the output folder ``out``, None if it has none."""
    p = out / MARKER
    if not p.exists():
        return None
    try:
        m = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{p} is not readable ({e}); pass another -o") from None
    if not (isinstance(m, dict) and m.get("format") == MARKER_FORMAT and isinstance(m.get("experiment"), str)
            and isinstance(m.get("wrote"), list) and isinstance(m.get("data_sha256"), dict)):
        raise ConfigError(f"{p} is not an attnlab experiment marker ({MARKER_FORMAT}); pass another -o")
    return m


def user_entries(out: Path) -> list[Path]:
    """What ``out`` holds besides the marker's temporaries (left by a run killed while writing it)."""
    return [p for p in out.iterdir() if not (p.name.startswith(f".{MARKER}.") and p.name.endswith(".tmp"))]


def claim_output_dir(out: Path, name: str, overwrite: bool = False) -> None:
    """Refuse, before anything is written, an output folder that is not new, empty or marked by
    experiment ``name``; with ``overwrite`` remove what the marker lists. Then write the marker."""
    from attnlab.io import check_output_dir

    check_output_dir(out)
    marker = read_marker(out) if out.is_dir() else None
    if marker is None and out.is_dir() and user_entries(out):
        raise ConfigError(f"{out} is not empty and was not written by experiment {name} (it has no {MARKER}); "
                          "refusing to write into it: pass a new or empty -o"
                          + (" (--overwrite replaces only what the experiment itself wrote)" if overwrite else ""))
    if marker is not None and marker["experiment"] != name:
        raise ConfigError(f"{out} holds the outputs of experiment {marker['experiment']}, not {name}; "
                          "pass another -o")
    if marker is not None and overwrite:
        remove_outputs(out, marker["wrote"])
        marker = None
    atomic_write_json(out / MARKER, marker or new_marker(name))


def remove_outputs(out: Path, wrote: list) -> None:
    """Remove what an experiment wrote into ``out`` (its marker's list), then the folders that
    held only that; nothing else in ``out`` is touched."""
    for rel in wrote:
        parts = Path(rel).parts if isinstance(rel, str) else ()
        if not parts or Path(rel).is_absolute() or ".." in parts or parts == (MARKER,):
            raise ConfigError(f"{out / MARKER} lists {rel!r}, which is not a file it may remove; pass another -o")
    for rel in wrote:
        p = out / rel
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
        if p.parent != out and p.parent.is_dir() and not any(p.parent.iterdir()):
            p.parent.rmdir()
