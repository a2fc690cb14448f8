"""attnlab experiment: every experiment at quick budget writes what it promises (results.json with
its keys, the Markdown table, PNG figures, a verdict that names its anchor's terms and the seed
spread, one run directory per arm); arms are reused and refused through the run layer; the
ablation models compute what they claim; the arms of every experiment differ only in the variables
it declares (issue 21, point 4). Each experiment runs once at quick budget per session
(``quick_runs``), shared by the tests that read it. The outcomes are not checked here (EXPERIMENTS.md)."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import torch

from attnlab.cli.main import main
from attnlab.errors import ConfigError
from attnlab.experiments import experiments, get_experiment, run_experiment
from attnlab.experiments.arms import arm_differences, declared, setup_differences, undeclared_differences
from attnlab.experiments.base import Context, Experiment, Result
from attnlab.experiments.numbers import apart, fit_power, pm
from attnlab.experiments.rnn_forgetting import SPEC as COPY
from attnlab.experiments.rnn_forgetting import CopyDataConfig
from attnlab.experiments.rules import VERDICTS, fingerprint, rule_markdown
from attnlab.experiments.runner import markdown_table
from attnlab.models import create_model
from attnlab.models.registry import config_dict

NEEDS_NO_DATA = {"attention-cost", "rnn-forgetting"}
KEYS = {"experiment", "question", "anchor", "budget", "seeds", "threads", "command", "config", "table", "table_markdown",
        "data", "arms", "left_out", "figures", "verdict", "software", "load_average", "started_utc", "wall_seconds",
        "results_dir", "train_seconds", "rule", "decision"}
VERDICT_WORDS = re.compile(r"\b(agree|agrees|disagree|disagrees|inconclusive)\b", re.I)
ISSUE_11 = {"sqrt-dk", "layernorm-vs-batchnorm", "post-vs-pre-ln", "vit-position", "text-position", "cls-vs-gap",
            "topk-attention", "rnn-forgetting", "attention-cost", "vit-vs-cnn", "ar-vs-nat"}
EVERY = set(experiments())  # the eleven of issue 11 and those added since (detr-small-data)


def test_list_names_every_experiment(capsys):
    assert ISSUE_11 <= set(experiments())
    assert main(["experiment", "list"]) == 0
    out = capsys.readouterr().out
    for name, e in experiments().items():
        assert name in out and e.question in out and e.cost["quick"] in out


@pytest.fixture(scope="session")
def quick_runs(tmp_path_factory):
    """``quick_runs(name)``: (output folder, results) of experiment ``name`` at quick budget with its
    default seeds, on one thread, run when a test first asks for it and then shared."""
    from conftest import data_dir

    runs: dict[str, tuple[Path, dict]] = {}

    def get(name: str) -> tuple[Path, dict]:
        if name not in runs:
            mp, threads = pytest.MonkeyPatch(), torch.get_num_threads()
            if name not in NEEDS_NO_DATA:
                if not data_dir().is_dir():
                    pytest.skip(f"shared data not found at {data_dir()} (set ATTNLAB_DATA to its path)")
                mp.setenv("ATTNLAB_DATA", str(data_dir()))
            torch.set_num_threads(1)
            try:
                out = tmp_path_factory.mktemp("quick") / name
                runs[name] = (out, run_experiment(get_experiment(name), "quick", out=out, progress=False))
            finally:
                torch.set_num_threads(threads)
                mp.undo()
        return runs[name]

    return get


@pytest.mark.parametrize("name", sorted(EVERY))
def test_quick_budget_writes_results(name, quick_runs):
    out, res = quick_runs(name)
    saved = json.loads((out / "results.json").read_text())
    assert KEYS <= set(saved) and saved["experiment"] == name and saved["budget"] == "quick" and saved["seeds"] == [0]
    assert saved["software"]["torch"] == torch.__version__ and saved["wall_seconds"] > 0
    assert saved["table"] and saved["verdict"] == res["verdict"]
    table = (out / "table.md").read_text().splitlines()
    assert table[0].startswith("| ") and set(table[1]) <= {"|", "-"} and len(table) == 2 + len(saved["table"])
    verdict = (out / "verdict.md").read_text()
    assert len(verdict) > 200 and "seed" in verdict.lower()
    assert saved["figures"]
    for png in saved["figures"].values():
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    readme = (out / "README.md").read_text()
    assert saved["table_markdown"] in readme and all(f"({png})" in readme for png in saved["figures"].values())
    rule = get_experiment(name).rule
    if rule is not None:  # the rule above the result, its computed verdict, and a reading without verdict words
        assert saved["rule"]["fingerprint"] == fingerprint(rule) and rule_markdown(rule) in readme
        assert saved["decision"]["verdict"] in VERDICTS and verdict.startswith(f"**Verdict: {saved['decision']['verdict']}")
        assert not VERDICT_WORDS.search(verdict.split("**Reading**")[1])
    if name != "attention-cost":  # every other experiment trains its arms through the run layer
        assert saved["arms"]
        for arm, summary in saved["arms"].items():
            assert (out / "runs" / arm / "run.json").is_file() and summary["run_dir"] == str(out / "runs" / arm)


@pytest.mark.parametrize("name", sorted(EVERY - {"attention-cost"}))
def test_every_run_an_experiment_writes_reopens(name, quick_runs, capsys):
    """Every arm re-opens through the run layer's front door and load_model, with its own task
    (the copy task and the image subsets are declared in experiments/); `attnlab eval` reads the
    first arm, a copy-task run included (issue 22, item 2)."""
    import attnlab
    from attnlab import runs

    out, _ = quick_runs(name)
    arms = sorted((out / "runs").iterdir())
    for run_dir in arms:
        run = runs.open(run_dir)
        rec = json.loads((run_dir / "run.json").read_text())
        assert run.spec.name == rec["task"] and run.spec.module == rec.get("task_module", "")
        assert type(attnlab.load_model(run_dir)) is type(run.model)
    assert main(["eval", str(arms[0]), "--json", "--quiet", "--out", str(out / "eval-check")]) == 0
    assert json.loads(capsys.readouterr().out)["results_json"] == str(out / "eval-check" / "results.json")


def test_a_teacher_is_a_reference_run_not_an_arm(quick_runs):
    """ar-vs-nat's teacher (one run, seed 0) is listed under references: the arms are not compared with it,
    and its BLEU is in the data."""
    out, res = quick_runs("ar-vs-nat")
    assert set(res["references"]) == {"teacher-s0"} and "teacher-s0" not in res["arms"]
    assert (out / "runs" / "teacher-s0" / "run.json").is_file()
    assert res["data"]["teacher_bleu"] is not None and res["data"]["parameters"]["teacher"] > 0


# --- arms differ only in what is studied (issue 21, point 4) ----------------------------------------

@pytest.mark.parametrize("name", sorted(EVERY))
def test_arms_differ_only_in_the_declared_variables(name, quick_runs):
    """Every pair of arms of one seed differs only in the experiment's declared variables, and each
    declared variable does vary (attention-cost trains no arm: it declares none)."""
    exp = get_experiment(name)
    _, res = quick_runs(name)
    differences = arm_differences(res["arms"])
    varied = sorted({f for fields in differences.values() for f in fields})
    assert exp.variables is not None, f"{name} declares no variables (Experiment.variables); its arms differ in {varied}"
    assert undeclared_differences(exp.variables, res["arms"]) == []
    assert [v for v in exp.variables if not any(declared(f, [v]) for f in varied)] == []
    assert bool(exp.variables) == bool(res["arms"])


def _planted(res: dict, tmp_path: Path, arm: str, part: str, key: str, value) -> dict:
    """The arms of ``res`` with their records copied and ``arm``'s ``part`` (train_config,
    data_config or the model config) changed at ``key``."""
    arms = {}
    for name, summary in res["arms"].items():
        d = tmp_path / name
        d.mkdir()
        for f in ("run.json", "last.json"):
            rec = json.loads((Path(summary["run_dir"]) / f).read_text())
            if name == arm:
                (rec["model"]["config"] if part == "model" else rec[part])[key] = value
            (d / f).write_text(json.dumps(rec))
        arms[name] = {**summary, "run_dir": str(d)}
    return arms


@pytest.mark.parametrize("part, key, value", [("train_config", "lr", 0.5), ("model", "d_ff", 8),
                                              ("data_config", "window", 7)])
def test_a_planted_difference_is_caught(quick_runs, tmp_path, part, key, value):
    """One text-position arm given another learning rate, FFN width or context: every pair with it
    differs in that field besides the position encoding, and the check names it."""
    exp = get_experiment("text-position")
    _, res = quick_runs("text-position")
    arm = sorted(res["arms"])[0]
    found = undeclared_differences(exp.variables, _planted(res, tmp_path, arm, part, key, value))
    field_ = {"train_config": "train", "data_config": "data", "model": "model"}[part] + f".{key}"
    assert len(found) == len(res["arms"]) - 1 and all(arm in line and line.endswith(field_) for line in found)


def test_setup_differences():
    a = {"task": "image", "model.name": "vit", "model.depth": 4, "train.lr": 1e-3, "steps": 10}
    assert setup_differences(a, {**a, "train.lr": 3e-4, "steps": 12}) == ["steps", "train.lr"]
    assert setup_differences(a, {**a, "model.name": "resnet", "model.width": 8}) == ["model.name"]
    assert setup_differences(a, {**a, "data.lag": 3}) == ["data.lag"]
    assert declared("data.lag", ["data"]) and declared("train.lr", ["train.lr"]) and not declared("train.lr_x", ["train.lr"])


def _copy_ctx(tmp_path: Path) -> Context:
    exp = Experiment("t", "q", "a", {"quick": "", "full": ""}, {"quick": 1, "full": 1}, lambda ctx: Result([], ""))
    return Context(exp, "quick", [0], tmp_path, threads=1, progress=False)


def test_arm_is_reused_and_other_settings_refused(tmp_path, one_thread):
    dc = CopyDataConfig(lag=2, outputs=4, steps_per_epoch=3, eval_size=16)
    train = dict(epochs=2, batch_size=8, lr=3e-3, warmup_steps=1)
    args = {"embed_dim": 8, "hidden_dim": 8, "num_layers": 1}
    first = _copy_ctx(tmp_path).train_arm("gru", COPY, dc, train, "gru_lm_small", args)
    again = _copy_ctx(tmp_path).train_arm("gru", COPY, dc, train, "gru_lm_small", args)
    assert again["steps"] == first["steps"] == 6 and again["metrics"] == first["metrics"]
    assert torch.equal(again["model"].head.weight, first["model"].head.weight)
    with pytest.raises(ConfigError, match="other settings"):
        _copy_ctx(tmp_path).train_arm("gru", COPY, dc, {**train, "lr": 1e-3}, "gru_lm_small", args)


def test_time_bound_arm_is_reused_not_given_more_minutes(tmp_path, one_thread):
    """An arm bound by --max-minutes that used them up is kept as it is when the experiment runs
    again (resuming would hand it another budget), with or without the record's stopped_by_time
    (older runs); one interrupted before its minutes ran out is trained again from the start."""
    dc = CopyDataConfig(lag=2, outputs=4, steps_per_epoch=3, eval_size=16)
    train = dict(epochs=50, batch_size=8, lr=3e-3, warmup_steps=1, max_minutes=1e-6)  # out after one step
    args = {"embed_dim": 8, "hidden_dim": 8, "num_layers": 1}
    first = _copy_ctx(tmp_path).train_arm("gru", COPY, dc, train, "gru_lm_small", args)
    assert first["stopped_by_time"] and first["steps"] == 1
    last = tmp_path / "runs" / "gru-s0" / "last.json"
    assert json.loads(last.read_text())["stopped_by_time"] is True
    again = _copy_ctx(tmp_path).train_arm("gru", COPY, dc, train, "gru_lm_small", args)
    assert again["reused"] and again["steps"] == 1 and again["metrics"] == first["metrics"]
    assert torch.equal(again["model"].head.weight, first["model"].head.weight)
    record = json.loads(last.read_text())
    last.write_text(json.dumps({k: v for k, v in record.items() if k != "stopped_by_time"}))  # an older record
    assert _copy_ctx(tmp_path).train_arm("gru", COPY, dc, train, "gru_lm_small", args)["steps"] == 1
    last.write_text(json.dumps({**record, "stopped_by_time": False}))  # killed before its minutes ran out
    fresh = _copy_ctx(tmp_path).train_arm("gru", COPY, dc, train, "gru_lm_small", args)
    assert "reused" not in fresh and fresh["steps"] == 1  # from the start: a resumed run would be at step 2
    assert json.loads(last.read_text())["stopped_by_time"] is True


def test_moved_output_and_data_folders_reuse_arms_and_changed_data_is_refused(tmp_path, monkeypatch, one_thread):
    """Arms compare their data files by content: moving the output folder or the data directory
    (another machine) keeps them, changing the data does not."""
    from attnlab.tasks.lm import SPEC, LMDataConfig

    text = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(100))
    (tmp_path / "data1" / "tinyshakespeare").mkdir(parents=True)
    (tmp_path / "data1" / "tinyshakespeare" / "input.txt").write_text(text)
    train = dict(epochs=1, batch_size=4, lr=1e-3, warmup_steps=1)
    args = {"d_model": 16, "num_heads": 1, "num_layers": 1}

    def arms(ctx: Context) -> list[dict]:
        files = [ctx.data_file("tinyshakespeare", "input.txt"), ctx.derived_file("slice.txt", lambda: text[:3000])]
        return [ctx.train_arm(f"lm{i}", SPEC, LMDataConfig(text=str(f), window=8, steps_per_epoch=2), train,
                              "transformer_lm_ablation", args) for i, f in enumerate(files)]

    monkeypatch.setenv("ATTNLAB_DATA", str(tmp_path / "data1"))
    first = arms(_copy_ctx(tmp_path / "out1"))
    (tmp_path / "out1").rename(tmp_path / "out2")
    (tmp_path / "data1").rename(tmp_path / "data2")
    monkeypatch.setenv("ATTNLAB_DATA", str(tmp_path / "data2"))
    again = arms(_copy_ctx(tmp_path / "out2"))
    for a, b in zip(first, again):
        assert b["steps"] == a["steps"] == 2 and b["metrics"] == a["metrics"]
        assert torch.equal(b["model"].head.weight, a["model"].head.weight)
    (tmp_path / "data2" / "tinyshakespeare" / "input.txt").write_text(text.upper())
    with pytest.raises(ConfigError, match=r"lm0-s0 was trained with other settings \(text\)"):
        arms(_copy_ctx(tmp_path / "out2"))


def test_arm_started_from_another_arm_compares_its_weights_not_its_path(tmp_path, one_thread):
    """An arm whose ``init`` names another arm's run (topk-attention's cause arms) is reused after
    the output folder moves, and refused when the weights it started from changed."""
    from attnlab.tasks.image import SPEC, ImageDataConfig

    train = dict(epochs=1, batch_size=256, lr=3e-3, warmup_steps=1)
    args = {"embed_dim": 16, "depth": 1, "num_heads": 2}

    def arms(out: Path) -> list[dict]:
        ctx = _copy_ctx(out)
        base = ctx.train_arm("base", SPEC, ImageDataConfig(), train, "vit_digits", args)
        tuned = ctx.train_arm("tuned", SPEC, ImageDataConfig(init=f"{base['run_dir']}:best"), train, "vit_digits", args)
        return [base, tuned]

    first = arms(tmp_path / "out1")
    (tmp_path / "out1").rename(tmp_path / "out2")
    again = arms(tmp_path / "out2")
    assert again[1]["steps"] == first[1]["steps"] and again[1]["metrics"] == first[1]["metrics"]
    assert torch.equal(again[1]["model"].head.weight, first[1]["model"].head.weight)
    from safetensors.torch import load_file, save_file

    from attnlab.checkpoints.rundir import weights_file
    weights = weights_file(f"{tmp_path / 'out2' / 'runs' / 'base-s0'}:best")
    state = load_file(weights)
    save_file({k: v + 1 for k, v in state.items()}, weights)
    with pytest.raises(ConfigError, match=r"tuned-s0 was trained with other settings \(init\)"):
        arms(tmp_path / "out2")


def _learned(metrics: dict) -> dict:
    """An arm's metrics without the timings."""
    return {k: v for k, v in metrics.items() if k not in ("time", "eval_seconds", "samples_per_s")}


