"""The run layer: one tiny run per task, then every command that reads a run, and load_model.

Plus the run-level defects of issue 10, each with the test that failed before its fix."""

from __future__ import annotations

import io
import json
import os
import random
import sys

import pytest
import torch
from PIL import Image

import attnlab
from attnlab import runs
from attnlab.checkpoints.rundir import has_record, read_record, weights_file
from attnlab.cli.main import main
from attnlab.train import Plan
from attnlab.train import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = "red blue green dog cat bird runs sleeps eats big small the a on under".split()
TRANSFORMER = ["d_model=32", "num_heads=2", "num_encoder_layers=1", "num_decoder_layers=1", "d_ff=64"]


def _margs(items):
    return [x for a in items for x in ("--model-arg", a)]


def _text(tmp):
    p = tmp / "t.txt"
    p.write_text("to be or not to be, that is the question.\n" * 40)
    return p


def _pairs(tmp):
    r = random.Random(0)
    src = [" ".join(r.choice(WORDS) for _ in range(r.randint(2, 5))) for _ in range(60)]
    paths = {}
    for name, lines in (("train.src", src[:50]), ("train.tgt", [" ".join(s.split()[::-1]) for s in src[:50]]),
                        ("valid.src", src[50:]), ("valid.tgt", [" ".join(s.split()[::-1]) for s in src[50:]])):
        paths[name] = tmp / name
        paths[name].write_text("\n".join(lines) + "\n")
    return paths


def train_args(task, tmp):
    common = ["--epochs", "1", "--threads", "1", "--quiet"]
    if task == "image":
        return ["train", "image", "--model", "vit_digits", "--model-arg", "depth=1", "--batch-size", "128", *common]
    if task == "lm":
        return ["train", "lm", "--text", str(_text(tmp)), "--window", "16", "--batch-size", "8", "--steps-per-epoch", "6",
                *_margs(["d_model=32", "num_layers=1", "num_heads=2"]), *common]
    p = _pairs(tmp)
    return ["train", "translate", "--src", str(p["train.src"]), "--tgt", str(p["train.tgt"]), "--valid-src",
            str(p["valid.src"]), "--valid-tgt", str(p["valid.tgt"]), "--bpe-vocab-size", "300", "--max-tokens", "400",
            *_margs(TRANSFORMER), *common]


