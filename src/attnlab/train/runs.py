"""The run: the one sequence every task goes through, written once.

Training (``attnlab train TASK``)::

    start (options, processes, threads) -> seed -> the task's data -> the model, through the
    registry -> the run directory (created, locked) -> Trainer.fit (resuming if asked)

Using a run (``eval``, ``predict``, ``generate``, ``translate``, ``viz``, ``load_model``)::

    load(run_dir) -> LoadedRun(model, record, extras such as tokenizers)

A task is a :class:`TaskSpec` (in ``attnlab/tasks/<task>.py``): its data options, how to load
its data (which decides some model fields: classes, vocabulary sizes...), how to make the
engine's :class:`~attnlab.train.engine.Task`, and what it can do with a trained run. Everything
else — the registry, the run directory, resuming, the record, loading — lives here.

The record of a run (``run.json`` and every checkpoint record) holds ``task``, ``model``
(registry ``name``, ``config``, ``parameters``), ``model_args`` (the ``--model-arg`` overrides),
``data_config``, ``train_config`` and what the task adds (labels, tokenizers...). The weights
carry the model's name and config too, so ``attnlab.load_model`` rebuilds a run's model alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from attnlab.errors import CheckpointError, ConfigError
from attnlab.io import atomic_write, atomic_write_json
from attnlab.train import checkpoint as ckpt
from attnlab.train import distributed as dist
from attnlab.train.config import TrainConfig, to_dict
from attnlab.train.engine import Task, Trainer

#: Options that may differ when a run is resumed (they do not change what is computed).
RESUMABLE = frozenset({"device", "threads", "epochs", "max_minutes", "eval_every", "save_every", "log_every",
                       "eval_batch_size"})


class TaskData(Protocol):
    """What a task's data hands to the run."""

    title: str  # "vit_digits on digits", shown in logs, plots and reports
    model_fields: dict  # model config fields the data decides (num_classes, vocab_size, ...)

    def describe(self) -> str:
        """One line for the log: sizes of the splits, vocabulary..."""
        ...

    def write_files(self, run_dir: Path) -> None:
        """Files the run needs besides weights (tokenizers); called once, into a new run."""
        ...


@dataclass(frozen=True)
class TaskSpec:
    """A task, as the run layer sees it. ``load_data(data_config, model_config, run_dir, progress,
    model_name=...)`` reads the data (``run_dir`` is the run being resumed, whose tokenizers must be reused, or
    None); ``make_task(data, model, train_config)`` makes the engine's Task."""

    name: str
    help: str
    data_config: type
    load_data: Callable[..., TaskData]
    make_task: Callable[[Any, nn.Module, TrainConfig], Task]
    model_kinds: tuple[type, ...]  # the model classes the task trains (a registry name must build one)
    default_model: str | None = None
    train_defaults: dict = field(default_factory=dict)  # TrainConfig values that differ for this task
    finalize_train_config: Callable[[TrainConfig], TrainConfig] | None = None
    load_extras: Callable[[Path, dict], dict] | None = None  # tokenizers etc. of a trained run
    eval_config: type | None = None  # options of `attnlab eval` for this task
    evaluate: Callable[..., tuple[dict, dict]] | None = None  # (run, eval config, progress) -> (results, files)
    predict: Callable[..., list[dict]] | None = None  # (run, inputs, **options) -> predictions


# --- training ----------------------------------------------------------------------------------------

