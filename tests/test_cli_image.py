"""``attnlab train image`` / ``eval`` / ``predict`` end to end on tiny models, and every kind of
bad input: one line on stderr, a non-zero exit, no traceback, existing run directories intact."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_IMAGE as TINY
from conftest import cli


def snapshot(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def run_dir(tiny_image_run) -> Path:
    return tiny_image_run  # the session's tiny run of TINY, two epochs; every test here leaves it as it is


@pytest.fixture(scope="module")
def other_arch(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("runs") / "other"
    args = [a if a != "depth=1" else "depth=2" for a in TINY]
    code, out, err = cli("train", "image", *args, "--epochs", "1", "--run-dir", d)
    assert code == 0 and "run directory" in out, err
    return d


def digit_png(path: Path, dataset_index: int = 0, colour: bool = False) -> Path:
    from attnlab.data.images import load_digits

    x = load_digits().test.images[dataset_index, 0].numpy()
    im = Image.fromarray(x).resize((32, 32), Image.NEAREST)
    if colour:
        arr = np.stack([np.asarray(im), np.zeros((32, 32), np.uint8), 255 - np.asarray(im)], -1)
        im = Image.fromarray(arr, "RGB")
    im.save(path)
    return path


def test_train_outputs(run_dir):
    for f in ("run.json", "last.json", "best.json", "metrics.csv", "metrics.json", "curves.png"):
        assert (run_dir / f).is_file(), f
    rec = json.loads((run_dir / "best.json").read_text())
    assert rec["task"] == "image" and rec["model"]["name"] == "vit_digits" and rec["model"]["config"]["depth"] == 1
    assert rec["labels"] == [str(i) for i in range(10)] and rec["train_config"]["epochs"] == 2
    assert "val_acc" in rec["metrics"] and len(rec["normalize"]["mean"]) == 1


def test_eval(run_dir, tmp_path):
    code, out, err = cli("eval", run_dir, "--out", tmp_path / "ev")
    assert code == 0, err
    assert "accuracy" in out and "top-5" in out and "per class" in out
    r = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert set(r["per_class_accuracy"]) == {str(i) for i in range(10)} and r["images"] == 359
    assert np.array(r["confusion_matrix"]).sum() == 359
    assert (tmp_path / "ev" / "confusion.png").is_file()
    code, out, _ = cli("eval", run_dir, "--json", "--out", tmp_path / "ev2")
    assert json.loads(out)["accuracy"] == r["accuracy"]


def test_predict(run_dir, tmp_path):
    png = digit_png(tmp_path / "d.png")
    code, out, err = cli("predict", run_dir, png, "--json")
    assert code == 0, err
    p = json.loads(out)
    assert len(p) == 1 and len(p[0]["top"]) == 5
    probs = [t["probability"] for t in p[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    code, out, _ = cli("predict", run_dir, png, png, "--top-k", "3")
    assert code == 0 and out.count("%") == 6
    # an RGB file that is grey inside is fine for a greyscale model
    Image.open(png).convert("RGB").save(tmp_path / "rgb_grey.png")
    assert cli("predict", run_dir, tmp_path / "rgb_grey.png")[0] == 0


def test_a_resnet_trains_evaluates_and_predicts(tmp_path):
    """The image task trains the registry's CNNs too (the ViT-vs-CNN comparison's ResNet)."""
    d = tmp_path / "cnn"
    code, _, err = cli("train", "image", "--model", "resnet_digits", "--epochs", "1",
                       "--batch-size", "128", "--threads", "1", "--quiet", "--run-dir", d)
    assert code == 0, err
    code, out, err = cli("eval", d, "--json")
    assert code == 0, err
    assert 0 <= json.loads(out)["accuracy"] <= 1
    code, out, err = cli("predict", d, digit_png(tmp_path / "d.png"), "--json")
    assert code == 0 and len(json.loads(out)[0]["top"]) == 5, err


def test_resume_finished_run_changes_nothing(run_dir):
    step = json.loads((run_dir / "last.json").read_text())["step"]
    code, out, err = cli("train", "image", "--resume", run_dir, "--quiet")
    assert code == 0, err
    assert json.loads((run_dir / "last.json").read_text())["step"] == step


def corrupt_png(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3)).astype(np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def image_folder(root: Path, classes=("a", "b"), n=3, corrupt=False) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (8, 8), 40 * i).save(root / c / f"{i}.png")
    if corrupt:
        corrupt_png(root / classes[0] / "0.png")
    return root


def idx_dir(root: Path, magic=2051, truncate=0) -> Path:
    root.mkdir(parents=True)
    for prefix in ("train", "t10k"):
        hdr = magic.to_bytes(4, "big") + (4).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
        body = bytes(4 * 784)
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress((hdr + body)[: len(hdr + body) - truncate]))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress((2049).to_bytes(4, "big") + (4).to_bytes(4, "big") + bytes([0, 1, 2, 3])))
    return root


BAD = {
    "missing data directory": (lambda t: ["--dataset", f"mnist:{t / 'nope'}"], "does not exist"),
    "empty data directory": (lambda t: ["--dataset", f"folder:{(t / 'empty').mkdir() or t / 'empty'}"], "is empty"),
    "corrupt image": (lambda t: ["--dataset", f"folder:{image_folder(t / 'f', corrupt=True)}"], "corrupt or truncated"),
    "idx wrong magic": (lambda t: ["--dataset", f"mnist:{idx_dir(t / 'm', magic=2049)}"], "wrong IDX magic number"),
    "idx wrong length": (lambda t: ["--dataset", f"mnist:{idx_dir(t / 'm', truncate=100)}"], "truncated"),
    "folder with one class": (lambda t: ["--dataset", f"folder:{image_folder(t / 'f', classes=('x',))}"], "only one class"),
    "unknown model": (lambda t: ["--model", "vit_nope"], "unknown model 'vit_nope'"),
    "wrong channel count": (lambda t: ["--model", "vit_cifar"], "greyscale .* images but model vit_cifar takes RGB"),
    "non-numeric option": (lambda t: ["--epochs", "three"], "'three' is not a whole number"),
    "negative option": (lambda t: ["--lr", "-0.1"], "must be a positive number"),
    "infinite option": (lambda t: ["--lr", "inf"], "not a finite number"),
    "bad model arg": (lambda t: ["--model-arg", "depth"], "is not KEY=VALUE"),
    "unknown option": (lambda t: ["--bogus"],
                       r"^attnlab train image: error: unrecognized arguments: --bogus \(see attnlab train image --help\)$"),
}


def assert_one_line_error(code, out, err, pattern):
    import re

    assert code not in (0, None), (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_training_input_leaves_runs_intact(case, run_dir, tmp_path):
    make_args, pattern = BAD[case]
    before = snapshot(run_dir)
    extra = make_args(tmp_path)
    code, out, err = cli("train", "image", *TINY, *extra, "--epochs", "1", "--run-dir", run_dir, "--overwrite")
    assert_one_line_error(code, out, err, pattern)
    assert snapshot(run_dir) == before


def test_unknown_option_before_the_task_names_the_command(run_dir):
    before = snapshot(run_dir)
    code, out, err = cli("train", "--bogus", "image", "--run-dir", run_dir, "--overwrite")
    assert_one_line_error(code, out, err, r"^attnlab train: error: unrecognized arguments: --bogus \(see attnlab train --help\)$")
    assert snapshot(run_dir) == before


#: ``attnlab viz explore RUN_DIR ...`` on bad input: (the arguments after RUN_DIR from (tmp folder, a
#: digit image, the page to write), what the one line says)
BAD_EXPLORE = {
    "zero std": (lambda t, im, page: [im, "-o", page, "--std", "0"],
                 r"--std 0.0: every standard deviation must be a positive finite number"),
    "NaN std": (lambda t, im, page: [im, "-o", page, "--std", "nan"], "must be a positive finite number"),
    "infinite mean": (lambda t, im, page: [im, "-o", page, "--mean", "inf"], "every mean must be a finite number"),
    "a mean per RGB channel": (lambda t, im, page: [im, "-o", page, "--mean", "0", "0", "0"],
                               r"need 1 values \(one per channel\)"),
    "zero page budget": (lambda t, im, page: [im, "-o", page, "--max-mb", "0"], "--max-mb must be a finite number > 0"),
    "NaN page budget": (lambda t, im, page: [im, "-o", page, "--max-mb", "nan"], "--max-mb must be a finite number > 0"),
    "layer out of range": (lambda t, im, page: [im, "-o", page, "--layer", "7"], "block 7 out of range"),
    "target for a ViT": (lambda t, im, page: [im, "-o", page, "--target", "x"], "translation models only"),
    "missing image": (lambda t, im, page: [t / "none.png", "-o", page], "no such file"),
    "corrupt image": (lambda t, im, page: [corrupt_png(t / "c.png"), "-o", page], "cannot read image"),
    "output is a folder": (lambda t, im, page: [im, "-o", t], "directory"),
    "output is not a page": (lambda t, im, page: [im, "-o", im], "not an HTML page"),
    "unknown option": (lambda t, im, page: [im, "-o", page, "--bogus"],
                       r"^attnlab viz explore: error: unrecognized arguments: --bogus \(see attnlab viz explore --help\)$"),
}


@pytest.mark.parametrize("case", list(BAD_EXPLORE))
def test_bad_explore_input_changes_nothing(case, run_dir, tmp_path):
    make_args, pattern = BAD_EXPLORE[case]
    argv = make_args(tmp_path, digit_png(tmp_path / "d.png"), tmp_path / "page.html")
    before = snapshot(run_dir), snapshot(tmp_path)
    assert_one_line_error(*cli("viz", "explore", run_dir, *argv), pattern)
    assert (snapshot(run_dir), snapshot(tmp_path)) == before


def test_existing_run_dir_is_refused(run_dir):
    before = snapshot(run_dir)
    code, out, err = cli("train", "image", *TINY, "--epochs", "1", "--run-dir", run_dir)
    assert_one_line_error(code, out, err, "already exists; pass --overwrite")
    assert snapshot(run_dir) == before


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("...")
    code, out, err = cli("train", "image", *TINY, "--epochs", "1", "--run-dir", tmp_path / "precious", "--overwrite")
    assert_one_line_error(code, out, err, "not an attnlab run directory; refusing")
    assert (tmp_path / "precious" / "thesis.tex").read_text() == "..."


def test_nan_loss_stops_with_the_step(tmp_path, run_dir):
    before = snapshot(run_dir)
    code, out, err = cli("train", "image", *TINY, "--lr", "1e30", "--epochs", "2", "--run-dir", tmp_path / "nan")
    assert_one_line_error(code, out, err, r"became (nan|inf|-inf) at step \d+ \(epoch 1, batch \d+\); stopped")
    assert snapshot(run_dir) == before


def test_checkpoint_from_another_architecture(run_dir, other_arch, tmp_path):
    before = snapshot(run_dir)
    code, out, err = cli("train", "image", *TINY, "--epochs", "1", "--init", other_arch, "--run-dir", tmp_path / "x")
    assert_one_line_error(code, out, err, "from a different architecture")
    assert not (tmp_path / "x").exists()
    # a run directory whose weights were replaced by another model's
    import shutil

    bad = tmp_path / "swapped"
    shutil.copytree(run_dir, bad)
    rec, orec = (json.loads((d / "best.json").read_text()) for d in (bad, other_arch))
    shutil.copy(other_arch / orec["path"] / "model.safetensors", bad / rec["path"] / "model.safetensors")
    assert_one_line_error(*cli("eval", bad), "from a different architecture")
    assert_one_line_error(*cli("predict", bad, digit_png(tmp_path / "d.png")), "from a different architecture")
    assert snapshot(run_dir) == before


def test_bad_predict_and_eval_input(run_dir, tmp_path):
    before = snapshot(run_dir)
    assert_one_line_error(*cli("predict", run_dir, corrupt_png(tmp_path / "c.png")), "corrupt or truncated")
    assert_one_line_error(*cli("predict", run_dir, tmp_path / "missing.png"), "no such file")
    assert_one_line_error(*cli("predict", run_dir, digit_png(tmp_path / "col.png", colour=True)),
                          "colour .* image but the model takes greyscale.*--convert")
    assert cli("predict", run_dir, tmp_path / "col.png", "--convert")[0] == 0
    assert_one_line_error(*cli("eval", tmp_path), "not an attnlab run directory")
    assert_one_line_error(*cli("eval", run_dir, "--dataset", f"cifar10:{tmp_path / 'none'}"), "does not exist")
    assert_one_line_error(*cli("eval", run_dir, "--batch-size", "0"), "must be a positive whole number")
    assert snapshot(run_dir) == before


def test_resume_with_other_options_is_refused(run_dir):
    assert_one_line_error(*cli("train", "image", "--resume", run_dir, "--lr", "0.5"),
                          "these options differ from the run's: --lr")


def test_as_a_process_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "attnlab", "train", "image", "--model", "vit_nope", "--run-dir", tmp_path / "r"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "unknown model" in p.stderr and not (tmp_path / "r").exists()


def test_help_explains_every_option():
    code, out, _ = cli("train", "image", "--help")
    assert code == 0
    for opt in ("--model", "--dataset", "--epochs", "--batch-size", "--lr", "--resume", "--overwrite", "--ema-decay",
                "--label-smoothing", "--clip-grad", "--accum-steps", "--precision", "--device", "--augment", "--run-dir"):
        assert opt in out, opt
