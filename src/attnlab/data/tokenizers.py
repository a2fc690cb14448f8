"""Tokenizers: characters, words, and byte-level BPE, behind one small interface.

Every tokenizer maps text to a list of integer ids and back (``encode`` / ``decode``), knows
its ``vocab_size`` and the ids of its special tokens (``pad_id``, ``bos_id``, ``eos_id``,
``unk_id``; ``None`` when it has none), and saves itself as one JSON file that
:func:`load_tokenizer` reads back (``to_dict`` / :func:`tokenizer_from_dict` for embedding it in
another JSON document).

- :class:`CharTokenizer`: one id per character of a fixed alphabet. No unknown token: encoding a
  character outside the alphabet is a :class:`~attnlab.errors.DataError` naming it.
- :class:`WordTokenizer`: whitespace-separated words, a vocabulary built from the training text
  (``<unk>`` for anything else), and ``<eos>`` at the end of every line — the convention of
  Mikolov's Penn Treebank.
- :class:`BPETokenizer`: byte-level BPE (Sennrich et al. 2016; the byte-level variant of GPT-2)
  trained locally with the Hugging Face ``tokenizers`` library on one or more corpora, with
  configurable special tokens (default ``<pad> <s> </s> <unk>``). Any text round-trips.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from attnlab.errors import ConfigError, DataError
from attnlab.io import atomic_write_json

FORMAT = "attnlab-tokenizer/1"
TOKENIZER_KINDS = ("char", "word", "bpe")
DEFAULT_SPECIALS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}


class Tokenizer:
    """The interface; subclasses fill ``kind``, ``encode``, ``decode``, ``vocab_size`` and
    ``_state``/``_from_state``."""

    kind = "base"
    specials: dict[str, str] = {}

    # --- the interface ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def id_to_token(self, index: int) -> str:
        raise NotImplementedError

    # --- special tokens ----------------------------------------------------------------------------
    def _special_id(self, role: str) -> int | None:
        tok = self.specials.get(role)
        return None if tok is None else self.token_to_id(tok)

    @property
    def pad_id(self) -> int | None:
        return self._special_id("pad")

    @property
    def bos_id(self) -> int | None:
        return self._special_id("bos")

    @property
    def eos_id(self) -> int | None:
        return self._special_id("eos")

    @property
    def unk_id(self) -> int | None:
        return self._special_id("unk")

    def encode_with(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """``encode`` with the begin/end-of-sequence ids around it (for sequence-to-sequence)."""
        ids = self.encode(text)
        if bos:
            ids = [self._require("bos")] + ids
        if eos:
            ids = ids + [self._require("eos")]
        return ids

    def special_name(self, index: int) -> str | None:
        """The string of the special token with id ``index`` (``</s>``, ``<pad>``, ``<eos>``...), None
        for any other token: the one name every picture and page shows for a special token."""
        names = {self.token_to_id(tok): tok for tok in self.specials.values()}
        return names.get(int(index))

    def _require(self, role: str) -> int:
        i = self._special_id(role)
        if i is None:
            raise ConfigError(f"the {self.kind} tokenizer has no {role} token; give it one in its special tokens")
        return i

    # --- saving ------------------------------------------------------------------------------------
    def _state(self) -> dict:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"format": FORMAT, "kind": self.kind, **self._state()}

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer as one JSON file (atomically)."""
        atomic_write_json(path, self.to_dict())
        return Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


# --- characters ------------------------------------------------------------------------------------

