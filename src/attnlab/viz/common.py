"""What every picture shares: one palette and one :func:`save_figure`.

Figures are :class:`matplotlib.figure.Figure` objects built without pyplot (Agg, no display,
no global state). :func:`save_figure` checks the destination before rendering: a directory, a
file that is not a picture (a checkpoint, say) or an unknown extension is refused in one line,
and the picture is written atomically, so a good file is never replaced by half a PNG.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from attnlab.errors import ConfigError

# A calm palette used by every plot of the project.
COLORS = {"train": "#1f77b4", "val": "#d62728", "lr": "#7f7f7f", "smooth": "#0b3c5d",
          "rnn": "#d62728", "gru": "#ff7f0e", "lstm": "#2ca02c", "transformer": "#1f77b4"}
HEATMAP = "inferno"

#: The formats a picture may be written in, with the first bytes of such a file.
PICTURE_FORMATS = {".png": (b"\x89PNG",), ".svg": (b"<?xml", b"<svg"), ".pdf": (b"%PDF",),
                   ".jpg": (b"\xff\xd8",), ".jpeg": (b"\xff\xd8",)}


def check_picture_path(path: str | os.PathLike) -> Path:
    """Refuse an output path that cannot or must not receive a picture."""
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give a file name such as {path / 'picture.png'}")
    if suffix not in PICTURE_FORMATS:
        raise ConfigError(f"{path}: a picture is written as {', '.join(PICTURE_FORMATS)}; give a file name with one of "
                          "these extensions")
    if path.exists():
        try:
            with open(path, "rb") as f:
                head = f.read(8)
        except OSError as e:
            raise ConfigError(f"cannot read {path} to check it: {e.strerror}") from None
        if head and not head.lstrip().startswith(PICTURE_FORMATS[suffix]):
            raise ConfigError(f"{path} exists and is not a {suffix[1:].upper()} picture; refusing to overwrite it")
    parent = path.parent if str(path.parent) else Path(".")
    probe = parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: {probe} is not a writable directory")
    return path


def check_dpi(dpi: int) -> int:
    if not isinstance(dpi, int) or not 10 <= dpi <= 1200:
        raise ConfigError(f"--dpi {dpi}: give a resolution between 10 and 1200 dots per inch")
    return dpi


def figure_to_bytes(fig, fmt: str = "png", dpi: int = 120) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=check_dpi(dpi), bbox_inches="tight", facecolor="white")
    return buf.getvalue()


def figure_to_png(fig, dpi: int = 120) -> bytes:
    return figure_to_bytes(fig, "png", dpi)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Write ``fig`` to ``path`` (format from the extension), atomically; returns the path."""
    from attnlab.io import atomic_write_bytes

    path = check_picture_path(path)
    fmt = path.suffix.lower()[1:].replace("jpg", "jpeg")
    try:
        atomic_write_bytes(path, figure_to_bytes(fig, fmt, dpi))
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}") from None
    return path
