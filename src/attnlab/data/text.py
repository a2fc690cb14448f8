"""Text corpora from local files, and the two ways a language model reads a token stream.

- :func:`read_text` reads a UTF-8 file (gzip is detected by its magic bytes and read
  transparently) and refuses empty or undecodable files with a :class:`~attnlab.errors.DataError`.
- :func:`load_corpus` gives the train / valid (/ test) texts, either from explicit files or from
  one file split by a stated rule: the **last** ``valid_fraction`` of its characters is the
  validation text (the usual first 90 % / last 10 % split of Tiny Shakespeare).
- :func:`batchify` lays a token stream out as B parallel rows (B, N); :func:`bptt_windows` walks
  them in consecutive windows — the layout of truncated back-propagation through time, where the
  hidden state at the end of one window is the start of the next in the same row.
- :func:`random_windows` draws contiguous windows at random offsets (Transformer training).

Shapes: token ids (B, T); targets are the inputs shifted by one position.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from attnlab.errors import ConfigError, DataError


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file, gunzipped if it is gzip-compressed."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file {path} not found" if not path.exists() else f"{path} is not a file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path} looks gzip-compressed but cannot be decompressed: {e}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        "convert it to UTF-8 first") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise DataError(f"{path} is empty" + (" (only whitespace)" if text else ""))
    return text


@dataclass
class TextCorpus:
    """The texts of a language-modelling corpus and where they came from."""

    train: str
    valid: str
    test: str | None = None
    source: str = ""  # how the splits were made, for the run record

    def splits(self) -> dict[str, str]:
        out = {"train": self.train, "valid": self.valid}
        if self.test is not None:
            out["test"] = self.test
        return out


def split_text(text: str, valid_fraction: float = 0.1) -> tuple[str, str]:
    """(train, valid): the first ``1 - valid_fraction`` of the characters, then the rest, cut at
    character ``int(len(text) * (1 - valid_fraction))``."""
    if not 0.0 < valid_fraction < 1.0:
        raise ConfigError(f"the validation fraction must be in (0, 1), got {valid_fraction}")
    cut = int(len(text) * (1.0 - valid_fraction))
    train, valid = text[:cut], text[cut:]
    if not train.strip() or not valid.strip():
        raise DataError(f"the text ({len(text)} characters) is too short to split into train and validation "
                        f"with a validation fraction of {valid_fraction}")
    return train, valid


def load_corpus(text: str | Path | None = None, *, train: str | Path | None = None, valid: str | Path | None = None,
                test: str | Path | None = None, valid_fraction: float = 0.1) -> TextCorpus:
    """Either ``text`` (one file, split by :func:`split_text`) or ``train`` + ``valid`` (+ ``test``)."""
    if text is not None:
        if train is not None or valid is not None or test is not None:
            raise ConfigError("give either one text file (--text) or --train/--valid[/--test] files, not both")
        tr, va = split_text(read_text(text), valid_fraction)
        return TextCorpus(tr, va, None, source=f"{Path(text).name}: first {1 - valid_fraction:.0%} of the characters "
                                               f"for training, last {valid_fraction:.0%} for validation")
    if train is None or valid is None:
        raise ConfigError("give a text file (--text FILE) or both --train FILE and --valid FILE (and optionally --test FILE)")
    return TextCorpus(read_text(train), read_text(valid), None if test is None else read_text(test),
                      source=f"files: train={Path(train).name}, valid={Path(valid).name}"
                             + (f", test={Path(test).name}" if test is not None else ""))


# --- token streams ---------------------------------------------------------------------------------

def as_ids(ids) -> Tensor:
    t = torch.as_tensor(ids, dtype=torch.long)
    if t.dim() != 1:
        raise DataError(f"a token stream must be 1-D, got shape {tuple(t.shape)}")
    return t


def batchify(ids, batch_size: int, window: int, name: str = "the corpus") -> Tensor:
    """Cut the stream into ``batch_size`` contiguous rows (B, N), dropping the remainder; each row
    must hold at least one window plus its shifted target (``window + 1`` tokens)."""
    ids = as_ids(ids)
    if batch_size < 1 or window < 1:
        raise ConfigError(f"batch size and window must be >= 1, got {batch_size} and {window}")
    n = ids.numel() // batch_size
    if n < window + 1:
        raise DataError(f"a window of {window} tokens is longer than {name} allows: {ids.numel()} tokens in "
                        f"{batch_size} row(s) give {n} tokens per row, and a window needs {window + 1}; "
                        "use a smaller --window or --batch-size, or more text")
    return ids[: n * batch_size].view(batch_size, n)


def bptt_windows(rows: Tensor, window: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive (x, y) windows over (B, N) rows: x = rows[:, i:i+T], y = rows[:, i+1:i+T+1].
    The last window is shorter when N - 1 is not a multiple of T."""
    n = rows.shape[1]
    for i in range(0, n - 1, window):
        t = min(window, n - 1 - i)
        yield rows[:, i : i + t], rows[:, i + 1 : i + 1 + t]


def num_bptt_windows(rows: Tensor, window: int) -> int:
    return -(-(rows.shape[1] - 1) // window)


def check_window(ids, window: int, name: str = "the corpus") -> None:
    n = as_ids(ids).numel()
    if n < window + 1:
        raise DataError(f"a window of {window} tokens is longer than {name} ({n} tokens; a window needs {window + 1}); "
                        "use a smaller --window or more text")


def random_windows(ids, batch_size: int, window: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """A batch of ``batch_size`` contiguous windows at uniformly random offsets: x (B, T), y (B, T)."""
    ids = as_ids(ids)
    check_window(ids, window)
    starts = torch.randint(0, ids.numel() - window, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(window + 1)[None, :]
    chunk = ids[idx]
    return chunk[:, :-1], chunk[:, 1:]
