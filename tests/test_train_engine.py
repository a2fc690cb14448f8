"""The training engine on a toy task: optimizer groups, schedules, accumulation, EMA, resume,
metrics files, divergence handling and the atomicity of checkpoints."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attnlab.checkpoints.load import load_into
from attnlab.checkpoints.rundir import load_weights, read_record
from attnlab.errors import CheckpointError, ConfigError
from attnlab.train import Plan, TrainConfig, Trainer, TrainingDiverged, make_schedule, noam_peak_lr, param_groups
from attnlab.train import checkpoint as ckpt
from attnlab.train.optim import Scheduler, no_decay_names
from attnlab.train.sampler import eval_shard, sharded_batches, steps_in_epoch
from attnlab.viz.curves import save_curves


class Toy(nn.Module):
    """A little model with every kind of parameter: linear, norm, embedding, position, bias."""

    def __init__(self, d: int = 8, classes: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, d))
        self.fc1 = nn.Linear(4, d)
        self.norm = nn.LayerNorm(d)
        self.emb = nn.Embedding(5, d)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        h = self.norm(self.fc1(x) + self.pos_embed + self.emb.weight[0])
        return self.head(self.drop(torch.tanh(h)))


class ToyTask:
    """Three Gaussian blobs in 4-D; statistics as sums, like a real task."""

    name = "toy"
    main_metric = "acc"

    def __init__(self, n: int = 96, nan_at: int | None = None) -> None:
        g = torch.Generator().manual_seed(1)
        self.y = torch.arange(n) % 3
        self.x = torch.randn(n, 4, generator=g) + 2.0 * F.one_hot(self.y, 4).float()
        self.nan_at = nan_at
        self.calls = 0

    def steps_per_epoch(self, plan: Plan) -> int:
        return steps_in_epoch(len(self.y), plan.batch_size)

    def train_batches(self, plan: Plan):
        for micro in sharded_batches(len(self.y), plan):
            yield [(self.x[i], self.y[i]) for i in micro]

    def train_step(self, model, batch, cfg):
        x, y = batch
        self.calls += 1
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        if self.nan_at is not None and self.calls >= self.nan_at:
            loss = loss * float("nan")
        return loss, {"loss": loss.detach() * len(y), "correct": (logits.argmax(-1) == y).sum(), "count": torch.tensor(len(y))}

    def eval_batches(self, plan: Plan):
        for idx in eval_shard(len(self.y), plan, 50):
            yield self.x[idx], self.y[idx]

    def eval_step(self, model, batch, cfg=None):
        x, y = batch
        logits = model(x)
        return {"loss": F.cross_entropy(logits, y, reduction="sum"), "correct": (logits.argmax(-1) == y).sum(),
                "count": torch.tensor(len(y))}

    def summarize(self, sums):
        n = float(sums["count"])
        return {"loss": float(sums["loss"]) / n, "acc": float(sums["correct"]) / n}

    def record(self):
        return {"labels": ["a", "b", "c"]}


def make(tmp_path=None, seed=0, task=None, dropout=0.0, init_seed=None, draw_curves=save_curves, **kw):
    torch.manual_seed(seed if init_seed is None else init_seed)
    model = Toy(dropout=dropout)
    cfg = TrainConfig(**{"epochs": 3, "batch_size": 16, "lr": 0.02, "seed": seed, "device": "cpu", "log_every": 1, **kw})
    return Trainer(model, task or ToyTask(), cfg, tmp_path, meta={"model": {"name": "toy", "config": None}}, progress=False,
                   draw_curves=draw_curves)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_param_groups_exclude_norms_biases_and_embeddings():
    m = Toy()
    skip = no_decay_names(m)
    assert skip == {"pos_embed", "fc1.bias", "norm.weight", "norm.bias", "emb.weight", "head.bias"}
    groups = param_groups(m, 0.1)
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert {id(p) for p in groups[0]["params"]} == {id(m.fc1.weight), id(m.head.weight)}


def test_param_groups_give_a_prefix_its_own_learning_rate():
    """lr_scales (DETR's backbone at a tenth of the rate): the prefix's parameters move to groups of
    their own with lr set, keeping the decay split; the schedule scales every group's own rate."""
    m = Toy()
    groups = param_groups(m, 0.1, lr=1e-3, lr_scales={"fc1.": 0.1})
    by_name = {g["name"]: g for g in groups}
    assert list(by_name) == ["decay", "no_decay", "fc1.:decay", "fc1.:no_decay"]
    assert [id(p) for p in by_name["fc1.:decay"]["params"]] == [id(m.fc1.weight)]
    assert [id(p) for p in by_name["fc1.:no_decay"]["params"]] == [id(m.fc1.bias)]
    assert by_name["fc1.:decay"]["lr"] == pytest.approx(1e-4) and "lr" not in by_name["decay"]
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    opt = torch.optim.AdamW(groups, lr=1e-3)
    sched = Scheduler(opt, make_schedule("linear", 10, 0, 0.0))
    for _ in range(5):
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 5e-4, 5e-5, 5e-5])
    with pytest.raises(ConfigError, match="base lr"):
        param_groups(m, 0.1, lr_scales={"fc1.": 0.1})