@pytest.fixture(scope="module", params=["image", "lm", "translate"])
def trained(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    torch.set_num_threads(1)
    assert main(train_args(request.param, tmp) + ["--run-dir", str(tmp / "run")]) == 0
    return request.param, tmp / "run"


def _digit_png(path):
    Image.fromarray((torch.rand(8, 8) * 255).to(torch.uint8).numpy()).save(path)
    return path


def test_every_reading_command_reads_the_run(trained, tmp_path, capsys, monkeypatch):
    task, run = trained
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert os.path.isfile(res["results_json"]) and str(run / "eval") in res["results_json"]
    out = tmp_path / "att.png"
    if task == "image":
        img = _digit_png(tmp_path / "d.png")
        assert main(["predict", str(run), str(img), "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)[0]["top"]) == 5
        assert main(["viz", "attention", str(run), str(img), "-o", str(out), "--dpi", "40"]) == 0
        assert main(["viz", "posembed", f"{run}:last", "-o", str(tmp_path / "pe.png"), "--dpi", "40"]) == 0
    elif task == "lm":
        assert main(["generate", str(run), "--prompt", "to be", "--max-new-tokens", "5"]) == 0
        assert capsys.readouterr().out.startswith("to be")
        assert main(["viz", "attention", str(run), "to be or", "-o", str(out), "--dpi", "40"]) == 0
    else:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"red dog runs\n")))
        assert main(["translate", str(run), "--beam", "1"]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 1
        assert main(["viz", "attention", str(run), "red dog runs", "-o", str(out), "--dpi", "40"]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_load_model_rebuilds_any_run_alone(trained):
    """The weights carry the model's registry name and config: load_model needs nothing else."""
    _, run = trained
    loaded = runs.open(run)
    model = attnlab.load_model(run)
    assert type(model) is type(loaded.model) and model.name == loaded.name
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    weights = weights_file(f"{run}:last")
    again = attnlab.create_model(loaded.name, **loaded.record["model"]["config"])
    assert attnlab.load_checkpoint(again, weights)["format"] == "attnlab"


def test_resume_refuses_changed_options_for_every_task(trained, capsys):
    task, run = trained
    capsys.readouterr()
    assert main(["train", task, "--resume", str(run), "--lr", "5", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--lr" in err and len(err.strip().splitlines()) == 1
    assert main(["train", task, "--resume", str(run), "--model-arg", "dropout=0.5", "--quiet"]) == 2
    assert "--model-arg" in capsys.readouterr().err


def test_eval_of_an_lm_run_saves_and_counts_its_batches(tmp_path, capsys):
    """eval used to save nothing for LM and translation runs, and showed no progress."""
    from attnlab.tasks.lm import LMTask

    assert main(train_args("lm", tmp_path) + ["--run-dir", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "r"), "--out", str(tmp_path / "ev")]) == 0
    assert "perplexity" in capsys.readouterr().out and (tmp_path / "ev" / "results.json").is_file()
    ids = torch.randint(0, 9, (1000,))
    for recurrent in (False, True):
        t = LMTask({"train": ids, "eval": ids}, recurrent=recurrent, window=16, eval_split="eval", eval_batch_size=7,
                   check_train=False)
        assert t.num_eval_batches("eval") == len(list(t.eval_batches(Plan())))


# --- defects of issue 10 ----------------------------------------------------------------------------------

def one_line(capsys, rc):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_lm_training_prints_perplexity_not_a_percentage(tmp_path, capsys):
    assert main(train_args("lm", tmp_path) + ["--run-dir", str(tmp_path / "r")]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if "final validation" in s)
    assert "ppl" in line and "%" not in line


def test_help_states_the_defaults_each_task_uses(capsys):
    for task, epochs in (("lm", 5), ("translate", 20), ("image", 10)):
        with pytest.raises(SystemExit):
            main(["train", task, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert f"passes over the training set (default: {epochs})" in out, task
    with pytest.raises(SystemExit):
        main(["train", "lm", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.002)" in out and "(default: 32)" in out  # lr and batch size of language models
    assert "counting the whole command: the backbone pretraining of 'train detect' included" in out  # --max-minutes
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "detect runs, default 100" in out and "image runs, default 500" in out  # eval --batch-size


def test_models_command_lists_the_registry_with_counts(capsys):
    assert main(["models", "*_lm_*"]) == 0
    out = capsys.readouterr().out
    assert "lstm_lm_medium" in out and "19.8" in out  # Zaremba et al.'s medium LSTM: 19.8M parameters
    assert one_line(capsys, main(["models", "nothing_like_this*"]))


def test_picture_outputs_are_checked_before_any_work(tmp_path, capsys):
    good = attnlab.save_checkpoint(attnlab.create_model("vit_digits"), tmp_path / "good.safetensors")
    before = good.read_bytes()
    err = one_line(capsys, main(["viz", "posembed", "vit_digits", "-o", str(good)]))
    assert "refusing to overwrite" in err or "extensions" in err
    assert good.read_bytes() == before
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"not a picture at all")
    assert "not a PNG picture" in one_line(capsys, main(["viz", "posembed", "vit_digits", "-o", str(fake)]))
    assert fake.read_bytes() == b"not a picture at all"
    assert "is a directory" in one_line(capsys, main(["viz", "posembed", "vit_digits", "-o", str(tmp_path)]))
    for bad in (["--dpi", "0"], ["--dpi", "-3"]):
        with pytest.raises(SystemExit) as e:
            main(["viz", "posembed", "vit_digits", "-o", str(tmp_path / "x.png"), *bad])
        assert "--dpi" in one_line(capsys, e.value.code)
    img = _digit_png(tmp_path / "d.png")
    err = one_line(capsys, main(["viz", "attention", "vit_digits", str(img), "-o", str(tmp_path / "a.png"), "--std", "0"]))
    assert "--std" in err and not (tmp_path / "a.png").exists()
    for bad in (["--length", "-5"], ["--windows", "0"]):
        with pytest.raises(SystemExit) as e:
            main(["viz", "gradients", "--task", "copy", "-o", str(tmp_path / "g.png"), *bad])
        assert bad[0] in one_line(capsys, e.value.code)


def test_io_errors_anywhere_are_one_line(tmp_path, capsys, monkeypatch):
    """A read-only directory (or a full disk) deep inside a command: one line, exit 2."""
    import attnlab.io

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro" / "x"))

    monkeypatch.setattr(attnlab.io, "atomic_write_bytes", denied)
    err = one_line(capsys, main(["viz", "posembed", "vit_digits", "-o", str(tmp_path / "p.png")]))
    assert "Permission denied" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only directories")
def test_read_only_run_directory_parent_is_refused(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        err = one_line(capsys, main(train_args("image", tmp_path) + ["--run-dir", str(ro / "run")]))
        assert "permission denied" in err.lower() or "cannot" in err
        err = one_line(capsys, main(["viz", "posembed", "vit_digits", "-o", str(ro / "p.png")]))
    finally:
        ro.chmod(0o755)


def test_translate_refuses_non_utf8_and_huge_lines_after_translating_what_came_before(tmp_path, capsys, monkeypatch):
    assert main(train_args("translate", tmp_path) + ["--run-dir", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"red dog\n\xff\xfe bad\n")))
    rc = main(["translate", str(tmp_path / "r"), "--beam", "1"])
    captured = capsys.readouterr()
    assert rc == 2 and "line 2 is not UTF-8" in captured.err and len(captured.out.splitlines()) == 1
    huge = (" ".join(["dog"] * 20_000) + "\n").encode()
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(huge)))
    err = one_line(capsys, main(["translate", str(tmp_path / "r")]))
    assert "line 1 has" in err and "--max-source-len" in err
    # eval honours --batch-size and says which it used
    assert main(["eval", str(tmp_path / "r"), "--beam", "1", "--batch-size", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["batch_size"] == 3


def test_translate_fine_tunes_from_a_run_with_its_tokenizers(tmp_path, capsys):
    """--init RUN starts a translation model from a trained run: its weights (at a rate of 1e-12
    one step leaves them where they started) and its tokenizer, even where the new data would have
    trained another one; a directory that is no translation run is refused in one line, before any
    work."""
    assert main(train_args("translate", tmp_path) + ["--run-dir", str(tmp_path / "a")]) == 0
    args = train_args("translate", tmp_path)
    (tmp_path / "train.src").write_text("".join(f"red cat number {i}\n" for i in range(50)))  # other words
    assert main(args + ["--init", f"{tmp_path / 'a'}:last", "--lr", "1e-12", "--max-minutes", "1e-6",
                        "--run-dir", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "tokenizer.json").read_bytes() == (tmp_path / "a" / "tokenizer.json").read_bytes()
    rec = json.loads((tmp_path / "b" / "last.json").read_text())
    assert rec["init"]["loaded"] > 0 and rec["data_config"]["init"].endswith("a:last")
    a, b = (attnlab.load_model(f"{tmp_path / r}:last").state_dict() for r in "ab")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-8) for k in a)
    capsys.readouterr()
    err = one_line(capsys, main(args + ["--init", str(tmp_path), "--run-dir", str(tmp_path / "c")]))
    assert "--init" in err and "not a run directory" in err and not (tmp_path / "c").exists()
    assert main(train_args("lm", tmp_path) + ["--run-dir", str(tmp_path / "lm")]) == 0
    capsys.readouterr()
    err = one_line(capsys, main(args + ["--init", str(tmp_path / "lm"), "--run-dir", str(tmp_path / "c")]))
    assert "is a lm run" in err and not (tmp_path / "c").exists()


def test_one_training_per_run_directory(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "run.json").write_text("{}")  # a run killed before its first checkpoint
    with ckpt.RunLock(run):
        err = one_line(capsys, main(train_args("image", tmp_path) + ["--run-dir", str(run), "--overwrite"]))
        assert "in use by another attnlab training" in err
    assert (run / "run.json").read_text() == "{}"  # the other training's files are untouched
    # without the lock, --overwrite accepts the run that has no complete checkpoint
    assert main(train_args("image", tmp_path) + ["--run-dir", str(run), "--overwrite"]) == 0
    assert has_record(run, "last")


def test_a_failed_start_leaves_no_directory(tmp_path, capsys):
    one_line(capsys, main(train_args("image", tmp_path)[:3] + ["vit_nope", "--run-dir", str(tmp_path / "r")]))
    assert not (tmp_path / "r").exists()


def test_viz_gradients_refuses_runs_trained_on_different_texts(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    assert main(train_args("lm", a) + ["--run-dir", str(a / "r")]) == 0
    (b / "t.txt").write_text("a completely different text, also long enough.\n" * 40)
    args = train_args("lm", b)
    args[args.index("--text") + 1] = str(b / "t.txt")
    assert main(args + ["--run-dir", str(b / "r")]) == 0
    capsys.readouterr()
    err = one_line(capsys, main(["viz", "gradients", str(a / "r"), str(b / "r"), "-o", str(tmp_path / "g.png")]))
    assert "other text" in err


def test_eval_refuses_a_dataset_of_another_image_size(tmp_path, capsys, shared_data):
    if not (shared_data / "mnist").is_dir():
        pytest.skip("MNIST not in the shared data")
    assert main(train_args("image", tmp_path) + ["--run-dir", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    err = one_line(capsys, main(["eval", str(tmp_path / "r"), "--dataset", f"mnist:{shared_data / 'mnist'}"]))
    assert "28x28" in err and "8x8" in err


def test_options_of_another_task_are_refused(trained, capsys):
    task, run = trained
    capsys.readouterr()
    other = ["--src", "x.txt"] if task != "translate" else ["--dataset", "digits"]
    assert "do(es) not apply" in one_line(capsys, main(["eval", str(run), *other]))


def test_file_modes_follow_the_umask(trained):
    _, run = trained
    for p in (run / "run.json", run / "last.json", run / "metrics.csv", weights_file(run)):
        assert oct(os.stat(p).st_mode & 0o777) == oct(0o666 & ~_umask()), p


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


if sys.platform != "linux":  # flock and the umask checks are Linux behaviour
    pytestmark = [pytestmark, pytest.mark.skip(reason="Linux only")]


def _scores(results: dict) -> dict:
    """The float results of an eval (the scores, e.g. accuracy or valid.ppl), flattened; timings left out."""
    out = {}
    for k, v in results.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in _scores(v).items()})
        elif isinstance(v, float) and "seconds" not in k and "per_s" not in k:
            out[k] = v
    return out


def test_int8_reads_every_run(trained, tmp_path, capsys, monkeypatch):
    """--int8 on the commands that run a model (issue 13): the same run, int8 Linear layers."""
    pytest.importorskip("torchao", reason="int8 needs torchao (the export extra)")
    task, run = trained
    capsys.readouterr()
    assert main(["eval", str(run), "--int8", "--json", "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr()
    res = json.loads(out.out)
    assert res["int8"] is True
    # the backend measured fastest on this CPU is recorded and said in one line (stderr: stdout is the result)
    chosen = res["int8_backend"]
    assert chosen in ("torchao", "fbgemm", None)
    assert f"int8 backend {chosen}" in out.err if chosen else "int8 kept fp32" in out.err
    # --compile: the same int8 layers through torch.compile give the same scores
    assert main(["eval", str(run), "--int8", "--compile", "--json", "--out", str(tmp_path / "evc")]) == 0
    compiled = json.loads(capsys.readouterr().out)
    assert _scores(res) and _scores(compiled) == pytest.approx(_scores(res), rel=1e-4)
    if task == "image":
        assert main(["eval", str(run), "--json", "--out", str(tmp_path / "fp32")]) == 0
        fp32 = json.loads(capsys.readouterr().out)
        assert fp32["int8"] is False and abs(fp32["accuracy"] - res["accuracy"]) < 0.05
        assert main(["predict", str(run), str(_digit_png(tmp_path / "d.png")), "--int8", "--json"]) == 0
    elif task == "lm":
        assert main(["generate", str(run), "--prompt", "to be", "--max-new-tokens", "5", "--int8"]) == 0
        assert capsys.readouterr().out.startswith("to be")
    else:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"red dog runs\n")))
        assert main(["translate", str(run), "--beam", "2", "--int8"]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 1


def test_int8_and_compiled_evals_write_their_own_folders(tmp_path):
    """`eval --int8` and `eval --int8 --compile` used to write the same folder (the second
    replaced the first): runs.open records compile, and evaluate gives each variant its suffix."""
    import dataclasses

    from torch import nn

    from attnlab.tasks import get_spec
    from attnlab.tasks.spec import LoadedRun

    assert runs.open("vit_digits", compile=True).compiled and not runs.open("vit_digits").compiled
    spec = dataclasses.replace(get_spec("image"), evaluate=lambda run, ec, progress: ({"slug": "test", "score": 1.0}, {}))
    folders = set()
    for int8, compiled in ((False, False), (True, False), (True, True), (False, True)):
        run = LoadedRun(nn.Identity(), "toy", run_dir=tmp_path, spec=spec, int8=int8, compiled=compiled)
        res = runs.evaluate(run, None, progress=False)
        assert res["compiled"] is compiled and os.path.exists(res["results_json"])
        folders.add(os.path.dirname(res["results_json"]))
    assert sorted(os.path.basename(f) for f in folders) == ["test", "test-compiled", "test-int8", "test-int8-compiled"]


def test_export_ctranslate2_of_every_run(trained, tmp_path, capsys):
    """`attnlab export RUN --format ctranslate2`: a translation run becomes a CTranslate2 folder
    whose fp32 greedy tokens equal the eager model's (the command checks and says so); a second
    export replaces it; a run CTranslate2 cannot hold is refused in one line."""
    pytest.importorskip("ctranslate2", reason="CTranslate2 export needs the export extra")
    task, run = trained
    out = tmp_path / "m.ct2"
    capsys.readouterr()
    code = main(["export", str(run), "--format", "ctranslate2", "-o", str(out)])
    printed = capsys.readouterr()
    if task != "translate":
        assert code != 0 and not out.exists() and len(printed.err.strip().splitlines()) == 1
        return
    assert code == 0
    same, total = (int(n) for n in printed.out.split("sources: ")[1].split(" equal")[0].split(" of "))
    assert same == total > 0
    assert main(["export", str(run), "-o", str(out), "--int8"]) == 0  # the .ct2 suffix picks the format
    assert "int8" in (out / "attnlab_export.json").read_text()


def test_a_task_builds_exactly_the_registry_entry_it_names(tmp_path):
    """`train translate` without --model builds transformer_multi30k: the registry's config, with
    only the fields the data decides changed."""
    from attnlab.models.registry import config_dict

    args = [a for a in train_args("translate", tmp_path) if a not in _margs(TRANSFORMER)]
    assert main(args + ["--run-dir", str(tmp_path / "r")]) == 0
    rec = runs.open(tmp_path / "r").record
    data = {"src_vocab_size", "tgt_vocab_size", "share_embeddings", "pad_id"}
    ref = config_dict(attnlab.create_model("transformer_multi30k", src_vocab_size=rec["vocab_size"][0],
                                           tgt_vocab_size=rec["vocab_size"][1]))
    assert rec["model"]["name"] == "transformer_multi30k" and rec["model_args"] == {}
    assert {k: v for k, v in rec["model"]["config"].items() if k not in data} == {k: v for k, v in ref.items()
                                                                                  if k not in data}


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_an_untrusted_trainer_state_is_refused_without_running_it_or_advising_to(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(train_args("image", tmp_path) + ["--run-dir", str(tmp_path / "r")]) == 0
    rec = read_record(tmp_path / "r", "last")
    torch.save({"optimizer": _Boom()}, tmp_path / "r" / rec["path"] / rec["state"])
    capsys.readouterr()
    err = one_line(capsys, main(["train", "image", "--resume", str(tmp_path / "r"), "--epochs", "2", "--quiet"]))
    assert "not trusted" in err and "nothing" in err and "weights_only=False" not in err
    assert not (tmp_path / "pwned").exists()