class CharTokenizer(Tokenizer):
    """One id per character; ids follow the sorted alphabet."""

    kind = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        if not chars:
            raise DataError("a character tokenizer needs a non-empty alphabet (the text is empty)")
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ConfigError("a character alphabet must list distinct single characters")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.specials = {}

    @classmethod
    def train(cls, *texts: str) -> CharTokenizer:
        """The sorted set of characters of the given texts."""
        alphabet: set[str] = set()
        for t in texts:
            alphabet.update(t)
        return cls(sorted(alphabet))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in self.stoi})
            shown = ", ".join(repr(c) for c in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise DataError(f"{len(unknown)} character(s) not in the model's {self.vocab_size}-character alphabet: "
                            f"{shown}; use only characters seen in training") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def token_to_id(self, token: str) -> int | None:
        return self.stoi.get(token)

    def id_to_token(self, index: int) -> str:
        return self.chars[index]

    def _state(self) -> dict:
        return {"chars": self.chars}

    @classmethod
    def _from_state(cls, d: dict) -> CharTokenizer:
        return cls(d["chars"])


# --- words -----------------------------------------------------------------------------------------

class WordTokenizer(Tokenizer):
    """Whitespace-separated words; ``<eos>`` ends each line, ``<unk>`` replaces unknown words.

    ``encode`` gives every newline-terminated line its words then ``<eos>``; a last line without a
    newline gets no ``<eos>`` (so a prompt can end mid-sentence). ``decode`` joins words with one
    space and turns ``<eos>`` back into a newline, so normalised text (single spaces, no leading
    or trailing blanks on a line) round-trips exactly.
    """

    kind = "word"

    def __init__(self, words: Sequence[str], unk: str = "<unk>", eos: str = "<eos>") -> None:
        self.words = list(words)
        if len(set(self.words)) != len(self.words):
            raise ConfigError("a word vocabulary must not repeat words")
        self.stoi = {w: i for i, w in enumerate(self.words)}
        for t in (unk, eos):
            if t not in self.stoi:
                raise ConfigError(f"the word vocabulary lacks its special token {t!r}")
        self.specials = {"unk": unk, "eos": eos}
        self._unk, self._eos = self.stoi[unk], self.stoi[eos]

    @classmethod
    def train(cls, *texts: str, min_freq: int = 1, max_size: int | None = None,
              unk: str = "<unk>", eos: str = "<eos>") -> WordTokenizer:
        """Vocabulary of the training text: the specials, then words by decreasing count (ties in
        alphabetical order), keeping words seen at least ``min_freq`` times, at most ``max_size``
        entries in all."""
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(t.split())
        for s in (unk, eos):
            counts.pop(s, None)
        ranked = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        words = [unk, eos] + ranked
        if max_size is not None:
            words = words[:max(2, max_size)]
        return cls(words, unk=unk, eos=eos)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        get, unk = self.stoi.get, self._unk
        lines = text.split("\n")
        for n, line in enumerate(lines):
            ids.extend(get(w, unk) for w in line.split())
            if n < len(lines) - 1:  # the line ended with a newline
                ids.append(self._eos)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        out: list[str] = []
        line: list[str] = []
        for i in ids:
            i = int(i)
            if i == self._eos:
                out.append(" ".join(line) + "\n")
                line = []
            else:
                line.append(self.words[i])
        return "".join(out) + " ".join(line)

    def token_to_id(self, token: str) -> int | None:
        return self.stoi.get(token)

    def id_to_token(self, index: int) -> str:
        return self.words[index]

    def _state(self) -> dict:
        return {"words": self.words, "specials": self.specials}

    @classmethod
    def _from_state(cls, d: dict) -> WordTokenizer:
        sp = d.get("specials", {})
        return cls(d["words"], unk=sp.get("unk", "<unk>"), eos=sp.get("eos", "<eos>"))


# --- byte-level BPE --------------------------------------------------------------------------------

def _hf():
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError("the BPE tokenizer needs the Hugging Face 'tokenizers' package: pip install tokenizers") from e
    return tokenizers


class BPETokenizer(Tokenizer):
    """Byte-level BPE: text is read as UTF-8 bytes (each byte a base symbol, so nothing is ever
    unknown) and the most frequent adjacent pairs are merged until ``vocab_size`` is reached.

    ``specials`` maps roles (``pad``, ``bos``, ``eos``, ``unk``) to token strings; they take the
    first ids in that order and are never split or merged. Decoding drops them by default.
    """

    kind = "bpe"

    def __init__(self, hf_tokenizer, specials: dict[str, str]) -> None:
        self._tok = hf_tokenizer
        self.specials = dict(specials)

    @classmethod
    def train(cls, *corpora: str | Iterable[str], vocab_size: int = 2000, min_frequency: int = 2,
              specials: dict[str, str] | None = None) -> BPETokenizer:
        """Train on one or more corpora, each a string or an iterable of strings (e.g. the
        sentences of the source and the target language)."""
        hf = _hf()
        from tokenizers import decoders, models, pre_tokenizers, trainers

        specials = dict(DEFAULT_SPECIALS if specials is None else specials)
        tok = hf.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + len(specials):
            raise ConfigError(f"a byte-level BPE vocabulary needs at least {len(alphabet) + len(specials)} entries "
                              f"(256 bytes + {len(specials)} special tokens), got vocab_size={vocab_size}")
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                      special_tokens=list(specials.values()), initial_alphabet=alphabet)

        def lines():
            for c in corpora:
                if isinstance(c, str):
                    yield from c.splitlines(keepends=True)
                else:
                    yield from c
        tok.train_from_iterator(lines(), trainer=trainer)
        return cls(tok, specials)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, index: int) -> str:
        return self._tok.id_to_token(index)

    def _state(self) -> dict:
        return {"specials": self.specials, "hf": json.loads(self._tok.to_str())}

    @classmethod
    def _from_state(cls, d: dict) -> BPETokenizer:
        hf = _hf()
        return cls(hf.Tokenizer.from_str(json.dumps(d["hf"])), d.get("specials", {}))


_KINDS = {"char": CharTokenizer, "word": WordTokenizer, "bpe": BPETokenizer}


def train_tokenizer(kind: str, *texts: str | Iterable[str], **options) -> Tokenizer:
    """Build a tokenizer of ``kind`` ("char", "word", "bpe") from training text(s)."""
    if kind not in _KINDS:
        raise ConfigError(f"unknown tokenizer {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")
    return _KINDS[kind].train(*texts, **options)


def tokenizer_from_dict(d: dict) -> Tokenizer:
    if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("kind") not in _KINDS:
        raise DataError(f"not an attnlab tokenizer (expected format {FORMAT!r} and a kind in {TOKENIZER_KINDS})")
    try:
        return _KINDS[d["kind"]]._from_state(d)
    except (KeyError, TypeError, ValueError, Exception) as e:  # noqa: BLE001 - the HF parser raises its own types
        if isinstance(e, (DataError, ConfigError)):
            raise
        raise DataError(f"corrupt {d['kind']} tokenizer: {e}") from e


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer written by :meth:`Tokenizer.save`."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"tokenizer file {path} not found") from None
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read tokenizer {path}: {e}") from e
    return tokenizer_from_dict(d)
