"""The run layer's one front door, ``attnlab.runs.open`` (a registered name, a run directory with
one tag rule, a checkpoint file), the config assembly and resume check written once, and runs
of tasks declared outside attnlab.tasks (the copy task, the experiments' image subsets) that
every command re-opens (issue 22, items 1 and 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attnlab
from attnlab import runs
from attnlab.cli.main import main
from attnlab.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def lm_run(tiny_run):
    return tiny_run("lm")


def same_weights(a, b) -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_open_a_registered_name():
    a, b = runs.open("vit_digits", seed=3), runs.open("vit_digits", seed=3)
    assert a.random_init and a.run_dir is None and a.spec is None and not a.model.training
    assert same_weights(a.model, b.model) and not same_weights(a.model, runs.open("vit_digits", seed=4).model)
    assert runs.open("vit_digits", model_args={"depth": 1}).model.cfg.depth == 1
    with pytest.raises(ConfigError, match="did you mean vit_digits"):
        runs.open("vit_digit")


def test_open_a_run_one_tag_rule(lm_run):
    best = runs.open(lm_run)
    assert best.which == "best" and best.spec.name == "lm" and "tokenizer" in best.extras and not best.random_init
    assert runs.open(f"{lm_run}:last").which == "last" and runs.open(lm_run, "last").which == "last"
    assert runs.open(lm_run, default="last").which == "last" and runs.open(f"{lm_run}:best", default="last").which == "best"
    with pytest.raises(ConfigError, match="give one of the two"):
        runs.open(f"{lm_run}:last", "best")
    with pytest.raises(ConfigError, match="drop --model-arg"):
        runs.open(lm_run, model_args={"dropout": 0.5})


def test_open_a_checkpoint_file(lm_run, tmp_path):
    run = runs.open(lm_run)
    path = attnlab.save_checkpoint(run.model, tmp_path / "lm.safetensors")
    f = runs.open(path)
    assert f.name == "lm" and f.run_dir is None and f.spec is None and same_weights(f.model, run.model)
    assert same_weights(attnlab.load_model(f"{lm_run}:last"), runs.open(lm_run, "last").model)


def test_cli_one_tag_rule(lm_run, capsys):
    assert main(["eval", f"{lm_run}:last", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == "last"
    assert main(["eval", f"{lm_run}:last", "--which", "best", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "give one of the two" in err and len(err.splitlines()) == 1


def test_train_config_is_assembled_once():
    from attnlab.tasks import get_spec

    spec = get_spec("detect")
    assert runs.train_config(spec, {}).warmup_steps == spec.train_defaults["warmup_steps"]
    cfg = runs.train_config(spec, {"warmup_epochs": 2.0, "lr": 5e-4})  # a warm-up in epochs replaces the one in steps
    assert cfg.warmup_steps is None and cfg.warmup_epochs == 2.0 and cfg.lr == 5e-4
    assert runs.train_config(spec, {}, saved={"lr": 1.0}).lr == 1.0
    assert runs.train_config(spec, {"lr": 2.0}, {"lr": 1.0}).lr == 2.0
    translate = get_spec("translate")  # its own finishing step runs too
    assert runs.train_config(translate, {}) == translate.finalize_train_config(runs.train_config(translate, {}))


def test_resume_conflicts():
    saved = {"data": {"lag": 2}, "train": {"lr": 1.0, "epochs": 3}, "model": "m", "model_args": {"d": 1}}
    assert runs.resume_conflicts(saved, data={"lag": 2}, train={"lr": 1.0, "epochs": 9}) == []  # epochs may change
    assert runs.resume_conflicts(saved, data={"lag": 3}, train={"lr": 2.0}, model="n", model_args={}) == \
        ["lag", "lr", "model", "model_arg"]


# --- tasks declared outside attnlab.tasks ---------------------------------------------------------

def in_a_fresh_process(*args: str) -> subprocess.CompletedProcess:
    """``attnlab ARGS`` in a new Python process: nothing of this test session is imported there."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.run([sys.executable, "-m", "attnlab", *args], capture_output=True, text=True, env=env, timeout=600)


def test_a_copy_task_run_reopens(tmp_path):
    """rnn-forgetting's copy task is declared in its experiment: its runs record that module, and
    `attnlab eval` (with the engine's own metrics: the task declares no evaluation) and
    load_model read them in a process that never imported the experiment."""
    from attnlab.experiments.rnn_forgetting import SPEC, CopyDataConfig

    run_dir = tmp_path / "copy"
    cfg = runs.train_config(SPEC, {"epochs": 1, "batch_size": 8, "threads": 1, "warmup_steps": 1})
    summary = runs.train(SPEC, CopyDataConfig(lag=2, outputs=3, steps_per_epoch=3, eval_size=16), cfg, run_dir,
                         model="gru_lm_small", model_args={"embed_dim": 8, "hidden_dim": 8}, log=None, progress=False)
    rec = json.loads((run_dir / "last.json").read_text())
    assert rec["task"] == "copy" and rec["task_module"] == "attnlab.experiments.rnn_forgetting"
    done = in_a_fresh_process("eval", str(run_dir), "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    res = json.loads(done.stdout)
    assert res["task"] == "copy" and res["val_acc"] == pytest.approx(summary["metrics"]["val_acc"], abs=1e-6)
    assert Path(res["results_json"]).is_file()
    assert same_weights(attnlab.load_model(run_dir), summary["model"])


def test_an_image_subset_run_reopens_as_an_image_run(tmp_path, shared_data, monkeypatch, capsys):
    """The experiments' image task (subsets of the splits) records its module: eval and predict
    read its runs as image runs, and 'attnlab train image --resume' (which would drop the
    subsets) refuses them."""
    from attnlab.experiments.imagedata import SPEC, ImageSubsetConfig

    monkeypatch.setenv("ATTNLAB_DATA", str(shared_data))
    run_dir = tmp_path / "subset"
    cfg = runs.train_config(SPEC, {"epochs": 1, "batch_size": 32, "threads": 1})
    runs.train(SPEC, ImageSubsetConfig(dataset="digits", train_size=64, test_size=32), cfg, run_dir, model="vit_digits",
               model_args={"depth": 1}, log=None, progress=False)
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["task"] == "image" and rec["task_module"] == "attnlab.experiments.imagedata"
    assert runs.task_of(run_dir) is SPEC
    assert main(["eval", str(run_dir), "--quiet"]) == 0 and "accuracy" in capsys.readouterr().out
    assert main(["train", "image", "--resume", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "attnlab.experiments.imagedata" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(CheckpointError, match="not a 'lm' run"):
        from attnlab.tasks import get_spec

        runs.saved_options(get_spec("lm"), run_dir)
