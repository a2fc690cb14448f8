"""Text corpora: reading files (gzip, UTF-8), the split rule, BPTT batching and windows."""

import gzip

import pytest
import torch

from attnlab.data.text import (
    batchify,
    bptt_windows,
    load_corpus,
    num_bptt_windows,
    random_windows,
    read_text,
    split_text,
)
from attnlab.errors import ConfigError, DataError


def test_read_plain_and_gzip(tmp_path):
    (tmp_path / "a.txt").write_text("héllo\nworld\n", encoding="utf-8")
    with gzip.open(tmp_path / "b.txt.gz", "wt", encoding="utf-8") as f:
        f.write("héllo\nworld\n")
    assert read_text(tmp_path / "a.txt") == read_text(tmp_path / "b.txt.gz") == "héllo\nworld\n"


def test_read_refuses_empty_missing_and_non_utf8(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="is empty"):
        read_text(tmp_path / "empty.txt")
    (tmp_path / "blank.txt").write_text("  \n\n")
    with pytest.raises(DataError, match="only whitespace"):
        read_text(tmp_path / "blank.txt")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8 text \(invalid byte 0xe9 at offset 3\)"):
        read_text(tmp_path / "latin1.txt")
    with pytest.raises(DataError, match="not found"):
        read_text(tmp_path / "nope.txt")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(DataError, match="cannot be decompressed"):
        read_text(tmp_path / "bad.gz")


def test_split_rule_last_fraction():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    train, valid = split_text(text, 0.1)
    assert train + valid == text and len(valid) == 100
    with pytest.raises(ConfigError):
        split_text(text, 1.0)
    with pytest.raises(DataError, match="too short"):
        split_text("abcdefgh  ", 0.2)


def test_load_corpus_forms(tmp_path):
    for name in ("t", "v", "s"):
        (tmp_path / f"{name}.txt").write_text(f"{name} text\n")
    c = load_corpus(train=tmp_path / "t.txt", valid=tmp_path / "v.txt", test=tmp_path / "s.txt")
    assert (c.train, c.valid, c.test) == ("t text\n", "v text\n", "s text\n")
    with pytest.raises(ConfigError, match="either one text file"):
        load_corpus(tmp_path / "t.txt", train=tmp_path / "t.txt")
    with pytest.raises(ConfigError, match="--valid"):
        load_corpus(train=tmp_path / "t.txt")


def test_batchify_and_bptt_windows_are_contiguous():
    ids = torch.arange(103)
    rows = batchify(ids, 4, 5)
    assert rows.shape == (4, 25) and rows[1, 0] == 25
    wins = list(bptt_windows(rows, 5))
    assert len(wins) == num_bptt_windows(rows, 5) == 5
    assert wins[-1][0].shape == (4, 4)  # 24 targets: 4 full windows and one of 4
    xs = torch.cat([x for x, _ in wins], 1)
    ys = torch.cat([y for _, y in wins], 1)
    assert torch.equal(xs, rows[:, :-1]) and torch.equal(ys, rows[:, 1:])


def test_window_longer_than_corpus_is_clear():
    with pytest.raises(DataError, match="window of 50 tokens is longer than the training split"):
        batchify(torch.arange(100), 4, 50, "the training split")
    with pytest.raises(DataError, match="longer than the corpus"):
        random_windows(torch.arange(10), 2, 10)


def test_random_windows_shift_and_seed():
    ids = torch.arange(1000)
    x, y = random_windows(ids, 8, 16, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (8, 16) and torch.equal(y, x + 1)
    x2, _ = random_windows(ids, 8, 16, torch.Generator().manual_seed(3))
    assert torch.equal(x, x2)
