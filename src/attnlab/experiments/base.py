"""What every experiment shares: the budget and seeds, training an arm through the run layer,
the data files, and the outputs.

An experiment is a function ``run(ctx: Context) -> Result``. Each training arm is a run of
:func:`attnlab.runs.train` in ``OUT/runs/<arm>-s<seed>``: an arm already finished is
reused, one cut short is resumed, so a killed experiment continues where it stopped.
:func:`run_experiment` writes, into ``OUT``:

- ``.attnlab-experiment.json`` (:data:`attnlab.experiments.outputs.MARKER`), first: the experiment's name, every file and run
  directory it writes there (listed before it is written) and the content hash of each arm's data
  files (compared by content, so a moved ``OUT`` or data directory still reuses its arms);
- ``results.json``: every number (``data``), the table, the config, the seeds, the software
  versions, the load average, the wall time and the verdict;
- ``table.md`` (the Markdown table), ``verdict.md``, one PNG per figure, and ``README.md``
  putting them together.

``OUT`` must be new, empty or marked by the same experiment: a user's folder or another
experiment's is refused, and ``overwrite`` removes only what the marker lists
(:mod:`attnlab.experiments.outputs`). Arms must differ only in the experiment's declared
variables (:mod:`attnlab.experiments.arms`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attnlab.errors import ConfigError, DataError
from attnlab.experiments.outputs import MARKER, claim_output_dir, new_marker, read_marker
from attnlab.experiments.rules import Rule, RuleChange, decide, rule_markdown, rule_record, verdict_text
from attnlab.io import atomic_write, atomic_write_json

BUDGETS = ("quick", "full")


@dataclass
class Result:
    """What an experiment measured: the table (one row per arm, seeds aggregated), the verdict
    against its anchor, the figures, every number (``data``) and the settings (``config``). For an
    experiment with a rule, ``verdict`` is the reading (numbers, no verdict words): the verdict is
    computed from the per-seed values the rule names in ``data`` (:mod:`attnlab.experiments.rules`)."""

    table: list[dict]
    verdict: str
    figures: dict = field(default_factory=dict)  # file stem -> matplotlib Figure
    data: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)  # arms of the question not run, and why


@dataclass(frozen=True)
class Experiment:
    name: str
    question: str
    anchor: str  # the paper's claim and figure the result is set against
    cost: dict  # {"quick": "...", "full": "..."}: what one run costs on a 2-core CPU
    seeds: dict  # default number of seeds per budget
    run: Callable[[Context], Result]
    rule: Rule | None = None  # stated before the run; decides the verdict (attnlab.experiments.rules)
    history: tuple[RuleChange, ...] = ()  # earlier rules, changed after a run, with their verdicts
    # what its arms study: the set-up fields (experiments.arms.arm_setup's dotted paths, e.g. "model.position",
    # "train.lr") in which two arms of one seed may differ; None: not declared yet
    variables: tuple[str, ...] | None = None


class Context:
    """One run of an experiment: budget, seeds, output directory, threads, logging."""

    def __init__(self, exp: Experiment, budget: str, seeds: Sequence[int], out: Path, threads: int = 1,
                 log: Callable[[str], None] | None = None, progress: bool = True) -> None:
        self.exp, self.budget, self.seeds, self.out = exp, budget, list(seeds), Path(out)
        self.threads, self.progress = threads, progress
        self._log = log
        self.arms: dict[str, dict] = {}  # arm -> what train_arm returned (without the model)
        self._marker = read_marker(self.out) or new_marker(exp.name)
        self._data_files: set[str] = set()  # the data files handed out: arms compare them by content
        self._sha256: dict[str, str] = {}

    @property
    def quick(self) -> bool:
        return self.budget == "quick"

    def pick(self, quick, full):
        """The setting for this budget."""
        return quick if self.quick else full

    def log(self, line: str) -> None:
        if self._log is not None:
            self._log(f"[{self.exp.name}] {line}")

    # --- the marker -------------------------------------------------------------------------------

    def wrote(self, *names: str) -> None:
        """List ``names`` (paths relative to ``out``) in the marker as written by this experiment;
        called before writing them, so ``overwrite`` finds everything a killed run left."""
        new = [n for n in names if n not in self._marker["wrote"]]
        if new:
            self._marker["wrote"] += new
            atomic_write_json(self.out / MARKER, self._marker)

    def _trained_on(self, run: str, hashes: dict[str, str]) -> None:
        """Record in the marker the run directory ``run`` and the content hashes of its data files."""
        if self._marker["data_sha256"].get(run) != hashes:
            self._marker["data_sha256"][run] = hashes
            atomic_write_json(self.out / MARKER, self._marker)
        self.wrote(run)

    def _data_hashes(self, data: dict) -> dict[str, str]:
        """SHA-256 of each data option that names a file handed out by this context."""
        files = {k: v for k, v in data.items() if isinstance(v, str) and v in self._data_files}
        for v in files.values():
            if v not in self._sha256:
                self._sha256[v] = file_sha256(v)
        return {k: self._sha256[v] for k, v in files.items()}

    # --- data -------------------------------------------------------------------------------------

    def data_file(self, *parts: str) -> Path:
        """A file of the shared data directory ($ATTNLAB_DATA), which must exist."""
        from attnlab.data.images import data_root

        p = data_root().joinpath(*parts).resolve()  # the runs' records name it from any working directory
        if not p.exists():
            raise DataError(f"experiment {self.exp.name} needs {p}; set ATTNLAB_DATA to the data directory "
                            "(see the README)")
        self._data_files.add(str(p))
        return p

    def derived_file(self, name: str, make: Callable[[], str]) -> Path:
        """``OUT/data/name``, written once from ``make()`` (a slice of a corpus, say)."""
        p = (self.out / "data" / name).resolve()
        if not p.exists():
            self.wrote(f"data/{name}")
            p.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(p, "w") as f:
                f.write(make())
        self._data_files.add(str(p))
        return p

    def text_slice(self, chars: int | None) -> tuple[Path, float]:
        """Tiny Shakespeare, or its first ``chars`` characters (None: all), and the validation
        fraction to use with it (the last 10%)."""
        from attnlab.data.text import read_text

        full = self.data_file("tinyshakespeare", "input.txt")
        if chars is None:
            return full, 0.1
        return self.derived_file(f"tinyshakespeare-{chars}.txt", lambda: read_text(full)[:chars]), 0.1

    def multi30k(self, train_pairs: int | None, valid_pairs: int | None) -> dict:
        """TranslateDataConfig fields for Multi30k De->En, or its first ``train_pairs`` /
        ``valid_pairs`` sentence pairs (None: all)."""
        from attnlab.data.parallel import read_lines

        out = {}
        for split, key, n in (("train", "", train_pairs), ("val", "valid_", valid_pairs)):
            for lang, side in (("de", "src"), ("en", "tgt")):
                f = self.data_file("multi30k", f"{split}.{lang}.gz")
                if n is not None:
                    f = self.derived_file(f"multi30k-{split}-{n}.{lang}",
                                          lambda f=f, n=n: "".join(s + "\n" for s in read_lines(f)[:n]))
                out[f"{key}{side}"] = str(f)
        return out

    def multi30k_test(self, pairs: int | None) -> dict:
        """TranslateEvalConfig fields (``src``, ``ref``) for Multi30k's test_2016_flickr De->En, or
        its first ``pairs`` sentence pairs (None: all 1,000): the split that chooses nothing."""
        from attnlab.data.parallel import read_lines

        out = {}
        for lang, key in (("de", "src"), ("en", "ref")):
            f = self.data_file("multi30k", f"test_2016_flickr.{lang}.gz")
            if pairs is not None:
                f = self.derived_file(f"multi30k-test-{pairs}.{lang}",
                                      lambda f=f, n=pairs: "".join(s + "\n" for s in read_lines(f)[:n]))
            out[key] = str(f)
        return out

    # --- training arms ----------------------------------------------------------------------------

    def train_arm(self, arm: str, spec, data_config, train: dict, model: str, model_args: dict | None = None,
                  seed: int = 0) -> dict:
        """Train (or reuse, or resume) the run ``OUT/runs/<arm>-s<seed>`` through the run layer.
        Returns the engine's summary (``model`` is the trained model) plus ``run_dir``; an arm
        whose loss became NaN/inf returns ``{"diverged": message, "metrics": {}, "model": None}``."""
        from attnlab.checkpoints.rundir import has_record
        from attnlab.runs import resume_conflicts, saved_options, train_config
        from attnlab.runs import train as train_run
        from attnlab.train.config import to_dict
        from attnlab.train.engine import TrainingDiverged

        cfg = train_config(spec, {**train, "seed": seed, "threads": self.threads})
        model_args = dict(model_args or {})
        run = f"runs/{arm}-s{seed}"
        run_dir = self.out / run
        data = to_dict(data_config)
        hashes = self._data_hashes(data)
        resume = has_record(run_dir, "last")
        if resume:
            saved = saved_options(spec, run_dir)
            changed = resume_conflicts(saved, data={}, train=to_dict(cfg), model=model, model_args=model_args)
            changed += changed_data(data, saved["data"], hashes, self._marker["data_sha256"].get(run, {}))
            if changed:
                raise ConfigError(f"{run_dir} was trained with other settings ({', '.join(changed)}); this budget or "
                                  "version of the experiment needs a fresh output directory: pass another -o, or "
                                  "--overwrite to replace what the experiment wrote there")
        self._trained_on(run, hashes)
        t0 = time.perf_counter()
        try:
            summary = train_run(spec, data_config, cfg, run_dir, model=model, model_args=model_args, resume=resume,
                                overwrite=run_dir.exists() and not resume, log=self._log and self.log,
                                progress=self.progress)
        except TrainingDiverged as e:  # an outcome of the experiment (a model that crashes), not an error
            self.log(f"{run_dir.name}: {e}")
            summary = {"diverged": str(e), "metrics": {}, "best": None, "model": None}
        summary["run_dir"] = str(run_dir)
        summary["seconds_this_session"] = round(time.perf_counter() - t0, 2)
        self.arms[run_dir.name] = {k: v for k, v in summary.items() if k != "model"}
        return summary

    def decode_limits(self) -> dict:
        """Target length limits (DecodeOptions fields) of the decoding done by an experiment."""
        return self.pick({"max_len_a": 0.5, "max_len_b": 2}, {})

    def translation_scores(self, summary: dict, tag: str | None = None, **decode) -> dict:
        """BLEU/chrF and decoding time of a translation arm on its validation set, or on
        ``decode["src"]``/``decode["ref"]`` (``attnlab eval`` of the run; ``decode`` =
        TranslateEvalConfig fields), computed once and kept in ``RUN_DIR/eval/<tag>``. At quick
        budget decoding stops after ``decode_limits()`` tokens (a barely trained model never ends
        its sentences)."""
        from attnlab.runs import evaluate
        from attnlab.runs import open as open_run
        from attnlab.tasks.translate import TranslateEvalConfig

        if summary.get("diverged"):
            return {"bleu": float("nan"), "chrf": float("nan")}
        ec = TranslateEvalConfig(**{**self.decode_limits(), **decode})
        out = Path(summary["run_dir"]) / "eval" / (tag or "-".join(f"{k}{v}" for k, v in sorted(decode.items())) or "default")
        if (out / "results.json").exists():
            return json.loads((out / "results.json").read_text())
        return evaluate(open_run(summary["run_dir"]), ec, out, progress=self.progress)


def test_results(summary: dict, eval_config, progress: bool = False) -> dict | None:
    """``attnlab eval`` of a trained arm's last checkpoint (its dataset's test split: an arm is
    chosen on validation and reported on test), computed once and kept in
    ``RUN_DIR/eval/test-last``; None for a diverged arm."""
    from attnlab.runs import evaluate
    from attnlab.runs import open as open_run

    if summary.get("diverged"):
        return None
    out = Path(summary["run_dir"]) / "eval" / "test-last"
    if not (out / "results.json").exists():
        evaluate(open_run(summary["run_dir"], which="last"), eval_config, out, progress=progress)
    return json.loads((out / "results.json").read_text())


def small_translation(ctx: Context, epochs: tuple[int, int]) -> tuple:
    """The translation experiments' shared set-up: Multi30k De->En with a joint BPE vocabulary
    (its first 400/40 pairs at quick budget), a 2+2-layer Transformer of width 128 (64 at quick
    budget) and ``epochs`` (quick, full) at lr 1e-3 with warm-up. Returns (TranslateDataConfig,
    the model's stack fields, TrainConfig fields)."""
    from attnlab.tasks.translate import TranslateDataConfig

    files = ctx.multi30k(ctx.pick(400, None), ctx.pick(40, None))
    dc = TranslateDataConfig(**files, bpe_vocab_size=ctx.pick(300, 4000), max_tokens=ctx.pick(1024, 4096))
    stacks = dict(d_model=ctx.pick(64, 128), num_heads=4, d_ff=ctx.pick(128, 256), dropout=ctx.pick(0.0, 0.1),
                  num_encoder_layers=2, num_decoder_layers=2)
    train = dict(epochs=ctx.pick(*epochs), lr=1e-3, warmup_steps=ctx.pick(20, 400), log_every=ctx.pick(5, 50))
    return dc, stacks, train


# --- numbers ----------------------------------------------------------------------------------------

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


# --- data files -------------------------------------------------------------------------------------

def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's content, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def changed_data(given: dict, saved: dict, hashes: dict[str, str], trained_on: dict[str, str]) -> list[str]:
    """The data options of an arm that differ from the ones it was trained with. A data file
    whose hash was recorded when the arm was trained is compared by content (moving the output
    folder or the data directory changes its path, not the data), any other option by value."""
    from attnlab.runs import changed_options

    by_content = hashes.keys() & trained_on.keys()
    changed = changed_options({k: v for k, v in given.items() if k not in by_content}, saved)
    return sorted(changed + [k for k in by_content if hashes[k] != trained_on[k]])


# --- outputs ----------------------------------------------------------------------------------------

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
        "data": res.data, "arms": ctx.arms, "left_out": res.left_out, "figures": figures, "verdict": verdict,
        "rule": rule_record(exp.rule, exp.history), "decision": decision and decision.to_json(),
        "train_seconds": round(sum(a.get("elapsed") or 0.0 for a in ctx.arms.values()), 1),  # all arms, all sessions
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
                   command: list[str] | None = None, overwrite: bool = False) -> dict:
    """Run ``exp`` at ``budget`` with seeds 0..seeds-1 (default: the experiment's), write its
    outputs into ``out`` (default ``experiments/<name>/<budget>``) and return results.json's content.
    ``out`` must be new, empty or written by ``exp`` (:func:`claim_output_dir`); ``overwrite``
    removes what ``exp`` wrote there first, so every arm is trained afresh."""
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; choose quick or full")
    n = exp.seeds[budget] if seeds is None else seeds
    if n < 1:
        raise ConfigError(f"--seeds {n}: give at least one seed")
    if out is not None and str(out) == "":
        raise ConfigError("-o '' names no directory; give the output directory (new, empty, or one this "
                          "experiment wrote)")
    out = Path(out) if out is not None else Path("experiments") / exp.name / budget
    claim_output_dir(out, exp.name, overwrite)
    if threads:
        torch.set_num_threads(threads)
    started, load_start = time.time(), load_average()
    ctx = Context(exp, budget, range(n), out, threads, log, progress)
    res = exp.run(ctx)
    return write_outputs(ctx, res, started, load_start, command)


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


# --- figures ----------------------------------------------------------------------------------------

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
    if logy and any(y > 0 for s in series.values() for y in s[1]):  # a log axis needs a positive value to show
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11, pad=16 if subtitle else 6)
    if subtitle:
        ax.text(0.0, 1.01, subtitle, transform=ax.transAxes, fontsize=8, color="#555555", va="bottom")
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
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11, pad=16 if subtitle else 6)
    if subtitle:
        ax.text(0.0, 1.01, subtitle, transform=ax.transAxes, fontsize=8, color="#555555", va="bottom")
    ax.grid(alpha=0.3, axis="y")
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig

