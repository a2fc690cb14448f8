"""Reading a run directory (the checkpoint format ``attnlab train`` writes, see
:mod:`attnlab.train.checkpoint` for the writing)::

    run.json                      what was asked: task, model, configs, command line
    last.json  best.json          the two checkpoint records
    checkpoints/step-0000120/     one saved state: model.safetensors (+ train_model.safetensors,
                                  trainer.pt), checkpoint.json

A record (``last.json``, ``best.json``, ``checkpoint.json``) is JSON with the model config, the
training config, the task's own description, the metrics and ``"path"``: the checkpoint directory
it describes.

The one tag rule (:func:`locate`): ``RUN_DIR`` means its best checkpoint (its last while it has
no best), ``RUN_DIR:best`` / ``RUN_DIR:last`` choose, and so does ``which`` — one of the two, not
both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from attnlab.errors import CheckpointError, ConfigError
from attnlab.io import is_temporary

FORMAT = "attnlab-run/1"
RECORDS = ("last", "best")


def has_record(run_dir: str | Path, tag: str = "last") -> bool:
    return (Path(run_dir) / f"{tag}.json").is_file()


def is_run_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / "run.json").is_file() or any(has_record(path, t) for t in RECORDS)


def killed_before_run_json(path: str | Path) -> bool:
    """Whether ``path`` holds nothing but temporary files of killed writes: what a run killed
    during its very first write (``run.json``) leaves. It is a run directory to overwrite."""
    entries = list(Path(path).iterdir())
    return bool(entries) and all(is_temporary(e) for e in entries)


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
        if not is_run_dir(run_dir):
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


def locate(spec: str | os.PathLike, which: str | None = None, default: str = "best") -> tuple[Path, str] | None:
    """(run directory, record to read: "best" or "last") that ``spec`` names, or None when it
    names no run directory. ``spec`` is ``RUN_DIR`` or ``RUN_DIR:best|last``; ``which`` chooses
    for a spec without a tag (giving both is refused); with neither, ``default``. A run without a
    best checkpoint yet (evaluated before any best) is read at its last."""
    text = str(spec)
    head, sep, tag = text.rpartition(":")
    if sep and tag in RECORDS and is_run_dir(head):
        text = head
    else:
        tag = None
    if not is_run_dir(text):
        return None
    if which is not None and which not in RECORDS:
        raise ConfigError(f"unknown checkpoint {which!r}; choose best or last")
    if tag is not None and which is not None:
        raise ConfigError(f"{spec} names its checkpoint and so does --which {which}: give one of the two "
                          f"({text}:{which}, or {text} --which {which})")
    chosen = tag or which or default
    return Path(text), (chosen if has_record(text, chosen) else "last")


def weights_file(spec: str | os.PathLike, which: str | None = None) -> Path | None:
    """The weights file a run directory (:func:`locate`) stands for, or None if ``spec`` is no run."""
    found = locate(spec, which)
    if found is None:
        return None
    run_dir, tag = found
    rec = read_record(run_dir, tag)
    return run_dir / rec["path"] / rec["weights"]