def test_arms_side_by_side_give_the_results_of_one_at_a_time(tmp_path):
    """--jobs 2 trains arms in worker processes: the same arms, numbers and verdict as one at a
    time (each arm is seeded and has its own threads)."""
    exp = get_experiment("sqrt-dk")
    one = run_experiment(exp, "quick", out=tmp_path / "one", progress=False)
    two = run_experiment(exp, "quick", out=tmp_path / "two", progress=False, jobs=2)
    assert list(two["arms"]) == list(one["arms"]) and len(one["arms"]) >= 2
    for name, arm in one["arms"].items():
        assert _learned(two["arms"][name]["metrics"]) == _learned(arm["metrics"]) and two["arms"][name]["steps"] == arm["steps"]
    assert two["data"] == one["data"] and two["verdict"] == one["verdict"]
    again = run_experiment(exp, "quick", out=tmp_path / "two", progress=False, jobs=2)  # finished arms: no worker
    assert all(_learned(a["metrics"]) == _learned(one["arms"][n]["metrics"]) for n, a in again["arms"].items())


def test_side_by_side_an_arm_waits_for_the_arm_it_starts_from_and_errors_reach_the_caller(tmp_path, one_thread):
    from attnlab.tasks.image import SPEC, ImageDataConfig

    train = dict(epochs=1, batch_size=256, lr=3e-3, warmup_steps=1)
    args = {"embed_dim": 16, "depth": 1, "num_heads": 2}
    results = {}
    for jobs in (1, 2):
        ctx = Context(_copy_ctx(tmp_path).exp, "quick", [0], tmp_path / f"jobs{jobs}", threads=1, progress=False,
                      jobs=jobs)
        try:
            base = ctx.train_arm("base", SPEC, ImageDataConfig(), train, "vit_digits", args)
            tuned = ctx.train_arm("tuned", SPEC, ImageDataConfig(init=f"{base['run_dir']}:best"), train, "vit_digits",
                                  args)
            results[jobs] = [base["model"].head.weight, tuned["model"].head.weight, _learned(tuned["metrics"])]
            if jobs == 2:
                bad = ctx.train_arm("bad", SPEC, ImageDataConfig(), train, "vit_digits", {"no_such_option": 1})
                with pytest.raises(ConfigError, match="no_such_option"):
                    bad["metrics"]
        finally:
            ctx.close()
    assert torch.equal(results[1][0], results[2][0]) and torch.equal(results[1][1], results[2][1])
    assert results[1][2] == results[2][2]


