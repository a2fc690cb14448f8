"""The registry as a command-line user meets it: an unknown --model names the close names and
the `attnlab models` command; `attnlab models` shows whole first sentences, wrapped to the
terminal; a refused pickle carries one stable phrase."""

from __future__ import annotations

import pickle
import re

import pytest
import torch

from attnlab.cli.cmd_models import first_sentence
from attnlab.cli.main import main
from attnlab.errors import CheckpointError, ConfigError
from attnlab.io import UNTRUSTED_PICKLE, load_torch_file
from attnlab.models import create_model, list_models
from attnlab.models.registry import close_names, model_doc


@pytest.mark.parametrize("typed, expected", [
    ("gru", ["gru_attention_multi30k", "gru_lm_small"]),  # a prefix
    ("lm_small", ["gru_lm_small", "lstm_lm_small", "rnn_lm_small"]),  # a part of the name
    ("transfomer_base", ["transformer_base"]),  # a typo
])
def test_close_names(typed, expected):
    got = close_names(typed)
    assert got[: len(expected)] == expected and len(got) <= 5


def test_unknown_model_names_the_close_ones_and_the_command():
    with pytest.raises(ConfigError) as e:
        create_model("gru")
    assert str(e.value) == ("unknown model 'gru'; did you mean gru_attention_multi30k, gru_lm_small? "
                            "'attnlab models' lists every name (in Python: list_models())")
    with pytest.raises(ConfigError, match=r"^unknown model 'qqq'; 'attnlab models' lists every name"):
        model_doc("qqq")


def test_cli_unknown_model_is_one_line_naming_attnlab_models(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "lm", "--model", "gru", "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gru_lm_small" in err and "'attnlab models'" in err, err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("doc, sentence", [
    ("One line.", "One line."),
    ("A model (Smith et al. 2019) of\n    two lines. Then more.", "A model (Smith et al. 2019) of two lines."),
    ("Sizes (e.g. 3. Four) stay. Next.", "Sizes (e.g. 3. Four) stay."),
    ("Uses ``attnlab train`` by default.\n\nA second paragraph.", "Uses attnlab train by default."),
    ("No period at the end", "No period at the end"),
    ("Version 1.5 wins. Next.", "Version 1.5 wins."),
])
def test_first_sentence(doc, sentence):
    assert first_sentence(doc) == sentence


@pytest.mark.parametrize("columns", [80, 200])
def test_models_shows_whole_first_sentences_wrapped(capsys, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= columns for line in lines), max(lines, key=len)
    # each entry: a line starting with the name, then indented continuation lines
    entries: dict[str, str] = {}
    for line in lines:
        if line[:1] != " ":
            name, rest = line.split(maxsplit=1)
            entries[name] = rest.split("M", 1)[1].strip()
        else:
            entries[name] += " " + line.strip()
    assert sorted(entries) == list_models()
    for name, shown in entries.items():
        assert shown == first_sentence(model_doc(name)), name
        assert shown.endswith((".", ")")) and len(shown) > 20, f"{name}: {shown!r}"


def test_every_untrusted_pickle_refusal_carries_the_phrase(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"w": torch.zeros(2), "x": Payload()}, tmp_path / "zip.pth")
    (tmp_path / "legacy.pkl").write_bytes(pickle.dumps(Payload(), protocol=2))
    for name in ("zip.pth", "legacy.pkl"):
        with pytest.raises(CheckpointError) as e:
            load_torch_file(tmp_path / name)
        assert UNTRUSTED_PICKLE in str(e.value) and re.search(rf"{name}'? {UNTRUSTED_PICKLE}", str(e.value))
