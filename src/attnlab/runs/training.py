"""Training a run, written once for ``attnlab train``, the experiments and the benchmarks::

    train_config (the task's defaults, a resumed run's options, those given) -> start (options,
    processes, threads) -> seed -> the task's data -> the model, through the registry -> the run
    directory (created, locked) -> Trainer.fit (resuming if asked)

and the one check of a resumed run's options (:func:`saved_options`, :func:`resume_conflicts`).

The record of a run (``run.json`` and every checkpoint record) holds ``task`` (and
``task_module`` for a task declared outside :mod:`attnlab.tasks`), ``model`` (registry
``name``, ``config``, ``parameters``), ``model_args`` (the ``--model-arg`` overrides),
``data_config``, ``train_config`` and what the task adds (labels, tokenizers...). The weights
carry the model's name and config too, so ``attnlab.load_model`` rebuilds a run's model alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attnlab.checkpoints.rundir import FORMAT, read_record
from attnlab.errors import CheckpointError, ConfigError
from attnlab.io import atomic_write_json, check_output_dir
from attnlab.tasks.spec import TaskSpec
from attnlab.train import checkpoint as ckpt
from attnlab.train import distributed as dist
from attnlab.train.config import TrainConfig, to_dict
from attnlab.train.engine import Trainer
from attnlab.viz.curves import save_curves

#: Options that may differ when a run is resumed (they do not change what is computed).
RESUMABLE = frozenset({"device", "threads", "epochs", "max_minutes", "eval_every", "save_every", "log_every",
                       "eval_batch_size"})


def train_config(spec: TaskSpec, given: dict, saved: dict | None = None) -> TrainConfig:
    """The TrainConfig of a run: the task's defaults, then a resumed run's ``saved`` options, then
    those ``given``; a warm-up given in epochs replaces a default one in steps; then the task's
    own finishing (:attr:`TaskSpec.finalize_train_config`)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {**spec.train_defaults, **(saved or {})}
    if given.get("warmup_epochs") is not None and given.get("warmup_steps") is None:
        values.pop("warmup_steps", None)
    values.update(given)
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})
    return spec.finalize_train_config(cfg) if spec.finalize_train_config is not None else cfg


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
        raise ConfigError(f"model {name!r} is a {type(model).__name__}; 'attnlab train {spec.name}' trains {kinds} models "
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


def task_record(spec: TaskSpec) -> dict:
    """What names the task in a run's records: its name, and where it is declared when that is
    outside :mod:`attnlab.tasks` (:func:`attnlab.tasks.register_spec`)."""
    return {"task": spec.name, **({"task_module": spec.module} if spec.module else {})}


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
    meta = {**task_record(spec), **model_record(net, name, model_args), "data_config": to_dict(data_config),
            "title": data.title}
    trainer = Trainer(net, task, cfg, run_dir, meta=meta, log=log if info.is_main else None, progress=progress,
                      draw_curves=save_curves)
    dist.barrier()
    with contextlib.ExitStack() as stack:
        if run_dir is not None and info.is_main:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CheckpointError(f"cannot create the run directory {run_dir}: {e.strerror}") from None
            stack.enter_context(ckpt.RunLock(run_dir))  # one training per run directory
        if run_dir is not None and not resume:
            open_run_dir(run_dir, overwrite=overwrite, cfg=cfg, info=info, record=meta, command=command,
                         write_files=data.write_files)
        if info.is_main and log is not None:
            log(f"{'resuming' if resume else 'training'} {data.title}: {meta['model']['parameters']:,} parameters; "
                f"{data.describe()}; {cfg.epochs} epochs x {trainer.steps_per_epoch} steps"
                + (f" on {info.world_size} processes" if info.distributed else "") + f", device {trainer.device}")
        summary = trainer.fit(resume_from=run_dir if resume else None)
    summary.update(title=data.title, parameters=meta["model"]["parameters"], model=net)
    return summary


def open_run_dir(run_dir: Path, *, overwrite: bool, cfg: TrainConfig, info: dist.DistInfo, record: dict,
                 command: list[str] | None = None, write_files: Callable[[Path], None] | None = None) -> None:
    """Empty the (new or ``overwrite``-n, checked and locked) run directory, then write
    ``run.json`` first (it marks the directory as a run, so a run killed before its first
    checkpoint can still be overwritten) and the task's files. Only rank 0 writes. A
    collective: call on every rank."""
    if info.is_main:
        ckpt.empty_run_dir(run_dir)
        atomic_write_json(run_dir / "run.json", {"format": FORMAT, **record, "train_config": to_dict(cfg),
                                                 "world_size": info.world_size, "command": command,
                                                 "torch": torch.__version__})
        if write_files is not None:
            write_files(run_dir)
    dist.barrier()


# --- resuming ----------------------------------------------------------------------------------------

def saved_options(spec: TaskSpec, run_dir: str | Path) -> dict:
    """The options a run of task ``spec`` was started with: ``{"data": ..., "train": ...,
    "model": name, "model_args": ...}``; a run of another task is refused."""
    rec = read_record(run_dir, "last")
    if rec.get("task") != spec.name:
        raise CheckpointError(f"{run_dir} is a {rec.get('task')!r} run, not a {spec.name!r} run")
    if rec.get("task_module", spec.module) != spec.module:
        raise CheckpointError(f"{run_dir} is a run of the {spec.name!r} task declared in {rec['task_module']}, "
                              f"not of {spec.module or 'attnlab.tasks'}'s; continue it with what trained it")
    return {"data": rec.get("data_config") or {}, "train": rec.get("train_config") or {},
            "model": rec["model"]["name"], "model_args": rec.get("model_args") or {}}


def changed_options(given: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    """The options given for a resumed run that differ from the run's own (and may not)."""
    def norm(v):
        return list(v) if isinstance(v, (tuple, list)) else v

    return sorted(k for k, v in given.items() if k not in RESUMABLE and k in saved and norm(v) != norm(saved[k]))


def resume_conflicts(saved: dict, *, data: dict, train: dict, model: str | None = None,
                     model_args: dict | None = None) -> list[str]:
    """The names of the options that would change what a resumed run computes: those of
    ``data`` and ``train`` that differ from the ``saved`` ones (:func:`saved_options`), the model
    name (None: not given) and the model arguments (None: not given; else all of them)."""
    changed = changed_options(data, saved["data"]) + changed_options(train, saved["train"])
    if model is not None and model != saved["model"]:
        changed.append("model")
    if model_args is not None and model_args != saved["model_args"]:
        changed.append("model_arg")
    return changed


def argv() -> list[str]:
    return ["attnlab"] + sys.argv[1:]