def _long_arm(ctx):
    """An arm of 10,000 epochs (hours): with --jobs 2 it trains in a worker until stopped."""
    dc = CopyDataConfig(lag=2, outputs=4, steps_per_epoch=50, eval_size=16)
    return ctx.train_arm("gru", COPY, dc, dict(epochs=10_000, batch_size=8, lr=3e-3, warmup_steps=1), "gru_lm_small",
                         {"embed_dim": 8, "hidden_dim": 8, "num_layers": 1})


def _interrupted_beside_a_long_arm(ctx):
    _long_arm(ctx)
    raise KeyboardInterrupt  # Ctrl-C while the arm trains in its worker


def _waiting_for_a_long_arm(ctx):
    _long_arm(ctx)["metrics"]


def test_ctrl_c_with_arms_side_by_side_ends_the_workers_at_once(tmp_path):
    import multiprocessing

    exp = Experiment("t", "q", "a", {"quick": "", "full": ""}, {"quick": 1, "full": 1}, _interrupted_beside_a_long_arm)
    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, out=tmp_path, progress=False, jobs=2)
    assert time.perf_counter() - t0 < 60  # 10,000 epochs would take hours
    assert not multiprocessing.active_children()


def test_killing_an_experiment_ends_its_workers(tmp_path):
    """kill -9 of `attnlab experiment --jobs 2` leaves no worker training on (an orphan would
    hold its arm's run lock and take a core)."""
    import os
    import signal
    import subprocess
    import sys

    code = ("import sys; from attnlab.experiments import run_experiment; import test_experiments as t; "
            "from attnlab.experiments.base import Experiment; "
            "run_experiment(Experiment('t', 'q', 'a', {'quick': '', 'full': ''}, {'quick': 1, 'full': 1}, "
            "t._waiting_for_a_long_arm), out=sys.argv[1], progress=False, jobs=2)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out")], env=env)
    run = tmp_path / "out" / "runs" / "gru-s0"
    deadline = time.time() + 120
    while not (run / "run.json").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert p.poll() is None, "the experiment ended before its arm started"
    children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    assert children, "no worker process"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()

    def running(pid: str) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.time() + 30
    alive = children
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [c for c in children if running(c)]
    assert not alive, f"workers {alive} outlived the experiment"


