"""Pictures of training: learning curves (:func:`plot_curves`; :func:`save_curves` draws a
trainer's into its run directory) and the confusion matrix of a classifier (:func:`plot_confusion`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from attnlab.train.engine import Trainer
from attnlab.train.metrics import History
from attnlab.viz.common import COLORS, save_figure


def _smooth(y: np.ndarray, n: int) -> np.ndarray:
    if len(y) < 3 or n <= 1:
        return y
    n = min(n, len(y))
    k = np.ones(n) / n
    pad = np.concatenate([np.full(n - 1, y[0]), y])
    return np.convolve(pad, k, mode="valid")


def plot_curves(history: History, metric: str = "acc", metric_label: str = "accuracy", percent: bool = True,
                title: str | None = None, higher_is_better: bool = True):
    """Learning curves: loss (per step, smoothed, and per epoch) and ``metric`` per epoch for the
    training and validation sets, and the learning rate."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.8))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.25, 1.25, 0.8]})
    ax_loss, ax_m, ax_lr = axes
    st = history.steps
    ep = history.epochs
    if st:
        x = np.array([r["epoch_float"] for r in st])
        y = np.array([r["loss"] for r in st], dtype=float)
        ax_loss.plot(x, y, color=COLORS["train"], alpha=0.25, lw=0.8, label="train (per step)")
        ax_loss.plot(x, _smooth(y, max(1, len(y) // 30)), color=COLORS["smooth"], lw=1.6, label="train (smoothed)")
        ax_lr.plot(x, [r["lr"] for r in st], color=COLORS["lr"], lw=1.6)
    if ep:
        xe = [r["epoch"] for r in ep]
        if any("val_loss" in r for r in ep):
            ax_loss.plot(xe, [r.get("val_loss", math.nan) for r in ep], "o-", color=COLORS["val"], ms=3.5, lw=1.6,
                         label="validation")
        scale = 100.0 if percent else 1.0
        for split in ("train", "val"):
            k = f"{split}_{metric}"
            if any(k in r for r in ep):
                ax_m.plot(xe, [scale * r.get(k, math.nan) for r in ep], "o-", ms=3.5, lw=1.6, color=COLORS[split],
                          label="train" if split == "train" else "validation")
        k = f"val_{metric}"
        vals = [(r["epoch"], r[k]) for r in ep if k in r]
        if vals:
            be, bv = (max if higher_is_better else min)(vals, key=lambda t: t[1])
            ax_m.annotate(f"best {scale * bv:.1f}{'%' if percent else ''}", (be, scale * bv), textcoords="offset points",
                          xytext=(-10, -16), ha="right", fontsize=9, color=COLORS["val"])
    ax_loss.set(title="loss", xlabel="epoch")
    if st and np.nanmax([r["loss"] for r in st]) / max(1e-8, np.nanmin([r["loss"] for r in st])) > 20:
        ax_loss.set_yscale("log")
    ax_m.set(title=metric_label + (" (%)" if percent else ""), xlabel="epoch")
    ax_lr.set(title="learning rate", xlabel="epoch")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    for ax in (ax_loss, ax_m):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(frameon=False, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def save_curves(trainer: Trainer) -> Path:
    """Draw ``trainer``'s learning curves (its task's main metric, its run's title) into
    ``RUN_DIR/curves.png``; the engine calls this after the epochs that are due to be drawn."""
    task = trainer.task
    fig = plot_curves(trainer.history, metric=task.main_metric, metric_label=getattr(task, "metric_label", task.main_metric),
                      percent=getattr(task, "metric_percent", True), title=trainer.meta.get("title"),
                      higher_is_better=getattr(task, "higher_is_better", True))
    return save_figure(fig, trainer.run_dir / "curves.png", dpi=130)


def plot_confusion(cm, labels: list[str], title: str = "confusion matrix", normalize: bool = True):
    """A confusion matrix as a heat map: rows true class, columns predicted; cells show counts,
    colours the fraction of the true class."""
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    n = len(labels)
    frac = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    size = min(12.0, max(4.5, 0.48 * n + 2.0))
    fig = Figure(figsize=(size + 0.9, size))
    ax = fig.subplots()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    if n <= 30:
        thresh = 0.55 * (frac.max() if frac.size else 1)
        fs = 9 if n <= 12 else 7
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=fs,
                            color="white" if frac[i, j] > thresh else "#333333")
        long = max(map(len, labels)) > 2
        ax.set_xticks(range(n), labels, rotation=45 if long else 0, ha="right" if long else "center")
        ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{title}  (accuracy {100 * acc:.2f}%)", fontsize=11)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label("fraction of the true class" if normalize else "count")
    fig.tight_layout()
    return fig
