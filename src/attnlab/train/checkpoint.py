"""Writing a run directory's checkpoints, for the engine (reading one, and the one strict loader,
live in :mod:`attnlab.checkpoints.rundir` and :mod:`attnlab.checkpoints.load`).

A run directory holds::

    run.json                      what was asked: task, model, configs, command line
    last.json  best.json          the two checkpoint records (see below)
    checkpoints/step-0000120/     one saved state
        model.safetensors         the weights to evaluate with (the EMA weights when EMA is on)
        train_model.safetensors   the raw training weights (only with EMA)
        trainer.pt                optimizer, scheduler, RNG states, progress (torch.save,
                                  loadable with weights_only=True)
        checkpoint.json           the record below, for this directory alone
    metrics.csv  metrics.json  curves.png

A record (``last.json``, ``best.json``, ``checkpoint.json``) is JSON with the model config,
the training config, the task's own description (label names, normalisation...), the metrics
and ``"path"``: the checkpoint directory it describes.

Atomicity: every file is written to a temporary file, fsynced and renamed into place; a
checkpoint directory is complete before ``last.json`` is renamed to point at it, and only
then are directories no record points to removed. Killing the process at any moment leaves
``last.json`` pointing at a complete checkpoint: the previous one or the new one.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from attnlab.checkpoints.rundir import (
    FORMAT,
    RECORDS,
    is_run_dir,
    killed_before_run_json,
    read_record,
)
from attnlab.errors import CheckpointError
from attnlab.io import atomic_write_bytes, atomic_write_json, load_torch_file, save_safetensors_atomic


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def save(run_dir: str | Path, *, step: int, record: dict, weights: dict, state: dict | None = None,
         train_weights: dict | None = None, tags: tuple[str, ...] = ("last",), metadata: dict | None = None) -> Path:
    """Write one checkpoint and point the records in ``tags`` ("last", "best") at it. ``metadata``
    goes into the weights' safetensors header (the model's name and config: see
    :func:`attnlab.checkpoints.ours.metadata_for`), so the weights file alone rebuilds the model."""
    run_dir = Path(run_dir)
    rel = f"checkpoints/{step_dir_name(step)}"
    d = run_dir / rel
    d.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, **record, "step": step, "path": rel, "weights": "model.safetensors"}
    meta = {**(metadata or {}), "format": FORMAT}
    save_safetensors_atomic(weights, d / "model.safetensors", metadata=meta)
    if train_weights is not None:
        save_safetensors_atomic(train_weights, d / "train_model.safetensors", metadata=meta)
        record["train_weights"] = "train_model.safetensors"
    if state is not None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(d / "trainer.pt", buf.getvalue())
        record["state"] = "trainer.pt"
    atomic_write_json(d / "checkpoint.json", record)
    for tag in tags:  # the commit point: the record now names a complete directory
        atomic_write_json(run_dir / f"{tag}.json", record)
    collect_garbage(run_dir)
    return d


def collect_garbage(run_dir: str | Path) -> None:
    """Remove checkpoint directories no record points to."""
    run_dir = Path(run_dir)
    keep = set()
    for tag in RECORDS:
        try:
            keep.add(Path(read_record(run_dir, tag, check=False)["path"]).name)
        except CheckpointError:
            pass
    root = run_dir / "checkpoints"
    if not root.is_dir() or not keep:
        return
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("step-") and d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)
    # temporary files of a process killed in the middle of a write (one writer per run)
    for tmp in [*run_dir.glob(".*.tmp"), *root.glob("step-*/.*.tmp")]:
        with contextlib.suppress(OSError):
            tmp.unlink()


def load_state(run_dir: str | Path, record: dict) -> dict:
    if "state" not in record:
        raise CheckpointError(f"the checkpoint {record['path']} has no trainer state (not resumable)")
    return load_torch_file(Path(run_dir) / record["path"] / record["state"], "trainer state")


# --- random number generators ------------------------------------------------------------------
# Stored as tensors and plain Python values so that torch.load(weights_only=True) reads them.

def rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- run directories ---------------------------------------------------------------------------

def check_new_run_dir(path: str | Path, overwrite: bool) -> None:
    """Refuse an existing directory unless ``overwrite`` (and then only a run directory, one a run
    killed in its first write left (:func:`killed_before_run_json`), or an empty one: never an
    arbitrary folder). Nothing is changed here."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise CheckpointError(f"{path} exists and is not a directory")
    if not overwrite:
        raise CheckpointError(f"run directory {path} already exists; pass --overwrite to replace it, "
                              f"--resume {path} to continue it, or choose another --run-dir")
    if any(path.iterdir()) and not is_run_dir(path) and not killed_before_run_json(path):
        raise CheckpointError(f"{path} exists and is not an attnlab run directory; refusing to overwrite it")


def empty_run_dir(path: str | Path) -> None:
    """Remove what an old run left in ``path`` (checked by :func:`check_new_run_dir`); the
    directory itself stays, so the :class:`RunLock` held on it stays valid. ``run.json`` goes
    last: killed on the way, the directory is still a run directory, to overwrite again."""
    for child in sorted(Path(path).iterdir(), key=lambda c: c.name == "run.json"):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


class RunLock:
    """An exclusive lock on a run directory for the life of one training (``flock`` on the
    directory itself: nothing to clean up, and the system releases it if the process dies)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir)
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        self.fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise CheckpointError(f"{self.path} is in use by another attnlab training; wait for it to end "
                                  "or choose another --run-dir") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None
