"""What every experiment shares: the budget and seeds, training an arm through the run layer,
the data files, and the outputs.

An experiment is a function ``run(ctx: Context) -> Result``. Each training arm is a run of
:func:`attnlab.runs.train` in ``OUT/runs/<arm>-s<seed>``: an arm already finished is
reused, one cut short is resumed, so a killed experiment continues where it stopped.
:func:`run_experiment` writes, into ``OUT``:

- ``.attnlab-experiment.json`` (:data:`attnlab.experiments.outputs.MARKER`), first: the experiment's name, every file and run
  directory it writes there (listed before it is written) and the content hash of each arm's data
  files (compared by content, so a moved ``OUT`` or data directory still reuses its arms; an arm
  started from another arm's weights compares those weights);
- ``results.json``: every number (``data``), the table, the config, the seeds, the software
  versions, the load average, the wall time and the verdict;
- ``table.md`` (the Markdown table), ``verdict.md``, one PNG per figure, and ``README.md``
  putting them together.

``OUT`` must be new, empty or marked by the same experiment: a user's folder or another
experiment's is refused, and ``overwrite`` removes only what the marker lists
(:mod:`attnlab.experiments.outputs`). Arms must differ only in the experiment's declared
variables (:mod:`attnlab.experiments.arms`).

Beside this file: the numbers an experiment reports (:mod:`~attnlab.experiments.numbers`), its
figures (:mod:`~attnlab.experiments.figures`), running it and what it writes (:mod:`~attnlab.experiments.runner`),
its rule (:mod:`~attnlab.experiments.rules`) and the rates tuned per arm
(:mod:`~attnlab.experiments.tuning`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from attnlab.errors import ConfigError, DataError
from attnlab.experiments.outputs import MARKER, new_marker, read_marker
from attnlab.experiments.rules import Rule, RuleChange
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
    """One run of an experiment: budget, seeds, output directory, threads, logging, and how many
    arms train at once (``jobs`` > 1: each arm that trains does so in a worker process)."""

    def __init__(self, exp: Experiment, budget: str, seeds: Sequence[int], out: Path, threads: int = 1,
                 log: Callable[[str], None] | None = None, progress: bool = True, jobs: int = 1) -> None:
        self.exp, self.budget, self.seeds, self.out = exp, budget, list(seeds), Path(out)
        self.threads, self.progress, self.jobs = threads, progress, jobs
        self._pool = None  # the worker processes of jobs > 1, started at the first arm that trains
        self._log = log
        self.arms: dict[str, dict] = {}  # arm -> what train_arm returned (without the model)
        self.references: dict[str, dict] = {}  # the same for runs the arms are built from (a distillation teacher)
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
        """SHA-256 of each data option that names a file handed out by this context, and of the
        weights an ``init`` option starts from when it names a run (an arm built on another arm)."""
        from attnlab.checkpoints.rundir import weights_file

        files = {k: v for k, v in data.items() if isinstance(v, str) and v in self._data_files}
        if isinstance(data.get("init"), str) and (w := weights_file(data["init"])) is not None:
            files["init"] = str(w)
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
                  seed: int = 0, *, reference: bool = False) -> Mapping:
        """Train (or reuse, or resume) the run ``OUT/runs/<arm>-s<seed>`` through the run layer.
        Returns the engine's summary (``model`` is the trained model) plus ``run_dir``; an arm
        whose loss became NaN/inf returns ``{"diverged": message, "metrics": {}, "model": None}``.
        ``reference``: a run the arms are built from but not one of them (a distillation teacher):
        results.json lists it under ``references``, and the arms are not compared with it.
        With ``jobs`` > 1 an arm that trains is handed to a worker process and a
        :class:`PendingArm` is returned at once: reading it (but its ``run_dir``) waits for the arm,
        so the arms an experiment asks for before it reads one train side by side."""
        from attnlab.checkpoints.rundir import has_record, read_record
        from attnlab.runs import resume_conflicts, saved_options, train_config
        from attnlab.train.config import to_dict

        cfg = train_config(spec, {**train, "seed": seed, "threads": self.threads})
        model_args = dict(model_args or {})
        run = f"runs/{arm}-s{seed}"
        run_dir = self.out / run
        data = to_dict(data_config)
        self._wait_for_run(data.get("init"))  # an arm started from another arm's weights waits for them
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
        finished = False
        if resume:
            rec = read_record(run_dir, "last")
            finished = int(rec.get("epoch", 0)) >= cfg.epochs
            if cfg.max_minutes:
                # A time-bound arm's minutes are its whole budget: one stopped by them is reused as it
                # is (resuming would give it another --max-minutes), one interrupted before them is
                # trained again from the start (its minutes cannot be pieced together across sessions).
                if spent_time_budget(rec):
                    return self._keep_arm(run_dir, reused_arm(run_dir, rec), time.perf_counter() - t0, reference)
                self.log(f"{run_dir.name} was interrupted before its {cfg.max_minutes:g} minutes: training it again")
                resume = finished = False
        job = dict(data_config=data_config, cfg=cfg, run_dir=run_dir, model=model, model_args=model_args,
                   resume=resume)
        if self.jobs > 1 and not finished:
            return self._submit(run_dir, spec, job, reference)
        summary = train_one(spec, **job, log=self._log and self.log, progress=self.progress)
        return self._keep_arm(run_dir, summary, time.perf_counter() - t0, reference)

    def _keep_arm(self, run_dir: Path, summary: dict, seconds: float, reference: bool) -> dict:
        summary["run_dir"] = str(run_dir)
        summary["seconds_this_session"] = round(seconds, 2)
        (self.references if reference else self.arms)[run_dir.name] = {k: v for k, v in summary.items() if k != "model"}
        return summary

    # --- arms side by side (jobs > 1) -------------------------------------------------------------

    def _submit(self, run_dir: Path, spec, job: dict, reference: bool) -> PendingArm:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: a fresh interpreter per worker (forking a process whose PyTorch has started
            # its thread pools can hang the child)
            self._pool = ProcessPoolExecutor(self.jobs, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=end_with_parent, initargs=(os.getpid(),))
        self.log(f"{run_dir.name}: training in a worker process")
        future = self._pool.submit(train_in_worker, (spec.name, spec.module), job,
                                   f"[{self.exp.name} {run_dir.name}]" if self._log is not None else None)
        pending = PendingArm(self, run_dir, future, reference)
        (self.references if reference else self.arms)[run_dir.name] = pending
        return pending

    def _wait_for_run(self, spec) -> None:
        """Wait for the arm a run spec (``RUN_DIR`` or ``RUN_DIR:best|last``) names, if it is
        still training in a worker."""
        if isinstance(spec, str):
            path = Path(spec.rpartition(":")[0] if spec.endswith((":best", ":last")) else spec)
            for arms in (self.arms, self.references):
                arm = arms.get(path.name)
                if isinstance(arm, PendingArm) and Path(arm["run_dir"]).resolve() == path.resolve():
                    arm.result()

    def wait(self) -> None:
        """Wait for every arm still training in a worker (an error of one is raised here): what
        an experiment times afterwards is not measured beside its own training."""
        for arms in (self.arms, self.references):
            for arm in list(arms.values()):
                if isinstance(arm, PendingArm):
                    arm.result()

    def finish(self) -> None:
        """:meth:`wait`, then stop the workers."""
        try:
            self.wait()
        finally:
            self.close()

    def close(self, abort: bool = False) -> None:
        """Stop the worker processes, arms not started yet dropped; ``abort`` (an error or Ctrl-C
        in the experiment) ends the arms still training too, at once: each resumes from its last
        checkpoint when the experiment runs again."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            if abort:  # ProcessPoolExecutor has no public way to end running calls before Python 3.14
                for proc in list((getattr(pool, "_processes", None) or {}).values()):
                    proc.terminate()
            pool.shutdown(wait=True, cancel_futures=True)

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

    def test_results(self, summary: dict, eval_config) -> dict | None:
        """``attnlab eval`` of a trained arm's last checkpoint (its dataset's test split: an arm is
        chosen on validation and reported on test), computed once and kept in
        ``RUN_DIR/eval/test-last``; None for a diverged arm."""
        from attnlab.runs import evaluate
        from attnlab.runs import open as open_run

        if summary.get("diverged"):
            return None
        out = Path(summary["run_dir"]) / "eval" / "test-last"
        if not (out / "results.json").exists():
            evaluate(open_run(summary["run_dir"], which="last"), eval_config, out, progress=self.progress)
        return json.loads((out / "results.json").read_text())


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


