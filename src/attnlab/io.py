"""Safe file I/O. Every file attnlab writes (checkpoints, metrics, reports) goes through
:func:`atomic_write` so a crash at any moment leaves either the old file or the new one,
never half of one. PyTorch files are read with ``torch.load(weights_only=True)`` only, and one
that pickles anything else is refused with :func:`untrusted_pickle_message`."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new, unique temporary file beside ``path``, opened for writing. Created with mode 0666
    so the kernel applies the umask (and default ACLs): the file gets the usual permissions,
    which it keeps through the rename (``tempfile.mkstemp`` would make every file 0600)."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    return os.open(tmp, flags, 0o666), tmp


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``
    (atomic on POSIX), then fsync the directory. On error the temporary file is removed and
    ``path`` is untouched. The file gets mode 0666 minus the umask, as ``open`` would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=str)
        f.write("\n")


def save_safetensors_atomic(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """safetensors.torch.save (contiguous, de-aliased copies) written atomically."""
    from safetensors.torch import save

    data = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    atomic_write_bytes(path, save(data, metadata=metadata))


def untrusted_pickle_message(path: str | os.PathLike, what: str = "file") -> str:
    """The one line for a PyTorch file that ``torch.load(weights_only=True)`` refused: it is not
    trusted and nothing in it was run. Names the Python objects it would build, read from the pickle
    without running it (``torch.serialization.get_unsafe_globals_in_checkpoint``; call this inside
    the same ``safe_globals`` context as the load, so allowed ones are not named). Never advises
    ``weights_only=False``: that would run the file's code."""
    import torch

    try:
        found = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - a legacy or damaged pickle: its objects stay unnamed
        found = []
    held = (f"pickles Python objects ({', '.join(found[:5])}{', ...' if len(found) > 5 else ''}) besides" if found
            else "holds something other than")
    return (f"{what} {str(path)!r} is not trusted: it {held} tensors and plain containers; nothing in it was run "
            "(attnlab reads only tensors from PyTorch files: save a state dict, or safetensors)")
