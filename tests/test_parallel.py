"""Parallel corpora: aligned files, TSV, line-numbered errors, over-long pairs, token batches."""

import gzip

import pytest

from attnlab.data.parallel import collate, encode_corpus, load_parallel, read_parallel, read_tsv, token_batches
from attnlab.data.tokenizers import BPETokenizer
from attnlab.errors import ConfigError, DataError


def write(path, text, gz=False):
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_aligned_files_gzip_and_plain(tmp_path):
    s = write(tmp_path / "a.en.gz", "a dog\n\nthe cat\n", gz=True)
    t = write(tmp_path / "a.de", "ein Hund\n\ndie Katze\n")
    c = read_parallel(s, t)
    assert c.src == ["a dog", "the cat"] and c.tgt == ["ein Hund", "die Katze"]
    assert c.lines == [1, 3] and c.skipped_empty == 1


def test_mismatched_line_counts_name_files_and_line(tmp_path):
    s = write(tmp_path / "s.txt", "a\nb\nc\n")
    t = write(tmp_path / "t.txt", "x\ny\n")
    with pytest.raises(DataError, match=r"3 lines but .*t\.txt has 2: line 3 of .*s\.txt"):
        read_parallel(s, t)


def test_empty_line_on_one_side(tmp_path):
    s = write(tmp_path / "s.txt", "a\nb\nc\n")
    t = write(tmp_path / "t.txt", "x\n\nz\n")
    with pytest.raises(DataError, match=r"t\.txt line 2 is empty but .*s\.txt line 2 is not"):
        read_parallel(s, t)


def test_tsv(tmp_path):
    p = write(tmp_path / "c.tsv", "a dog\tein Hund\nthe cat\tdie Katze\n")
    c = read_tsv(p)
    assert c.src == ["a dog", "the cat"] and c.tgt == ["ein Hund", "die Katze"]
    bad = write(tmp_path / "bad.tsv", "a\tb\nno tab here\n")
    with pytest.raises(DataError, match=r"bad\.tsv line 2: expected 2 tab-separated columns, found 1"):
        read_tsv(bad)
    with pytest.raises(ConfigError):
        load_parallel(src=p, tsv=p)
    with pytest.raises(ConfigError):
        load_parallel(src=p)


def test_missing_and_undecodable_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_parallel(tmp_path / "nope", tmp_path / "nope2")
    b = tmp_path / "bin.txt"
    b.write_bytes(b"\xff\xfe\x00abc\n")
    t = write(tmp_path / "t.txt", "x\n")
    with pytest.raises(DataError, match="UTF-8"):
        read_parallel(b, t)


@pytest.fixture(scope="module")
def tok():
    text = "a dog runs on the grass\nthe cat sleeps\nein Hund rennt auf dem Gras\ndie Katze schläft\n" * 20
    return BPETokenizer.train(text, vocab_size=300)


def test_over_long_pairs_skipped_with_count_or_refused(tmp_path, tok):
    long = " ".join(["grass"] * 60)
    s = write(tmp_path / "s.txt", f"a dog\n{long}\nthe cat\n")
    t = write(tmp_path / "t.txt", "ein Hund\nGras\ndie Katze\n")
    c = read_parallel(s, t)
    enc = encode_corpus(c, tok, tok, max_len=20, on_long="skip")
    assert len(enc) == 2 and enc.skipped_long == 1 and enc.lines == [1, 3]
    assert "line 2" in enc.long_examples[0]
    with pytest.raises(DataError, match=r"over-long sentence pair at .*s\.txt / .*t\.txt line 2"):
        encode_corpus(c, tok, tok, max_len=20, on_long="error")
    # specials: source ends with </s>, target is <s> ... </s>
    assert enc.src[0][-1] == tok.eos_id and enc.tgt[0][0] == tok.bos_id and enc.tgt[0][-1] == tok.eos_id


def test_token_batches_respect_the_budget_and_cover_everything():
    import random

    r = random.Random(0)
    src = [r.randint(1, 40) for _ in range(500)]
    tgt = [r.randint(1, 40) for _ in range(500)]
    for seed in (0, None):
        batches = token_batches(src, tgt, 400, seed=seed)
        assert sorted(i for b in batches for i in b) == list(range(500))
        for b in batches:
            assert len(b) * max(max(src[i], tgt[i]) for i in b) <= 400 or len(b) == 1
    # same seed, same batches; bucketing keeps lengths close
    assert token_batches(src, tgt, 400, seed=3) == token_batches(src, tgt, 400, seed=3)
    s, t = collate([[5, 6, 7], [8]], [[1, 2], [1, 9, 9, 2]], pad=0)
    assert s.tolist() == [[5, 6, 7], [8, 0, 0]] and t.shape == (2, 4)


def test_multi30k_reads(shared_data):
    d = shared_data / "multi30k"
    if not d.is_dir():
        pytest.skip(f"{d} not found")
    c = read_parallel(d / "val.de.gz", d / "val.en.gz")
    assert len(c) == 1014 and c.skipped_empty == 0
