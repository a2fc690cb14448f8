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


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_detection_scores_the_whole_validation_set(tmp_path):
    """COCO AP is not a sum over batches: each process detects on its half of the validation
    canvases, and the detections are gathered before scoring. The AP a two-process run records
    equals a one-process `attnlab eval` of its weights (rank 0's half alone would score differently)."""
    run = tmp_path / "detr"
    tiny = ["d_model=32", "num_heads=4", "num_encoder_layers=1", "num_decoder_layers=1", "d_ff=64", "num_queries=4",
            "cnn_widths=[16,32]", "img_size=32"]
    args = ["train", "detect", "--model", "detr_digits", *[x for a in tiny for x in ("--model-arg", a)], "--train-size", "512",
            "--val-size", "24", "--batch-size", "16", "--epochs", "4", "--min-scale", "10", "--max-scale", "16",
            "--pretrain-backbone", "300", "--threads", "1", "--quiet", "--run-dir", str(run)]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "attnlab", *args], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads((run / "metrics.json").read_text())["epochs"][-1]
    r = subprocess.run([sys.executable, "-m", "attnlab", "eval", str(run), "--which", "last", "--json",
                        "--out", str(tmp_path / "ev")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout)
    assert res["images"] == 24
    assert row["val_AP"] > 0  # something to compare: the detector finds some digits after backbone pretraining
    for k in ("AP", "AP50", "AP75"):
        assert res[k] == pytest.approx(row[f"val_{k}"], abs=1e-6), k
