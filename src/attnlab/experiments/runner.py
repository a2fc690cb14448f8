"""Running an experiment: claim its output folder, run it, and write what it measured there:
results.json (every number, the rule and its decision, the software and load), table.md,
verdict.md, the figures and a README.md that puts them together."""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from attnlab.errors import ConfigError
from attnlab.experiments.base import BUDGETS, Context, Experiment, Result
from attnlab.experiments.outputs import claim_output_dir
from attnlab.experiments.rules import decide, rule_markdown, rule_record, verdict_text
from attnlab.io import atomic_write_json


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(no rows)\n"
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]

    def cell(v) -> str:
        if isinstance(v, float):
            return "nan" if not math.isfinite(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|") if v is not None else ""

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def software() -> dict:
    import numpy

    import attnlab

    return {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__,
            "attnlab": attnlab.__version__, "platform": platform.platform(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - platform without it
        return None


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def write_outputs(ctx: Context, res: Result, started: float, load_start, command: list[str] | None) -> dict:
    """Write results.json, table.md, verdict.md, the figures and README.md into ``ctx.out``; with a
    rule, the rule goes above the table and its decision (computed from ``res.data``) into
    results.json (``rule``, ``decision``) and before the reading in verdict.md."""
    from attnlab.io import atomic_write_text
    from attnlab.viz.common import save_figure

    exp, out = ctx.exp, ctx.out
    out.mkdir(parents=True, exist_ok=True)
    ctx.wrote("results.json", "table.md", "verdict.md", "README.md", *(f"{stem}.png" for stem in res.figures))
    figures = {}
    for stem, fig in res.figures.items():
        figures[stem] = save_figure(fig, out / f"{stem}.png").name
    table = markdown_table(res.table)
    decision = decide(exp.rule, _jsonable(res.data)) if exp.rule else None
    verdict = verdict_text(exp.rule, decision, res.verdict.strip())
    if res.left_out:
        verdict += "\n\nLeft out: " + "; ".join(res.left_out) + "."
    wall = time.time() - started
    results = {
        "experiment": exp.name, "question": exp.question, "anchor": exp.anchor, "budget": ctx.budget,
        "seeds": ctx.seeds, "threads": ctx.threads, "command": command, "results_dir": str(out), "config": res.config,
        "table": res.table, "table_markdown": table,
        "data": res.data, "arms": ctx.arms, "references": ctx.references, "left_out": res.left_out, "figures": figures,
        "verdict": verdict,
        "rule": rule_record(exp.rule, exp.history), "decision": decision and decision.to_json(),
        "train_seconds": round(sum(a.get("elapsed") or 0.0 for a in [*ctx.arms.values(), *ctx.references.values()]),
                               1),  # every run, all sessions
        "software": software(), "load_average": {"start": load_start, "end": load_average()},
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "wall_seconds": round(wall, 2),
    }
    atomic_write_json(out / "results.json", _jsonable(results))
    atomic_write_text(out / "table.md", table)
    atomic_write_text(out / "verdict.md", verdict + "\n")
    readme = [f"# {exp.name}: {exp.question}", "", f"Budget **{ctx.budget}**, seeds {ctx.seeds}, "
              f"{ctx.threads} thread(s), {wall:.0f} s wall time, load average at start {load_start}.", "",
              f"Command: `{' '.join(command or [])}`", "", f"Anchor: {exp.anchor}", ""]
    readme += [rule_markdown(exp.rule), ""] if exp.rule else []
    readme += [table]
    readme += [f"![{stem}]({name})\n" for stem, name in figures.items()]
    readme += ["## Verdict", "", verdict, ""]
    atomic_write_text(out / "README.md", "\n".join(readme))
    return results


def run_experiment(exp: Experiment, budget: str = "quick", seeds: int | None = None, threads: int = 1,
                   out: str | Path | None = None, log: Callable[[str], None] | None = None, progress: bool = True,
                   command: list[str] | None = None, overwrite: bool = False, jobs: int = 1) -> dict:
    """Run ``exp`` at ``budget`` with seeds 0..seeds-1 (default: the experiment's), write its
    outputs into ``out`` (default ``experiments/<name>/<budget>``) and return results.json's content.
    ``out`` must be new, empty or written by ``exp`` (:func:`claim_output_dir`); ``overwrite``
    removes what ``exp`` wrote there first, so every arm is trained afresh. ``jobs``: arms trained
    at once, each with ``threads`` threads (the results do not depend on it)."""
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; choose quick or full")
    n = exp.seeds[budget] if seeds is None else seeds
    if n < 1:
        raise ConfigError(f"--seeds {n}: give at least one seed")
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: give at least one")
    if out is not None and str(out) == "":
        raise ConfigError("-o '' names no directory; give the output directory (new, empty, or one this "
                          "experiment wrote)")
    out = Path(out) if out is not None else Path("experiments") / exp.name / budget
    claim_output_dir(out, exp.name, overwrite)
    if threads:
        torch.set_num_threads(threads)
    started, load_start = time.time(), load_average()
    ctx = Context(exp, budget, range(n), out, threads, log, progress, jobs)
    try:
        res = exp.run(ctx)
        ctx.finish()
    except BaseException:
        ctx.close(abort=True)  # no worker trains on after an error or Ctrl-C
        raise
    return write_outputs(ctx, res, started, load_start, command)