def test_schedules():
    f = make_schedule("cosine", total=100, warmup=10, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.55) and f(100) == pytest.approx(0.1)
    assert all(f(i) >= f(i + 1) for i in range(10, 100))
    lin = make_schedule("linear", 100, 0, 0.0)
    assert lin(50) == pytest.approx(0.5)
    inv = make_schedule("inverse-sqrt", 100, 16)
    assert inv(15) == pytest.approx(1.0) and inv(63) == pytest.approx(0.5)
    # the paper's formula: d^-0.5 * min(n^-0.5, n * w^-1.5)
    d, w = 512, 4000
    for n in (1, 100, 4000, 10000):
        assert noam_peak_lr(d, w) * inv_paper(n - 1, w) == pytest.approx(d**-0.5 * min(n**-0.5, n * w**-1.5))
    with pytest.raises(ConfigError):
        make_schedule("nope", 1, 1)


def inv_paper(step, w):
    return make_schedule("inverse-sqrt", 0, w)(step)


def test_sharding_keeps_global_batches():
    plan = Plan(epoch=2, batch_size=8, accum_steps=2, seed=3)
    one = [torch.cat(m) for m in sharded_batches(37, plan)]
    two = [sharded_batches(37, Plan(epoch=2, batch_size=8, accum_steps=2, seed=3, rank=r, world_size=2)) for r in range(2)]
    for full, parts in zip(one, zip(*two)):
        assert sorted(full.tolist()) == sorted(torch.cat([torch.cat(p) for p in parts]).tolist())
    assert len(one) == 4  # 37 // 8, the tail is dropped
    later = list(sharded_batches(37, Plan(epoch=2, batch_size=8, accum_steps=2, seed=3, start_step=3)))
    assert torch.equal(torch.cat(later[0]), one[3])
    shards = [torch.cat(list(eval_shard(37, Plan(rank=r, world_size=2), 5))) for r in range(2)]
    assert sorted(torch.cat(shards).tolist()) == list(range(37))


def test_the_engine_draws_nothing_itself_and_calls_back_when_curves_are_due(tmp_path):
    """The curves are drawn by whoever the engine calls (the run layer passes viz's save_curves):
    without one no curves.png; quick epochs are drawn once, after the last."""
    calls = []
    make(tmp_path / "a", epochs=3, draw_curves=lambda t: calls.append(t.epoch)).fit()
    assert calls == [3] and not (tmp_path / "a" / "curves.png").exists()
    make(tmp_path / "b", epochs=2, draw_curves=None).fit()
    assert (tmp_path / "b" / "metrics.json").is_file() and not (tmp_path / "b" / "curves.png").exists()


