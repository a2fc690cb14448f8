"""Tokenizers: round trips, vocabularies, special tokens, saving and loading."""

import json

import pytest

from attnlab.data.tokenizers import (
    BPETokenizer,
    CharTokenizer,
    WordTokenizer,
    load_tokenizer,
    tokenizer_from_dict,
    train_tokenizer,
)
from attnlab.errors import ConfigError, DataError

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"


def test_char_round_trip_and_alphabet():
    tok = CharTokenizer.train(TEXT)
    assert tok.vocab_size == len(set(TEXT))
    assert tok.chars == sorted(set(TEXT))
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.pad_id is None and tok.eos_id is None


def test_char_unknown_character_is_one_clear_error():
    tok = CharTokenizer.train("abc ")
    with pytest.raises(DataError, match=r"not in the model's 4-character alphabet: 'z'"):
        tok.encode("a z")


def test_word_vocabulary_eos_and_unk():
    train = "the cat sat\nthe dog sat\n"
    tok = WordTokenizer.train(train)
    assert tok.words[:2] == ["<unk>", "<eos>"]
    assert tok.words[2:4] == ["sat", "the"]  # by count, ties alphabetical
    ids = tok.encode("the bird sat\n")
    assert [tok.id_to_token(i) for i in ids] == ["the", "<unk>", "sat", "<eos>"]
    # a line without a final newline (a prompt) gets no <eos>
    assert tok.encode("the cat") == [tok.token_to_id("the"), tok.token_to_id("cat")]
    assert tok.decode(tok.encode(train)) == train


def test_word_min_freq_and_ptb_style_unk():
    tok = WordTokenizer.train("a a b <unk> c c c\n", min_freq=2)
    assert tok.words == ["<unk>", "<eos>", "c", "a"]
    assert tok.encode("<unk> b\n") == [0, 0, 1]


def test_bpe_round_trips_any_text_and_specials(tmp_path):
    tok = BPETokenizer.train(TEXT * 5, "Zweiter Korpus: schöne Grüße, 東京 🙂\n", vocab_size=300)
    assert tok.vocab_size <= 300
    assert [tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id] == [0, 1, 2, 3]
    for s in (TEXT, "  leading spaces\tand tabs\n\n", "unseen: ¿Qué tal? ∑ 🙂", ""):
        assert tok.decode(tok.encode(s)) == s
    ids = tok.encode_with("speak", bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "speak"  # specials dropped on decoding
    assert len(tok.encode("speak, speak")) < len("speak, speak")  # merges were learned


def test_bpe_custom_specials():
    tok = train_tokenizer("bpe", TEXT, vocab_size=280, specials={"pad": "[PAD]", "eos": "[END]"})
    assert tok.pad_id == 0 and tok.eos_id == 1 and tok.bos_id is None
    with pytest.raises(ConfigError, match="no bos token"):
        tok.encode_with("x", bos=True)


def test_bpe_vocab_too_small():
    with pytest.raises(ConfigError, match="at least 260"):
        BPETokenizer.train(TEXT, vocab_size=100)


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_save_load_identical(tmp_path, kind):
    opts = {"vocab_size": 280} if kind == "bpe" else {}
    tok = train_tokenizer(kind, TEXT, **opts)
    path = tok.save(tmp_path / "tok.json")
    again = load_tokenizer(path)
    assert type(again) is type(tok) and again.vocab_size == tok.vocab_size
    assert again.encode(TEXT) == tok.encode(TEXT)
    assert again.decode(tok.encode(TEXT)) == tok.decode(tok.encode(TEXT))
    assert tokenizer_from_dict(json.loads(path.read_text())).encode("speak") == tok.encode("speak")


def test_load_refuses_bad_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        load_tokenizer(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"kind": "char"}')
    with pytest.raises(DataError, match="not an attnlab tokenizer"):
        load_tokenizer(tmp_path / "other.json")


def test_unknown_kind():
    with pytest.raises(ConfigError, match="unknown tokenizer"):
        train_tokenizer("sentencepiece", TEXT)
