"""The translation task end to end through the CLI: train, eval (sacrebleu), translate; bad input."""

import io
import json
import random

import pytest

from attnlab.cli.main import main
from attnlab.tasks.translate import score

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "red blue green dog cat bird runs sleeps eats big small the a on under".split()


def make_corpus(tmp_path, n=120, seed=0):
    """A toy 'language pair': the target is the source with its words reversed."""
    r = random.Random(seed)
    src = [" ".join(r.choice(WORDS) for _ in range(r.randint(2, 5))) for _ in range(n)]
    tgt = [" ".join(s.split()[::-1]) for s in src]
    paths = {}
    for name, lines in (("train.src", src[:100]), ("train.tgt", tgt[:100]), ("valid.src", src[100:]), ("valid.tgt", tgt[100:])):
        paths[name] = tmp_path / name
        paths[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


TRANSFORMER = ["--model-arg", "d_model=32", "--model-arg", "num_heads=2", "--model-arg", "num_encoder_layers=1",
               "--model-arg", "num_decoder_layers=1", "--model-arg", "d_ff=64"]
GRU = ["--model-arg", "embed_dim=16", "--model-arg", "hidden_dim=16", "--model-arg", "attn_dim=16"]
TINY = ["--bpe-vocab-size", "300", "--epochs", "1", "--max-tokens", "400", "--warmup-steps", "2",
        "--threads", "1", "--quiet"]


def train(tmp_path, paths, name, *extra):
    run = tmp_path / name
    rc = main(["train", "translate", "--src", str(paths["train.src"]), "--tgt", str(paths["train.tgt"]),
               "--valid-src", str(paths["valid.src"]), "--valid-tgt", str(paths["valid.tgt"]),
               "--run-dir", str(run), *TINY, *extra])
    assert rc == 0
    return run


def test_bleu_of_identical_text_is_100():
    refs = ["A dog runs on the grass.", "Two men are talking.", "A girl in a red dress jumps."]
    s = score(refs, refs)
    assert s["bleu"] == 100.0 and s["chrf"] == 100.0 and s["bleu_tok_lc"] == 100.0
    assert s["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")


@pytest.mark.parametrize("model", [["--model", "transformer_multi30k", *TRANSFORMER],
                                   ["--model", "gru_attention_multi30k", "--vocab", "separate", *GRU],
                                   ["--model", "mask_predict_multi30k", *TRANSFORMER]])
def test_train_eval_translate(tmp_path, capsys, monkeypatch, model):
    paths = make_corpus(tmp_path)
    run = train(tmp_path, paths, "run", *model)
    capsys.readouterr()
    assert main(["eval", str(run), "--src", str(paths["valid.src"]), "--ref", str(paths["valid.tgt"]),
                 "--beam", "2", "--json", "--out", str(tmp_path / "ev")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["sentences"] == 20 and 0 <= res["bleu"] <= 100 and "tok:13a" in res["bleu_signature"]
    assert len((tmp_path / "ev" / "hypotheses.txt").read_text().splitlines()) == 20
    # the run's own validation set by default, text output
    assert main(["eval", str(run), "--beam", "1"]) == 0
    assert "BLEU = " in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"red dog runs\n\nthe cat\n")))
    assert main(["translate", str(run), "--beam", "1"]) == 0
    assert len(capsys.readouterr().out.split("\n")) == 4  # three lines (one empty), then the final newline


def test_bad_input_one_line_and_nonzero_exit(tmp_path, capsys):
    paths = make_corpus(tmp_path)
    short = tmp_path / "short.tgt"
    short.write_text("\n".join(paths["train.tgt"].read_text().splitlines()[:50]) + "\n")
    cases = [
        (["train", "translate", "--src", str(paths["train.src"]), "--tgt", str(short), "--run-dir", str(tmp_path / "r1")],
         "line 51"),
        (["train", "translate", "--src", str(paths["train.src"])], "--tgt"),
        (["train", "translate", "--src", str(tmp_path / "missing.txt"), "--tgt", str(short), "--run-dir", str(tmp_path / "r2")],
         "not found"),
        (["eval", str(tmp_path / "no-run"), "--src", str(paths["valid.src"]), "--ref", str(paths["valid.tgt"])], ""),
        (["translate", str(tmp_path / "no-run")], ""),
        (["translate", str(tmp_path / "no-run"), "--beam", "0"], "--beam"),
        (["train", "translate", "--tsv", str(paths["train.src"]), "--run-dir", str(tmp_path / "r3")], "tab-separated"),
    ]
    for argv, needle in cases:
        try:
            rc = main(argv)
        except SystemExit as e:  # option errors: argparse's exit, one line
            rc = e.code
        err = capsys.readouterr().err.strip()
        assert rc != 0, argv
        assert len(err.splitlines()) == 1 and needle in err, (argv, err)


def test_empty_line_on_one_side_is_reported(tmp_path, capsys):
    s, t = tmp_path / "s.txt", tmp_path / "t.txt"
    s.write_text("a b\nc d\ne f\n")
    t.write_text("b a\n\nf e\n")
    assert main(["train", "translate", "--src", str(s), "--tgt", str(t), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "t.txt line 2 is empty" in err and len(err.strip().splitlines()) == 1


def test_over_long_refused_when_asked(tmp_path, capsys):
    paths = make_corpus(tmp_path)
    rc = main(["train", "translate", "--src", str(paths["train.src"]), "--tgt", str(paths["train.tgt"]),
               "--run-dir", str(tmp_path / "r"), "--max-len", "4", "--on-long", "error", *TINY, *TRANSFORMER])
    assert rc == 2
    assert "over-long sentence pair at" in capsys.readouterr().err