def spent_time_budget(record: dict) -> bool:
    """Whether the checkpoint ``record`` of a time-bound run was written when its --max-minutes
    ran out. Records written before the engine kept ``stopped_by_time`` tell it by an epoch cut
    short or unfinished epochs (a killed time-bound arm of that age, with a mid-run checkpoint,
    reads as spent too: experiments do not save mid-epoch)."""
    if "stopped_by_time" in record:
        return bool(record["stopped_by_time"])
    cfg = record.get("train_config", {})
    return bool(cfg.get("max_minutes")) and (bool(record.get("metrics", {}).get("cut"))
                                             or int(record.get("epoch", 0)) < int(cfg.get("epochs", 0)))


def train_one(spec, data_config, cfg, run_dir: Path, model: str, model_args: dict, resume: bool,
              log: Callable[[str], None] | None = None, progress: bool = True) -> dict:
    """One arm through the run layer (:func:`attnlab.runs.train`); a loss that became NaN/inf is
    an outcome of the experiment (a model that crashes), not an error: its summary says
    ``diverged``."""
    from attnlab.runs import train as train_run
    from attnlab.train.engine import TrainingDiverged

    try:
        return train_run(spec, data_config, cfg, run_dir, model=model, model_args=model_args, resume=resume,
                         overwrite=run_dir.exists() and not resume, log=log, progress=progress)
    except TrainingDiverged as e:
        if log is not None:
            log(f"{run_dir.name}: {e}")
        return {"diverged": str(e), "metrics": {}, "best": None, "model": None}


