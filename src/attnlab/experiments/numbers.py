"""The numbers an experiment reports: over seeds (mean and sample standard deviation, whether two
arms are apart), fitted power laws, and a trained arm's validation values and curves (from its run
directory's metrics.json)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    vals = [float(v) for v in values]
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def pm(values: Sequence[float], digits: int = 2, scale: float = 1.0) -> str:
    """``"81.20 ± 0.40"`` over seeds (mean ± sample std), ``"81.20"`` for one seed."""
    m, s = mean_std([scale * v for v in values])
    if not math.isfinite(m):
        return "nan"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def apart(a: Sequence[float], b: Sequence[float]) -> bool | None:
    """Whether two arms differ by more than their seed spread (|Δmean| > 2 × the larger std),
    None with fewer than two seeds each (the spread is unknown)."""
    if len(a) < 2 or len(b) < 2:
        return None
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    return abs(ma - mb) > 2 * max(sa, sb, 1e-12)


def spread_note(n_seeds: int) -> str:
    return ("One seed only: the seed spread is unknown, so differences are indicative, not established"
            if n_seeds < 2 else f"{n_seeds} seeds; ± is the sample standard deviation over seeds")


def fit_power(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of y = a·x^p in log-log space: (p, a)."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    den = sum((x - mx) ** 2 for x in lx)
    p = sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / den if den else float("nan")
    return p, math.exp(my - p * mx)


def final_val(summary: dict, metric: str) -> float:
    """The last validation value of ``metric`` of a trained arm (nan if it was never evaluated)."""
    return float((summary.get("metrics") or {}).get(f"val_{metric}", float("nan")))


def val_curve(summary: dict, metric: str) -> tuple[list[float], list[float]]:
    """(optimizer steps, validation ``metric``) of a trained arm, from its metrics.json."""
    rows = _metrics(summary).get("epochs", [])
    pts = [(r["step"], r[f"val_{metric}"]) for r in rows if f"val_{metric}" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def train_curve(summary: dict) -> tuple[list[float], list[float]]:
    """(optimizer steps, training loss averaged over each logging interval) of a trained arm."""
    rows = _metrics(summary).get("steps", [])
    return [r["step"] for r in rows], [r["loss"] for r in rows]


def _metrics(summary: dict) -> dict:
    f = Path(summary["run_dir"]) / "metrics.json"
    return json.loads(f.read_text()) if f.exists() else {}
