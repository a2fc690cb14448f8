"""Token labels of the text pictures and the explorer: one display name per special token."""

from __future__ import annotations

import pytest

from attnlab.data.tokenizers import BPETokenizer, CharTokenizer, WordTokenizer
from attnlab.viz.text import token_labels

CORPUS = ["a dog runs .", "ein hund läuft .", "the cat sleeps .", "die katze schläft ."] * 4


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS, vocab_size=300, min_frequency=1)


def test_special_tokens_are_shown_by_their_own_name(bpe):
    ids = [bpe.bos_id, *bpe.encode("a dog"), bpe.eos_id, bpe.pad_id, bpe.unk_id]
    labels = token_labels(bpe, ids)
    assert labels[0] == "<s>" and labels[-3:] == ["</s>", "<pad>", "<unk>"]  # not "<2>": BPE decodes a special to ""
    assert "".join(labels[1:-3]) == "a·dog"
    assert [bpe.special_name(i) for i in ids[1:-3]] == [None] * (len(ids) - 4)


def test_word_and_char_tokenizers():
    word = WordTokenizer.train("a dog runs\nthe cat\n")
    assert token_labels(word, word.encode("a dog\nzebra")) == ["a", "dog", "<eos>", "<unk>"]
    char = CharTokenizer.train("ab c")
    assert token_labels(char, char.encode("a c")) == ["a", "·", "c"] and char.special_name(0) is None