def end_with_parent(parent: int, every: float = 1.0) -> None:
    """In a worker process of ``--jobs``: end it when the experiment's process ``parent`` is gone
    (killed, not interrupted), so no orphan trains on and holds its arm's run lock."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)  # checkpoints are written atomically: the arm resumes from its last one

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def train_in_worker(task: tuple[str, str], job: dict, prefix: str | None) -> dict:
    """:func:`train_one` in a worker process of ``--jobs``: the summary without the model (the
    parent reads it back from the run), plus the seconds it took. Log lines, prefixed, go to
    standard output; no progress bars (two would overwrite each other)."""
    from attnlab.tasks import get_spec

    t0 = time.perf_counter()

    def log(line: str) -> None:
        print(f"{prefix} {line}", flush=True)

    summary = train_one(get_spec(task[0], task[1] or None), **job, log=log if prefix else None, progress=False)
    summary.pop("model", None)
    summary["worker_seconds"] = time.perf_counter() - t0
    return summary


class PendingArm(Mapping):
    """An arm training in a worker process (``Context.jobs`` > 1): its ``run_dir`` is known at
    once; reading anything else waits for the arm and gives the summary
    :meth:`Context.train_arm` gives, the model read back from the run's last checkpoint."""

    def __init__(self, ctx: Context, run_dir: Path, future, reference: bool) -> None:
        self._ctx, self._run_dir, self._future, self._reference = ctx, run_dir, future, reference
        self._summary: dict | None = None

    def result(self) -> dict:
        if self._summary is None:
            summary = self._future.result()  # the worker's error, if any, is raised here
            if not summary.get("diverged"):
                from attnlab.runs import open as open_run

                summary["model"] = open_run(str(self._run_dir), "last").model
            self._summary = self._ctx._keep_arm(self._run_dir, summary, summary.pop("worker_seconds"), self._reference)
        return self._summary

    def __getitem__(self, key: str):
        return str(self._run_dir) if key == "run_dir" else self.result()[key]

    def __iter__(self):
        return iter(self.result())

    def __len__(self) -> int:
        return len(self.result())


def reused_arm(run_dir: Path, record: dict) -> dict:
    """The summary :func:`attnlab.runs.train` gives, for a finished run read back from its last
    checkpoint ``record``: the model (eval mode), its metrics, best, steps and time."""
    from attnlab.runs import open as open_run

    loaded = open_run(str(run_dir), "last")
    return {"best": record.get("best"), "metrics": record.get("metrics", {}), "elapsed": record.get("elapsed"),
            "steps": record.get("step"), "stopped_by_time": True, "reused": True,
            "title": record.get("title"), "parameters": record["model"].get("parameters"), "model": loaded.model}
