"""Safe file I/O. Every file attnlab writes (checkpoints, metrics, reports) goes through
:func:`atomic_write` so a crash at any moment leaves either the old file or the new one,
never half of one. PyTorch files are read with :func:`load_torch_file` only
(``torch.load(weights_only=True)``): one that pickles anything else is refused with
:func:`untrusted_pickle_message`, and one that is no PyTorch file at all says so."""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import pickle
import re
import secrets
import warnings
import zipfile
from pathlib import Path

from attnlab.errors import CheckpointError, ConfigError

#: the pickle protocol ``torch.save`` writes by default; its safe reader reads no later one fully
TORCH_PICKLE_PROTOCOL = 2

#: the stable phrase of every refusal of an untrusted PyTorch pickle (tests and callers match on it)
UNTRUSTED_PICKLE = "is not trusted and nothing in it was run"


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new, unique temporary file beside ``path``, opened for writing. Created with mode 0666
    so the kernel applies the umask (and default ACLs): the file gets the usual permissions,
    which it keeps through the rename (``tempfile.mkstemp`` would make every file 0600)."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    return os.open(tmp, flags, 0o666), tmp


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named as :func:`atomic_write`'s temporary files are (``.NAME.HEX.tmp``):
    one a process killed in the middle of a write left behind."""
    return re.fullmatch(r"\..+\.[0-9a-f]{16}\.tmp", Path(path).name) is not None


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


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def check_output_dir(path: str | os.PathLike) -> None:
    """Refuse, before any work is written, an output directory that is a file or not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} exists and is not a directory")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write into {probe}: permission denied; choose another output directory")


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
    """The one line for a PyTorch file that ``torch.load(weights_only=True)`` refused, carrying
    :data:`UNTRUSTED_PICKLE` whatever else its wording says. Names the Python objects it would
    build, read from the pickle without running it
    (``torch.serialization.get_unsafe_globals_in_checkpoint``; call this inside the same
    ``safe_globals`` context as the load, so allowed ones are not named). Never advises
    ``weights_only=False``: that would run the file's code."""
    import torch

    try:
        found = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - a legacy or damaged pickle: its objects stay unnamed
        found = []
    held = (f"pickles Python objects ({', '.join(found[:5])}{', ...' if len(found) > 5 else ''}) besides" if found
            else "holds something other than")
    return (f"{what} {str(path)!r} {UNTRUSTED_PICKLE}: it {held} tensors and plain containers "
            "(attnlab reads only tensors from PyTorch files: save a state dict, or safetensors)")


def load_torch_file(path: str | os.PathLike, what: str = "file"):
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain containers only (more
    inside a ``torch.serialization.safe_globals`` context), without torch's warning about the
    pickle protocol. What it cannot read is one :class:`CheckpointError` line saying what the file
    is: not a checkpoint at all, saved with a pickle protocol the safe reader cannot read, not
    trusted (it pickles other objects: :func:`untrusted_pickle_message`), or damaged."""
    import torch

    path = Path(path)
    other = _not_a_torch_file(path)
    if other:
        raise CheckpointError(f"cannot read {what} {str(path)!r}: not a checkpoint ({other})")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            protocol = _pickle_protocol(path)
            if protocol is not None and protocol > TORCH_PICKLE_PROTOCOL:
                raise CheckpointError(
                    f"cannot read {what} {str(path)!r}: it was saved with pickle protocol {protocol}, which the safe "
                    "reader cannot read; nothing in it was run (save it with torch.save's default protocol, or as "
                    "safetensors)") from None
            raise CheckpointError(untrusted_pickle_message(path, what)) from None
        except Exception as e:  # noqa: BLE001 - a truncated zip, a bad magic number, EOF: torch raises many kinds
            lines = str(e).strip().splitlines()
            raise CheckpointError(f"cannot read {what} {str(path)!r}: not a readable PyTorch file, it may be truncated "
                                  f"or corrupt ({type(e).__name__}{': ' + lines[0] if lines else ''})") from None


def _not_a_torch_file(path: Path) -> str | None:
    """What ``path`` is when it is neither a zip archive (``torch.save``) nor a pickle (a legacy
    ``torch.save`` file), judged from its first bytes; None when it may be a PyTorch file."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK") or head[:1] == b"\x80":  # a zip archive; a pickle's PROTO opcode
        return None
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut at the end is no error
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c.isspace() for c in text):
        return f"a text file starting {(text.strip().splitlines() or [''])[0][:40]!r}"
    return f"neither a PyTorch zip archive nor a pickle: it starts with bytes {head[:8].hex(' ')}"


def _pickle_protocol(path: Path) -> int | None:
    """The protocol of the pickle ``torch.load`` reads first (the file itself, or the ``data.pkl``
    of a zip archive); None when there is none to find."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.rpartition("/")[2] == "data.pkl"), None)
                head = z.read(name)[:2] if name else b""
        else:
            with open(path, "rb") as f:
                head = f.read(2)
    except (OSError, zipfile.BadZipFile):
        return None
    return head[1] if len(head) == 2 and head[:1] == b"\x80" else None
