"""A run killed with SIGKILL in the middle of an epoch and resumed with --resume ends with the
same weights and the same loss curve as an uninterrupted run with the same seed; and killing
a run at arbitrary moments always leaves a loadable last checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from attnlab.checkpoints.rundir import load_weights, read_record
from attnlab.train import checkpoint as ckpt

# 1,438 digits / 128 = 11 steps per epoch; dropout on, so the RNG state must be restored too
ARGS = ["train", "image", "--model", "vit_digits", "--model-arg", "embed_dim=16", "--model-arg", "depth=1",
        "--model-arg", "num_heads=2", "--model-arg", "drop_rate=0.1", "--batch-size", "128", "--lr", "3e-3",
        "--epochs", "5", "--save-every", "4", "--log-every", "1", "--threads", "1", "--quiet", "--seed", "7"]


def attnlab(*args) -> list[str]:
    return [sys.executable, "-m", "attnlab", *map(str, args)]


def last_step(d: Path) -> int:
    try:
        return json.loads((d / "last.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


def final_weights(d: Path) -> dict[str, torch.Tensor]:
    rec = read_record(d, "last")
    return load_file(str(d / rec["path"] / rec["weights"]))


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    p = subprocess.Popen(attnlab(*ARGS, "--run-dir", run), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while last_step(run) < 12 and p.poll() is None and time.time() < deadline:  # step 12 = in epoch 2
        time.sleep(0.005)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = last_step(run)
    subprocess.run(attnlab(*ARGS, "--run-dir", ref), check=True, capture_output=True)
    assert 12 <= killed_at < 55  # the last save seen was mid-epoch 2 (step 12): the kill came after it
    r = subprocess.run(attnlab("train", "image", "--resume", run, "--quiet"), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = final_weights(ref), final_weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (ref, run))
    assert [s["loss"] for s in ma["steps"]] == [s["loss"] for s in mb["steps"]]
    assert [e["val_acc"] for e in ma["epochs"]] == [e["val_acc"] for e in mb["epochs"]]


def test_killing_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    run = tmp_path / "run"
    args = [a if a != "4" else "1" for a in ARGS]  # save at every step: kills land inside saves
    p = subprocess.Popen(attnlab(*args, "--run-dir", run), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = set()
    deadline = time.time() + 300
    for delay in (0.0, 0.017, 0.031):
        while last_step(run) < 0 and p.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        if p.poll() is not None:
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        rec = read_record(run, "last")
        load_weights(run, rec)
        ckpt.load_state(run, rec)
        seen.add(rec["step"])
        p = subprocess.Popen(attnlab("train", "image", "--resume", run, "--quiet"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    p.wait(timeout=300)
    assert p.returncode == 0, p.stderr.read().decode()
    assert seen and last_step(run) == 55
    assert not list(run.rglob("*.tmp")), "temporary files left after the final save"


def test_resume_refuses_a_run_without_checkpoint(tmp_path, capsys):
    from attnlab.cli.main import main

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run.json").write_text("{}")
    assert main(["train", "image", "--resume", str(tmp_path / "r")]) == 2
    assert "stopped before its first save" in capsys.readouterr().err


# Run as a process: train, and SIGKILL itself when it is about to rename its temporary file over NAME.
KILL_AT_RENAME = """
import os, signal, sys
from attnlab.cli.main import main

def replace(src, dst, _replace=os.replace):
    if os.path.basename(dst) == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGKILL)
    _replace(src, dst)

os.replace = replace
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("name", ["run.json", "model.safetensors"])
def test_a_run_killed_in_its_first_write_is_trained_again_with_overwrite(tmp_path, capsys, name):
    """Killed in its very first write (run.json: only a temporary file is left) or in its first
    checkpoint, a run has nothing to resume: --resume says so and how to start again, and
    --overwrite (even without run.json) does."""
    from attnlab.cli.main import main

    run, args = tmp_path / "run", [*ARGS, "--epochs", "1", "--save-every", "0"]
    p = subprocess.run([sys.executable, "-c", KILL_AT_RENAME, name, *args, "--run-dir", run], capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()
    assert list(run.rglob("*.tmp")) and not (run / "last.json").exists()
    assert main(["train", "image", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nothing to resume" in err and "--overwrite" in err
    assert main([*args, "--run-dir", str(run), "--overwrite"]) == 0
    assert last_step(run) == 11 and not list(run.rglob("*.tmp"))