def start(cfg: TrainConfig) -> dist.DistInfo:
    """Check the options, join the process group (under torchrun) and set the CPU threads."""
    cfg.validate()
    info = dist.init(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return info


def build_model(spec: TaskSpec, name: str, model_args: dict, data_fields: dict) -> nn.Module:
    """The registry's model ``name`` with the fields the data decides and the user's overrides
    (a conflict between the two is refused), checked to be a model the task trains."""
    from attnlab.models.registry import create_model

    clash = {k: (v, data_fields[k]) for k, v in model_args.items() if k in data_fields and v != data_fields[k]}
    if clash:
        k, (mine, theirs) = next(iter(clash.items()))
        raise ConfigError(f"--model-arg {k}={mine} but the data gives {k}={theirs}; leave {k} to the data")
    names = {f.name for f in dataclasses.fields(probe(spec, name, {}))}
    fields = {k: v for k, v in data_fields.items() if k in names}
    return check_kind(spec, name, create_model(name, **{**fields, **model_args}))


def check_kind(spec: TaskSpec, name: str, model: nn.Module) -> nn.Module:
    if not isinstance(model, spec.model_kinds):
        kinds = " or ".join(k.__name__ for k in spec.model_kinds)
        raise ConfigError(f"model {name!r} is a {type(model).__name__}; 'attnlab train {spec.name}' trains a {kinds} "
                          "(see 'attnlab models')")
    return model


def probe(spec: TaskSpec, name: str, model_args: dict):
    """The config of the model ``name`` would have (built on the meta device: no weights),
    checked to be a model the task trains."""
    from attnlab.models.registry import probe_model

    return check_kind(spec, name, probe_model(name, **model_args)).cfg


def model_record(model: nn.Module, name: str, model_args: dict) -> dict:
    from attnlab.models.registry import config_dict, count_parameters

    return {"model": {"name": name, "config": config_dict(model), "parameters": count_parameters(model)},
            "model_args": dict(model_args)}


def train(spec: TaskSpec, data_config: Any, cfg: TrainConfig, run_dir: str | Path | None, *, model: str | None = None,
          model_args: dict | None = None, resume: bool = False, overwrite: bool = False,
          log: Callable[[str], None] | None = print, progress: bool = True, command: list[str] | None = None) -> dict:
    """Train a model of task ``spec`` into ``run_dir`` (None: nothing is written). Returns the
    engine's summary plus ``title``, ``parameters`` and ``model``."""
    name = model or spec.default_model
    if not name:
        raise ConfigError(f"--model is required for 'attnlab train {spec.name}'; 'attnlab models' lists the names")
    model_args = dict(model_args or {})
    info = start(cfg)
    run_dir = None if run_dir is None else Path(run_dir)
    if resume and run_dir is None:
        raise ConfigError("resuming needs the run directory")
    if run_dir is not None and not resume:
        ckpt.check_new_run_dir(run_dir, overwrite)  # every rank checks before anything is created
    if run_dir is not None:
        check_output_dir(run_dir)
    # Everything that can fail on bad options or data comes before the run directory is touched.
    data = spec.load_data(data_config, probe(spec, name, model_args), run_dir if resume else None,
                          progress and info.is_main, model_name=name)
    ckpt.seed_everything(cfg.seed)
    net = build_model(spec, name, model_args, data.model_fields)
    task = spec.make_task(data, net, cfg)
    meta = {**model_record(net, name, model_args), "data_config": to_dict(data_config), "title": data.title}
    trainer = Trainer(net, task, cfg, run_dir, meta=meta, log=log if info.is_main else None, progress=progress)
    dist.barrier()
    with contextlib.ExitStack() as stack:
        if run_dir is not None and info.is_main:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CheckpointError(f"cannot create the run directory {run_dir}: {e.strerror}") from None
            stack.enter_context(ckpt.RunLock(run_dir))  # one training per run directory
        if run_dir is not None and not resume:
            open_run_dir(run_dir, overwrite=overwrite, task=spec.name, cfg=cfg, info=info, record=meta, command=command,
                         write_files=data.write_files)
        if info.is_main and log is not None:
            log(f"{'resuming' if resume else 'training'} {data.title}: {meta['model']['parameters']:,} parameters; "
                f"{data.describe()}; {cfg.epochs} epochs x {trainer.steps_per_epoch} steps"
                + (f" on {info.world_size} processes" if info.distributed else "") + f", device {trainer.device}")
        summary = trainer.fit(resume_from=run_dir if resume else None)
    summary.update(title=data.title, parameters=meta["model"]["parameters"], model=net)
    return summary


def open_run_dir(run_dir: Path, *, overwrite: bool, task: str, cfg: TrainConfig, info: dist.DistInfo,
                 record: dict, command: list[str] | None = None,
                 write_files: Callable[[Path], None] | None = None) -> None:
    """Empty the (new or ``overwrite``-n, checked and locked) run directory, then write
    ``run.json`` first (it marks the directory as a run, so a run killed before its first
    checkpoint can still be overwritten) and the task's files. Only rank 0 writes. A
    collective: call on every rank."""
    if info.is_main:
        ckpt.empty_run_dir(run_dir)
        atomic_write_json(run_dir / "run.json", {"format": ckpt.FORMAT, "task": task, **record,
                                                 "train_config": to_dict(cfg), "world_size": info.world_size,
                                                 "command": command, "torch": torch.__version__})
        if write_files is not None:
            write_files(run_dir)
    dist.barrier()


def changed_options(given: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """The options given for a resumed run that differ from the run's own (and may not)."""
    def norm(v):
        return list(v) if isinstance(v, (tuple, list)) else v

    return sorted(k for k, v in given.items() if k not in RESUMABLE and k in saved and norm(v) != norm(saved[k]))


def resume_base(spec: TaskSpec, run_dir: str | Path) -> dict:
    """The options a run was started with: ``{"data": ..., "train": ..., "model": name, "model_args": ...}``."""
    rec = ckpt.read_record(run_dir, "last")
    if rec.get("task") != spec.name:
        raise CheckpointError(f"{run_dir} is a {rec.get('task')!r} run, not a {spec.name!r} run")
    return {"data": rec.get("data_config") or {}, "train": rec.get("train_config") or {},
            "model": rec["model"]["name"], "model_args": rec.get("model_args") or {}}


# --- using a trained run -------------------------------------------------------------------------------

@dataclass
class LoadedRun:
    """A trained run: its model (eval mode), the checkpoint record, and the task's extras."""

    run_dir: Path
    which: str  # the checkpoint used: "best" or "last"
    record: dict
    model: nn.Module
    spec: TaskSpec
    extras: dict = field(default_factory=dict)
    int8: bool = False  # int8 was asked for (attnlab.export.int8)
    int8_choice: str = ""  # one line: which int8 backend was chosen on this CPU, and why

    @property
    def name(self) -> str:
        return self.record["model"]["name"]

    @property
    def int8_backend(self) -> str | None:
        """What the Linear layers run: "torchao", "fbgemm", or None (fp32)."""
        from attnlab.export.int8 import int8_backend

        return int8_backend(self.model) if self.int8 else None


def which_checkpoint(run_dir: str | Path, which: str = "best") -> str:
    """``which`` if the run has that record, else "last" (a run evaluated before any best)."""
    if which not in ckpt.RECORDS:
        raise ConfigError(f"unknown checkpoint {which!r}; choose best or last")
    return which if ckpt.has_record(run_dir, which) else "last"


def task_of(run_dir: str | Path) -> TaskSpec:
    from attnlab.tasks import get_spec

    rec = ckpt.read_record(run_dir, "last" if ckpt.has_record(run_dir, "last") else "best")
    return get_spec(rec.get("task", "?"))


def load(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu", int8: bool = False,
         compile: bool = False) -> LoadedRun:
    """Rebuild a run's model through the registry from its record, load its weights (``best``
    or ``last``; best falls back to last) and the task's extras. ``int8``: int8 Linear layers
    (:func:`attnlab.export.quantize_int8`, the backend fastest on this CPU, fp32 kept if none
    is faster: ``int8_backend``/``int8_choice`` say which); ``compile``: each Linear layer compiled
    (:func:`attnlab.export.compile_linears`)."""
    from attnlab.models.registry import create_model

    run_dir = Path(run_dir)
    spec = task_of(run_dir)
    which = which_checkpoint(run_dir, which)
    rec = ckpt.read_record(run_dir, which)
    m = rec.get("model")
    if not isinstance(m, dict) or "name" not in m or "config" not in m:
        raise CheckpointError(f"{run_dir}: the checkpoint record does not name its model and config "
                              "(a run from an older attnlab); retrain it")
    try:
        model = create_model(m["name"], **m["config"])
    except ConfigError as e:
        raise CheckpointError(f"{run_dir}: its model record does not build a model ({e})") from None
    ckpt.load_into(model, ckpt.load_weights(run_dir, rec), f"{run_dir}/{rec['path']}/{rec['weights']}")
    model = model.to(device).eval()
    choice = ""
    if int8:
        from attnlab.export.int8 import choose_backend, linear_width, quantize_int8

        chosen = choose_backend(linear_width(model))
        if chosen.backend is not None:
            model = quantize_int8(model, backend=chosen.backend)
        choice = chosen.describe()
    if compile:
        from attnlab.export.int8 import compile_linears

        model = compile_linears(model)
    extras = spec.load_extras(run_dir, rec) if spec.load_extras else {}
    return LoadedRun(run_dir, which, rec, model, spec, extras, int8, choice)


def evaluate(run: LoadedRun, eval_config: Any, out_dir: str | Path | None = None, progress: bool = True) -> dict:
    """The task's evaluation of a run; results.json and the task's files (pictures, texts such as
    the hypotheses of a translation) go to ``out_dir`` (default ``RUN_DIR/eval/<what was
    evaluated>``, with ``-int8`` for an int8 model), whose paths are added to the results."""
    from attnlab.viz.common import save_figure

    if run.spec.evaluate is None:
        raise ConfigError(f"'attnlab eval' does not support {run.spec.name!r} runs")
    results, files = run.spec.evaluate(run, eval_config, progress)
    slug = results.pop("slug", "default") + ("-int8" if run.int8 else "")  # int8 scores never replace fp32 ones
    out = Path(out_dir) if out_dir else run.run_dir / "eval" / slug
    check_output_dir(out)
    for name, content in files.items():  # a picture, or the text of a file such as hypotheses.txt
        if isinstance(content, str):
            atomic_write_text(out / name, content)
            results[name.replace(".", "_")] = str(out / name)
        else:
            results[f"{name}_png"] = str(save_figure(content, out / f"{name}.png"))
    results.update(int8=run.int8, int8_backend=run.int8_backend, results_json=str(out / "results.json"))
    atomic_write_json(out / "results.json", results)
    return results


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def check_output_dir(path: Path) -> None:
    """Refuse, before any work is written, an output directory that is a file or not writable."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} exists and is not a directory")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write into {probe}: permission denied; choose another output directory")


def argv() -> list[str]:
    return ["attnlab"] + sys.argv[1:]
