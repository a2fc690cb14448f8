"""What a task is, as the run layer (:mod:`attnlab.runs`) sees it: a :class:`TaskSpec`, the
:class:`TaskData` it loads, and the :class:`LoadedRun` its evaluation and predictions read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from attnlab.train.config import TrainConfig
from attnlab.train.engine import Task


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
    None); ``make_task(data, model, train_config)`` makes the engine's Task. ``module`` is where the
    spec is declared (set by :func:`attnlab.tasks.register_spec`): a run records it, so that every
    command re-opens the run with its own task."""

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
    module: str = ""


@dataclass
class LoadedRun:
    """A model opened by the run layer's front door (:func:`attnlab.runs.open`): in eval mode,
    with, for a trained run, its checkpoint record, task and extras (tokenizers, labels...).
    A registered name (``random_init``) or a checkpoint file has no run: ``run_dir`` is None."""

    model: nn.Module
    name: str  # the model's registry name (a checkpoint file: its stem)
    run_dir: Path | None = None
    which: str | None = None  # the checkpoint used: "best" or "last"
    record: dict = field(default_factory=dict)
    spec: TaskSpec | None = None
    extras: dict = field(default_factory=dict)
    random_init: bool = False  # a registered name, built with fresh weights
    int8: bool = False  # int8 was asked for (attnlab.export.int8)
    int8_choice: str = ""  # one line: which int8 backend was chosen on this CPU, and why
    compiled: bool = False  # each Linear layer compiled (attnlab.export.compile_linears)
