"""The language-model commands: train lm, eval, generate; bad input gets one line and exit 2."""

import pytest

from attnlab.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture
def run_dir(tiny_run):
    return tiny_run("lm")


def test_train_eval_generate(run_dir, capsys):
    capsys.readouterr()
    assert main(["eval", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "valid  loss" in out and "bits/char" in out
    args = ["generate", str(run_dir), "--prompt", "to be", "--max-new-tokens", "30", "--seed", "7", "--top-k", "5",
            "--top-p", "0.9", "--temperature", "0.8"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first  # same seed, same text
    assert first.startswith("to be") and len(first.rstrip("\n")) == 35
    assert main(args[:6] + ["--temperature", "0"]) == 0
    greedy_cached = capsys.readouterr().out
    assert main(args[:6] + ["--temperature", "0", "--no-cache"]) == 0
    assert capsys.readouterr().out == greedy_cached


def _one_error_line(capsys, rc):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    return err


def test_generate_bad_input(run_dir, capsys):
    err = _one_error_line(capsys, main(["generate", str(run_dir), "--prompt", "ZQ@"]))
    assert "not in the model's" in err and "'Z'" in err
    for bad in ("0", "1.5", "-0.1"):
        with pytest.raises(SystemExit) as e:  # argparse refuses it before running
            main(["generate", str(run_dir), "--top-p", bad])
        err = _one_error_line(capsys, e.value.code)
        assert "--top-p" in err and "(0, 1]" in err
    err = _one_error_line(capsys, main(["generate", str(run_dir.parent / "nope")]))
    assert "not a directory" in err


@pytest.mark.parametrize("content,message", [(b"", "is empty"), (b"caf\xe9 au lait\n" * 10, "not UTF-8")])
def test_train_bad_text_files(tmp_path, capsys, content, message):
    (tmp_path / "bad.txt").write_bytes(content)
    err = _one_error_line(capsys, main(["train", "lm", "--text", str(tmp_path / "bad.txt"), "--run-dir",
                                        str(tmp_path / "r"), "--quiet"]))
    assert message in err


def test_train_window_longer_than_corpus(tmp_path, capsys):
    (tmp_path / "small.txt").write_text("a short text\n" * 5)
    err = _one_error_line(capsys, main(["train", "lm", "--text", str(tmp_path / "small.txt"), "--window", "200",
                                        "--run-dir", str(tmp_path / "r"), "--quiet"]))
    assert "window of 200 tokens is longer than" in err


def test_train_needs_text(tmp_path, capsys):
    err = _one_error_line(capsys, main(["train", "lm", "--run-dir", str(tmp_path / "r"), "--quiet"]))
    assert "--text FILE" in err


@pytest.mark.parametrize("tokenizer", ["word", "bpe"])
def test_train_other_tokenizers_and_generate(tmp_path, capsys, tokenizer):
    (tmp_path / "t.txt").write_text("the cat sat on the mat\nthe dog sat on the log\n" * 30)
    run = tmp_path / "run"
    assert main(["train", "lm", "--text", str(tmp_path / "t.txt"), "--tokenizer", tokenizer, "--bpe-vocab-size", "280",
                 "--model", "lstm_lm_small", "--model-arg", "hidden_dim=16", "--model-arg", "embed_dim=16",
                 "--window", "8", "--epochs", "1", "--batch-size", "4",
                 "--run-dir", str(run), "--quiet"]) == 0
    assert (run / "tokenizer.json").is_file()
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "the cat", "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("the cat")
    assert main(["eval", str(run)]) == 0
    assert "perplexity" in capsys.readouterr().out
