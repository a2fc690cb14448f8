"""Data parallelism through PyTorch's own engine: ``torchrun --nproc_per_node=2 -m attnlab
train ...`` (DistributedDataParallel over gloo) with the same global batch follows the
1-process loss curve (dropout off: each process draws its own dropout masks)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch.distributed as dist

ARGS = ["train", "image", "--model", "vit_digits", "--model-arg", "embed_dim=16", "--model-arg", "depth=1",
        "--model-arg", "num_heads=2", "--model-arg", "drop_rate=0.0", "--batch-size", "64", "--accum-steps", "2",
        "--lr", "3e-3", "--epochs", "2",
        "--log-every", "1", "--threads", "1", "--quiet", "--seed", "3"]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_processes_match_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = subprocess.run([sys.executable, "-m", "attnlab", *ARGS, "--run-dir", str(one)], capture_output=True, text=True)
    assert r1.returncode == 0, r1.stderr
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                         "-m", "attnlab", *ARGS, "--run-dir", str(two)], capture_output=True, text=True)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert r2.stdout.count("run directory:") == 1  # only rank 0 reports (and writes)
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one, two))
    l1, l2 = [s["loss"] for s in m1["steps"]], [s["loss"] for s in m2["steps"]]
    assert len(l1) == len(l2) == 2 * (1438 // 64)
    assert max(abs(a - b) for a, b in zip(l1, l2)) < 1e-4
    v1, v2 = m1["epochs"][-1]["val_loss"], m2["epochs"][-1]["val_loss"]
    assert abs(v1 - v2) < 1e-4
    assert json.loads((two / "last.json").read_text())["world_size"] == 2