def test_numbers_helpers():
    assert pm([1.0]) == "1.00" and pm([1.0, 3.0], 1) == "2.0 ± 1.4"
    assert apart([1.0], [2.0]) is None and apart([1.0, 1.1], [5.0, 5.1]) and apart([1.0, 2.0], [1.5, 2.5]) is False
    p, a = fit_power([2, 4, 8], [12.0, 48.0, 192.0])
    assert math.isclose(p, 2.0) and math.isclose(a, 3.0)
    assert markdown_table([{"a": 1.23456, "b": "x|y"}, {"a": float("nan")}]).splitlines() == \
        ["| a | b |", "|---|---|", "| 1.235 | x\\|y |", "| nan |  |"]


def test_cli_unknown_experiment_one_line(capsys):
    assert main(["experiment", "sqrt_dk"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sqrt-dk" in err


# --- the ablation models -----------------------------------------------------------------------------

def test_unscaled_attention_is_softmax_of_raw_scores():
    m = create_model("transformer_lm_ablation", vocab_size=11, d_model=32, num_heads=2, num_layers=1,
                     logit_scale="none", position="none").eval()
    attn = m.blocks[0].self_attn
    x = torch.randn(2, 5, 32)
    _, w = attn(x, causal=True, need_weights=True)
    q, k, _ = torch.nn.functional.linear(x, attn.qkv.weight, attn.qkv.bias).view(2, 5, 3, 2, 16).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-2, -1)).masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(w, scores.softmax(-1), atol=1e-5, rtol=1e-5)
    scaled = create_model("transformer_lm_ablation", **{**config_dict(m), "logit_scale": "sqrt"}).eval()
    scaled.load_state_dict(m.state_dict())
    _, ws = scaled.blocks[0].self_attn(x, causal=True, need_weights=True)
    torch.testing.assert_close(ws, (scores / 4.0).softmax(-1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["none", "sinusoidal", "learned", "rotary", "relative"])
def test_one_token_embedding_recipe_for_every_position(position):
    """text-position's arms: an explicit recipe gives every position kind the same token embeddings
    (scaled: √d · E with E ~ N(0, 1/d); gpt: E ~ N(0, 0.02²)); the record names the default one."""
    for recipe, scale, std in (("scaled", 8.0, 64 ** -0.5), ("gpt", 1.0, 0.02)):
        m = create_model("transformer_lm_char", d_model=64, position=position, embedding=recipe)
        assert m.embed_scale == scale and float(m.embed.weight.detach().std()) == pytest.approx(std, rel=0.1)
    default = create_model("transformer_lm_char", position=position).cfg.embedding
    assert default == ("scaled" if position == "sinusoidal" else "gpt")
    with pytest.raises(ConfigError, match="embedding"):
        create_model("transformer_lm_char", position=position, embedding="xavier")


@pytest.mark.parametrize("name", ["transformer_lm_ablation", "vit_digits_ablation"])
@pytest.mark.parametrize("norm", ["batch", "none"])
def test_norm_ablation_replaces_every_layernorm(name, norm):
    m = create_model(name, norm=norm)
    assert not any(isinstance(x, torch.nn.LayerNorm) for x in m.modules())
    assert any(isinstance(x, torch.nn.BatchNorm1d) for x in m.modules()) == (norm == "batch")
    again = create_model(name, **config_dict(m))  # a run's record rebuilds it
    assert type(again) is type(m) and again.cfg == m.cfg
    with pytest.raises(ConfigError, match="norm"):
        create_model(name, norm="group")


def test_sparse_transformer_attends_to_k_keys():
    m = create_model("transformer_multi30k_sparse", src_vocab_size=50, tgt_vocab_size=50, d_model=32, num_heads=2,
                     num_encoder_layers=1, num_decoder_layers=1, d_ff=64, topk=3).eval()
    layer = m.encoder.layers[0]
    _, w = layer.self_attn(torch.randn(1, 9, 32), need_weights=True)
    assert ((w > 0).sum(-1) == 3).all()
    assert m.decoder.layers[0].cross_attn.topk == 3 and m.decoder.layers[0].self_attn.topk == 3
    assert m(torch.randint(1, 50, (2, 7)), torch.randint(1, 50, (2, 5))).shape == (2, 5, 50)
    win = create_model("transformer_multi30k_sparse", src_vocab_size=50, tgt_vocab_size=50, window=2)
    assert win.encoder.layers[0].self_attn.window == 2 and win.decoder.layers[0].cross_attn.window is None


def test_resnet_shapes_and_registry():
    for name, shape in (("resnet_cifar_small", (2, 3, 32, 32)), ("resnet_digits", (2, 1, 8, 8))):
        m = create_model(name).eval()
        assert m(torch.randn(shape)).shape == (2, 10)
        again = create_model(name, **json.loads(json.dumps(config_dict(m))))  # as a run record holds it
        again.load_state_dict(m.state_dict())
        x = torch.randn(shape)
        torch.testing.assert_close(again.eval()(x), m(x))
