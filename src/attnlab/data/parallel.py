"""Parallel corpora for translation, from local files.

- :func:`read_parallel` reads two aligned files (line i of one translates line i of the
  other); :func:`read_tsv` one file of ``source<TAB>target`` lines. gzip is read transparently
  (:func:`attnlab.data.text.read_text`). Line counts that differ, a line empty on one side only,
  a TSV line without exactly one tab are :class:`~attnlab.errors.DataError` naming the file and
  the line. Lines empty on both sides are skipped and counted.
- :func:`encode_corpus` tokenizes both sides (adding ``</s>`` to sources and ``<s> … </s>``
  to targets) and handles over-long pairs by the user's choice: skip them with a count, or
  refuse the corpus, naming the first offending line.
- :func:`token_batches` builds batches by token count with length bucketing: pairs sorted by
  length inside shuffled buckets, cut into batches of at most ``max_tokens`` padded tokens
  (source or target, whichever is larger), the batches themselves shuffled.
- :func:`collate` pads a list of pairs into (src (B, Ts), tgt (B, Tt)) tensors.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from attnlab.data.text import read_text
from attnlab.errors import ConfigError, DataError


@dataclass
class ParallelCorpus:
    """Aligned sentences; ``lines[i]`` is the 1-based line number of pair i in its file(s)."""

    src: list[str]
    tgt: list[str]
    lines: list[int]
    src_name: str
    tgt_name: str
    skipped_empty: int = 0

    def __len__(self) -> int:
        return len(self.src)

    def where(self, i: int) -> str:
        """Human-readable location of pair ``i``."""
        if self.src_name == self.tgt_name:
            return f"{self.src_name} line {self.lines[i]}"
        return f"{self.src_name} / {self.tgt_name} line {self.lines[i]}"


def read_lines(path: str | Path) -> list[str]:
    text = read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line, it does not start a new one
    return [ln.rstrip("\r") for ln in lines]


def _pairs(src: list[str], tgt: list[str], src_name: str, tgt_name: str) -> ParallelCorpus:
    out = ParallelCorpus([], [], [], src_name, tgt_name)
    for i, (s, t) in enumerate(zip(src, tgt), start=1):
        s, t = s.strip(), t.strip()
        if not s and not t:
            out.skipped_empty += 1
            continue
        if not s or not t:
            empty, other = (src_name, tgt_name) if not s else (tgt_name, src_name)
            raise DataError(f"{empty} line {i} is empty but {other} line {i} is not: the files are not aligned "
                            "(or a translation is missing)")
        out.src.append(s)
        out.tgt.append(t)
        out.lines.append(i)
    if not out.src:
        raise DataError(f"{src_name} and {tgt_name} hold no sentence pairs")
    return out


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> ParallelCorpus:
    """Two aligned text files (gzip or plain UTF-8), one sentence per line."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        shorter, longer = (src_path, tgt_path) if len(src) < len(tgt) else (tgt_path, src_path)
        n = min(len(src), len(tgt))
        raise DataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: line {n + 1} of {longer} "
                        f"has no counterpart in {shorter}")
    return _pairs(src, tgt, str(src_path), str(tgt_path))


def read_tsv(path: str | Path, columns: tuple[int, int] = (0, 1)) -> ParallelCorpus:
    """One file of ``source<TAB>target`` lines (``columns`` picks them; other columns must not exist
    unless ``columns`` names them)."""
    src, tgt = [], []
    width = max(columns) + 1
    for i, line in enumerate(read_lines(path), start=1):
        if not line.strip():
            src.append("")
            tgt.append("")
            continue
        cells = line.split("\t")
        if len(cells) < width or (columns == (0, 1) and len(cells) != 2):
            raise DataError(f"{path} line {i}: expected {width if columns != (0, 1) else 2} tab-separated columns, "
                            f"found {len(cells)}")
        src.append(cells[columns[0]])
        tgt.append(cells[columns[1]])
    return _pairs(src, tgt, str(path), str(path))