def test_trains_and_writes_run_files(tmp_path):
    tr = make(tmp_path, epochs=4)
    s = tr.fit()
    assert s["metrics"]["val_acc"] > 0.6
    assert tr.history.steps[-1]["loss"] < tr.history.steps[0]["loss"]
    for f in ("last.json", "best.json", "metrics.csv", "metrics.json", "curves.png"):
        assert (tmp_path / f).is_file(), f
    rec = read_record(tmp_path, "last")
    assert rec["epoch"] == 4 and rec["step"] == 24 and rec["labels"] == ["a", "b", "c"]
    assert rec["train_config"]["lr"] == 0.02 and rec["metrics"]["val_acc"] == s["metrics"]["val_acc"]
    assert len(list((tmp_path / "checkpoints").iterdir())) <= 2  # old checkpoints collected
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert len(m["epochs"]) == 4 and len(m["steps"]) == 24
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0].startswith("epoch,step,lr,train_loss")
    load_into(Toy(), load_weights(tmp_path, rec), "x")


def test_accumulation_matches_one_big_batch():
    a, b = make(accum_steps=1), make(accum_steps=4)
    a.fit()
    b.fit()
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(v, w, atol=1e-6), k


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_mid_epoch_is_exact(tmp_path, ema):
    ref = make(None, dropout=0.3, ema_decay=ema, epochs=3)
    ref.fit()
    first = make(tmp_path, dropout=0.3, ema_decay=ema, epochs=3, save_every=2)
    task = first.task
    # stop after step 9 (mid-epoch 2): replay what a killed process would leave behind
    orig = first._optimizer_step

    def stop_after(micro):
        if first.step == 9:
            raise KeyboardInterrupt
        return orig(micro)

    first._optimizer_step = stop_after
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    assert read_record(tmp_path, "last")["step"] == 8
    resumed = make(tmp_path, dropout=0.3, ema_decay=ema, epochs=3, save_every=2, task=task, init_seed=123)
    resumed.fit(resume_from=tmp_path)
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    if ema:
        for k, v in ref.ema.module.state_dict().items():
            assert torch.equal(v, resumed.ema.module.state_dict()[k]), k
    assert [r["loss"] for r in ref.history.steps] == [r["loss"] for r in resumed.history.steps]
    assert ref.history.epochs[-1]["val_loss"] == resumed.history.epochs[-1]["val_loss"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    tr = make(tmp_path, epochs=3, task=ToyTask(nan_at=9))  # 6 steps per epoch: NaN in epoch 2
    with pytest.raises(TrainingDiverged, match=r"nan at step 9 \(epoch 2, batch 3\).*step 6"):
        tr.fit()
    rec = read_record(tmp_path, "last")
    assert rec["step"] == 6
    sd = load_weights(tmp_path, rec)
    assert all(torch.isfinite(v).all() for v in sd.values())


def test_nan_before_any_checkpoint_says_so(tmp_path):
    with pytest.raises(TrainingDiverged, match="no checkpoint had been saved yet"):
        make(tmp_path, task=ToyTask(nan_at=2)).fit()


def test_bad_configs():
    with pytest.raises(ConfigError, match="divisible"):
        make(batch_size=10, accum_steps=3)
    with pytest.raises(ConfigError, match="larger than the training set"):
        make(batch_size=1000)


def _fail_on_nth_replace(monkeypatch, n):
    real = os.replace
    count = {"i": 0}

    def replace(a, b):
        count["i"] += 1
        if count["i"] == n:
            raise OSError("simulated crash")
        return real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    return count


def test_crash_during_checkpoint_write_keeps_previous_loadable(tmp_path, monkeypatch):
    """A failure at each file rename of a save (weights, state, record, last.json) leaves
    last.json naming a complete, loadable checkpoint: the old one or the new one."""
    tr = make(tmp_path, epochs=1)
    tr.fit()
    before = read_record(tmp_path, "last")
    for n in range(1, 8):
        count = _fail_on_nth_replace(monkeypatch, n)
        tr.step += 1
        try:
            tr.save(best=True)
        except OSError:
            pass
        monkeypatch.undo()
        rec = read_record(tmp_path, "last")
        assert rec["step"] in (before["step"], tr.step)
        load_into(Toy(), load_weights(tmp_path, rec), "x")
        ckpt.load_state(tmp_path, rec)
        before = rec
        assert count["i"] >= 1
    assert not list(tmp_path.rglob("*.tmp")), "temporary files left behind"


def test_read_record_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        read_record(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not an attnlab run directory"):
        read_record(tmp_path)
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no best checkpoint yet"):
        read_record(tmp_path, "best")
    (tmp_path / "last.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        read_record(tmp_path, "last")


def test_load_into_explains_mismatch():
    with pytest.raises(CheckpointError, match="different architecture.*wrong shapes"):
        load_into(Toy(d=8), Toy(d=6).state_dict(), "other.safetensors")


def test_rng_state_roundtrip_weights_only(tmp_path):
    import io
    import random

    import numpy as np

    ckpt.seed_everything(5)
    s = ckpt.rng_state()
    buf = io.BytesIO()
    torch.save(s, buf)
    a = (torch.rand(3), np.random.rand(), random.random())
    ckpt.set_rng_state(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert not math.isnan(a[1])


def test_bf16_autocast_trains():
    tr = make(precision="bf16", epochs=2)
    s = tr.fit()
    assert math.isfinite(s["metrics"]["val_loss"]) and tr.history.steps[-1]["loss"] < tr.history.steps[0]["loss"]


def test_device_names():
    from attnlab.train.distributed import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="not a device name"):
        resolve_device("tpu")


def test_max_minutes_cuts_the_epoch_short_then_evaluates_and_saves(tmp_path, monkeypatch):
    tr = make(tmp_path, epochs=5, max_minutes=1.0)
    clock = {"now": 0.0}
    # Each training step "takes" 20 s of wall clock: the 3rd step of the first epoch crosses 60 s.
    monkeypatch.setattr(tr, "session_seconds", lambda: clock["now"])
    step = tr._optimizer_step

    def slow_step(micro):
        clock["now"] += 20.0 + 1e-3
        return step(micro)

    monkeypatch.setattr(tr, "_optimizer_step", slow_step)
    s = tr.fit()
    assert s["stopped_by_time"] and s["steps"] == 3  # 96 / 16 = 6 steps per epoch; cut after 3
    assert len(tr.history.epochs) == 1 and "val_acc" in tr.history.epochs[0] and tr.history.epochs[0]["cut"] == 1
    rec = read_record(tmp_path, "last")
    assert rec["step"] == 3 and rec["epoch"] == 0 and rec["step_in_epoch"] == 3  # the cut epoch is not finished


def test_a_run_cut_by_max_minutes_resumes_mid_epoch_like_an_uncut_run(tmp_path, monkeypatch):
    """Cut by --max-minutes in the middle of epoch 1, then resumed (with a new limit): the weights,
    the step count and the epoch rows equal those of the run that was never cut (dropout on, so
    the random state must be carried too)."""
    uncut = make(tmp_path / "uncut", epochs=2, dropout=0.3)
    uncut.fit()
    cut = make(tmp_path / "cut", epochs=2, dropout=0.3, max_minutes=1.0)
    clock = {"now": 0.0}
    monkeypatch.setattr(cut, "session_seconds", lambda: clock["now"])
    step = cut._optimizer_step

    def slow_step(micro):
        clock["now"] += 25.0
        return step(micro)

    monkeypatch.setattr(cut, "_optimizer_step", slow_step)
    assert cut.fit()["steps"] == 3
    resumed = make(tmp_path / "cut", epochs=2, dropout=0.3, init_seed=99)  # other init: resume must overwrite it
    s = resumed.fit(resume_from=tmp_path / "cut")
    assert s["steps"] == 12 and not s["stopped_by_time"]
    for k, v in weights(uncut.model).items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    full = [r for r in resumed.history.epochs if not r.get("cut")]
    assert [r["epoch"] for r in full] == [1, 2]
    assert full[-1]["val_acc"] == uncut.history.epochs[-1]["val_acc"]


def test_no_time_limit_by_default():
    s = make(epochs=2).fit()
    assert not s["stopped_by_time"] and s["steps"] == 12


def test_sgd_optimizer():
    tr = make(epochs=4, optimizer="sgd", lr=0.5, momentum=0.9, weight_decay=0.0)
    assert isinstance(tr.optimizer, torch.optim.SGD) and tr.optimizer.defaults["momentum"] == 0.9
    assert tr.fit()["metrics"]["val_acc"] > 0.6
    with pytest.raises(ConfigError, match="unknown optimizer"):
        make(optimizer="adagrad")
