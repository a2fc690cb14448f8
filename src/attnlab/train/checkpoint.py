"""The run directory's checkpoint format.

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
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attnlab.errors import CheckpointError
from attnlab.io import atomic_write_bytes, atomic_write_json, is_temporary, load_torch_file, save_safetensors_atomic

FORMAT = "attnlab-run/1"
RECORDS = ("last", "best")


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


def has_record(run_dir: str | Path, tag: str = "last") -> bool:
    return (Path(run_dir) / f"{tag}.json").is_file()


def read_record(run_dir: str | Path, tag: str = "best", check: bool = True) -> dict:
    """The record ``tag`` ("last" or "best") of a run directory, checked to name existing files."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a directory; pass a run directory written by 'attnlab train'")
    p = run_dir / f"{tag}.json"
    if not p.is_file():
        if killed_before_run_json(run_dir):
            raise CheckpointError(f"{run_dir} holds only the temporary file of a run killed before it wrote run.json: "
                                  "nothing to resume or load; train it again with --overwrite")
        if not (run_dir / "run.json").is_file() and not any(has_record(run_dir, t) for t in RECORDS):
            raise CheckpointError(f"{run_dir} is not an attnlab run directory (no run.json, last.json or best.json)")
        raise CheckpointError(f"{run_dir} has no {tag} checkpoint yet ({p.name} is missing): "
                              "the run stopped before its first save; nothing to resume or load, train it again "
                              "with --overwrite")
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{p} is not readable JSON ({e})") from e
    if not isinstance(rec, dict) or rec.get("format") != FORMAT or "path" not in rec:
        raise CheckpointError(f"{p} is not an attnlab checkpoint record (format {FORMAT})")
    if check:
        d = run_dir / rec["path"]
        for key in ("weights", "state", "train_weights"):
            if key in rec and not (d / rec[key]).is_file():
                raise CheckpointError(f"{p} names {d / rec[key]}, which is missing")
    return rec


def load_weights(run_dir: str | Path, record: dict, key: str = "weights") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(run_dir) / record["path"] / record[key]
    try:
        return load_file(str(path))
    except (OSError, SafetensorError, ValueError) as e:
        raise CheckpointError(f"cannot read weights {path}: {e}") from e


def load_state(run_dir: str | Path, record: dict) -> dict:
    if "state" not in record:
        raise CheckpointError(f"the checkpoint {record['path']} has no trainer state (not resumable)")
    return load_torch_file(Path(run_dir) / record["path"] / record["state"], "trainer state")


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state_dict)`` that explains a mismatch in one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es), e.g. {shapes[0]}")
        if missing:
            parts.append(f"{len(missing)} missing tensor(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
        raise CheckpointError(f"{source} is from a different architecture than the model: {'; '.join(parts)}")
    model.load_state_dict(state_dict)


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

def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / "run.json").is_file() or any(has_record(path, t) for t in RECORDS)


def killed_before_run_json(path: str | Path) -> bool:
    """Whether ``path`` holds nothing but temporary files of killed writes: what a run killed
    during its very first write (``run.json``) leaves. It is a run directory to overwrite."""
    entries = list(Path(path).iterdir())
    return bool(entries) and all(is_temporary(e) for e in entries)


def run_weights(path: str | os.PathLike) -> Path | None:
    """The weights file a run directory stands for, or None if ``path`` is not a run.

    ``RUN_DIR`` means its best checkpoint (its last if it has no best yet); ``RUN_DIR:last`` and
    ``RUN_DIR:best`` choose."""
    text = str(path)
    which = None
    for tag in RECORDS:
        if text.endswith(":" + tag) and is_run_dir(text[: -len(tag) - 1]):
            text, which = text[: -len(tag) - 1], tag
    if not is_run_dir(text):
        return None
    which = which or ("best" if has_record(text, "best") else "last")
    rec = read_record(text, which)
    return Path(text) / rec["path"] / rec["weights"]


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