def load_parallel(src: str | Path | None = None, tgt: str | Path | None = None, tsv: str | Path | None = None) -> ParallelCorpus:
    """Either ``src`` and ``tgt`` or ``tsv``."""
    if tsv is not None:
        if src is not None or tgt is not None:
            raise ConfigError("give either --tsv or --src and --tgt, not both")
        return read_tsv(tsv)
    if src is None or tgt is None:
        raise ConfigError("a parallel corpus needs both --src and --tgt (or one --tsv file)")
    return read_parallel(src, tgt)


@dataclass
class EncodedCorpus:
    """Token ids of each kept pair: sources end with ``</s>``; targets are ``<s> … </s>``."""

    src: list[list[int]]
    tgt: list[list[int]]
    lines: list[int]
    skipped_long: int = 0
    long_examples: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.src)


def encode_corpus(corpus: ParallelCorpus, src_tok, tgt_tok, *, max_len: int = 128, on_long: str = "skip") -> EncodedCorpus:
    """Tokenize both sides. A pair with more than ``max_len`` tokens on either side (special
    tokens included) is skipped and counted (``on_long="skip"``) or refused (``"error"``)."""
    if on_long not in ("skip", "error"):
        raise ConfigError(f"on_long must be 'skip' or 'error', got {on_long!r}")
    enc_s = src_tok.encode_batch(corpus.src) if hasattr(src_tok, "encode_batch") else [src_tok.encode(s) for s in corpus.src]
    enc_t = tgt_tok.encode_batch(corpus.tgt) if hasattr(tgt_tok, "encode_batch") else [tgt_tok.encode(t) for t in corpus.tgt]
    eos_s, bos_t, eos_t = src_tok.eos_id, tgt_tok.bos_id, tgt_tok.eos_id
    if None in (eos_s, bos_t, eos_t):
        raise ConfigError("translation tokenizers need <s> and </s> special tokens")
    out = EncodedCorpus([], [], [])
    for i, (s, t) in enumerate(zip(enc_s, enc_t)):
        s, t = s + [eos_s], [bos_t] + t + [eos_t]
        if len(s) > max_len or len(t) > max_len:
            where = f"{corpus.where(i)} ({len(s)} source / {len(t)} target tokens, limit {max_len})"
            if on_long == "error":
                raise DataError(f"over-long sentence pair at {where}; raise --max-len or pass --on-long skip")
            out.skipped_long += 1
            if len(out.long_examples) < 3:
                out.long_examples.append(where)
            continue
        out.src.append(s)
        out.tgt.append(t)
        out.lines.append(corpus.lines[i])
    if not out.src:
        raise DataError(f"every sentence pair of {corpus.src_name} is longer than --max-len {max_len} tokens")
    return out


def token_batches(src_lens: Sequence[int], tgt_lens: Sequence[int], max_tokens: int, *, seed: int | None = 0,
                  bucket_size: int = 100) -> list[list[int]]:
    """Index lists of batches holding at most ``max_tokens`` padded tokens on each side
    (B × longest sentence). Pairs of similar length go together; with ``seed`` the buckets
    and the batches are shuffled (``None``: sorted order, for evaluation)."""
    n = len(src_lens)
    order = list(range(n))
    rng = random.Random(seed) if seed is not None else None
    if rng is not None:
        rng.shuffle(order)
        # sort inside large buckets: similar lengths together, still random across buckets
        chunk = bucket_size * 64
        order = [i for c in range(0, n, chunk)
                 for i in sorted(order[c:c + chunk], key=lambda j: (tgt_lens[j], src_lens[j]))]
    else:
        order.sort(key=lambda j: (src_lens[j], tgt_lens[j]))
    batches, cur, ms, mt = [], [], 0, 0
    for j in order:
        s, t = max(ms, src_lens[j]), max(mt, tgt_lens[j])
        if cur and (len(cur) + 1) * max(s, t) > max_tokens:
            batches.append(cur)
            cur, s, t = [], src_lens[j], tgt_lens[j]
        cur.append(j)
        ms, mt = s, t
    if cur:
        batches.append(cur)
    if rng is not None:
        rng.shuffle(batches)
    return batches


def pad_to(seqs: Sequence[Sequence[int]], pad: int) -> Tensor:
    out = torch.full((len(seqs), max(len(s) for s in seqs)), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def collate(src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    return pad_to(src, pad), pad_to(tgt, pad)
