"""Metrics: the run's history (per logged step and per epoch) written as metrics.csv and
metrics.json, and classification metrics (top-k accuracy, confusion matrix). Their pictures
are in :mod:`attnlab.viz.curves`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from attnlab.io import atomic_write, atomic_write_json


class History:
    """Everything logged during a run: ``steps`` (step, epoch, loss, lr, ...) and ``epochs``
    (one row per evaluation: train_* and val_* metrics, timings)."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.epochs: list[dict] = []

    def state_dict(self) -> dict:
        return {"steps": list(self.steps), "epochs": list(self.epochs)}

    def load_state_dict(self, state: dict) -> None:
        self.steps = [dict(r) for r in state.get("steps", [])]
        self.epochs = [dict(r) for r in state.get("epochs", [])]

    def write(self, run_dir: str | Path, extra: dict | None = None) -> None:
        run_dir = Path(run_dir)
        atomic_write_json(run_dir / "metrics.json", {**(extra or {}), "epochs": self.epochs, "steps": self.steps})
        keys: list[str] = []
        for row in self.epochs:
            keys += [k for k in row if k not in keys]
        with atomic_write(run_dir / "metrics.csv", "w") as f:
            w = csv.DictWriter(f, fieldnames=keys, lineterminator="\n")
            w.writeheader()
            for row in self.epochs:
                w.writerow({k: _fmt(row.get(k, "")) for k in keys})


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


# --- classification ----------------------------------------------------------------------------

def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> dict[int, torch.Tensor]:
    """Number of samples whose target is among the k highest logits, for each k."""
    kmax = min(max(ks), logits.shape[-1])
    top = logits.topk(kmax, dim=-1).indices  # (B, kmax)
    hit = top == target[:, None]
    return {k: hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks}


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts, rows = true class, columns = predicted class."""
    idx = target.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(cm: torch.Tensor | np.ndarray) -> np.ndarray:
    cm = np.asarray(cm, dtype=float)
    return np.diag(cm) / np.maximum(cm.sum(1), 1)
