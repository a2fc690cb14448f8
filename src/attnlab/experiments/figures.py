"""An experiment's figures: lines (curves, sweeps) and bars (one per arm, each seed a dot), labelled
as the numbers they show."""

from __future__ import annotations

from collections.abc import Sequence

from attnlab.experiments.numbers import mean_std


def line_figure(series: dict, xlabel: str, ylabel: str, title: str, *, logx: bool = False, logy: bool = False,
                hlines: dict | None = None, subtitle: str | None = None):
    """One line per label: ``series[label] = (xs, ys)`` or ``(xs, ys, errs)`` (error bars:
    the seed spread); ``hlines[label] = y`` draws reference levels (a paper's figure)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    for label, s in series.items():
        xs, ys = s[0], s[1]
        errs = s[2] if len(s) > 2 else None
        if errs is not None and any(e > 0 for e in errs):
            ax.errorbar(xs, ys, yerr=errs, marker="o", ms=4, lw=1.8, capsize=3, label=label)
        else:
            ax.plot(xs, ys, marker="o", ms=4, lw=1.8, label=label)
    for label, y in (hlines or {}).items():
        ax.axhline(y, color="#888888", ls="--", lw=1)
        ax.text(ax.get_xlim()[0], y, f" {label}", va="bottom", fontsize=8, color="#555555")
    if logx:
        ax.set_xscale("log", base=2)
        xs = sorted({float(x) for s in series.values() for x in s[0]})
        if len(xs) <= 12:  # tick the values measured (a rate of 1e-3, not 2^-10)
            ax.set_xticks(xs, [f"{x:g}" for x in xs])
            ax.minorticks_off()
    if logy and any(y > 0 for s in series.values() for y in s[1]):  # a log axis needs a positive value to show
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    _titles(ax, ylabel, title, subtitle)
    ax.grid(alpha=0.3, which="both")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def bar_figure(labels: Sequence[str], values: Sequence[Sequence[float]], ylabel: str, title: str,
               subtitle: str | None = None):
    """One bar per arm: the mean over seeds, the sample std as the error bar, each seed a dot."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(5.0, 1.1 * len(labels) + 2), 4.3))
    ax = fig.subplots()
    stats = [mean_std(v) for v in values]
    xs = range(len(labels))
    ax.bar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], capsize=4, color="#1f77b4", alpha=0.75)
    for x, v in zip(xs, values):
        ax.plot([x] * len(v), v, "k.", ms=5)
    ax.set_xticks(list(xs), list(labels), rotation=20 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    _titles(ax, ylabel, title, subtitle)
    ax.grid(alpha=0.3, axis="y")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def _titles(ax, ylabel: str, title: str, subtitle: str | None) -> None:
    """The y label, the title and, above the axes in small grey, the subtitle (what the arms share)."""
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11, pad=16 if subtitle else 6)
    if subtitle:
        ax.text(0.0, 1.01, subtitle, transform=ax.transAxes, fontsize=8, color="#555555", va="bottom")
