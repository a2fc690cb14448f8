"""The run layer: above the tasks, the pictures and the exports, below the experiments and the
command line. A run directory is where one flow ends and the next begins.

- :func:`open` is the one front door to a model: a registered name (fresh weights), a run
  directory (``RUN_DIR``, ``RUN_DIR:last``, or ``which=``; not both) or a checkpoint file, as a
  :class:`~attnlab.tasks.spec.LoadedRun` (model, and for a run its record, task and extras);
- :func:`train` trains (or resumes) a run of a :class:`~attnlab.tasks.spec.TaskSpec`, its
  :class:`~attnlab.train.config.TrainConfig` assembled by :func:`train_config` and a resumed
  run's options checked by :func:`saved_options` / :func:`resume_conflicts`;
- :func:`evaluate` runs a task's evaluation of a run and writes its results.

A task is a :class:`~attnlab.tasks.spec.TaskSpec` (``attnlab/tasks/<task>.py``, or registered
where it is declared: :func:`attnlab.tasks.register_spec`). Everything else — the registry, the
run directory, resuming, the record, loading — lives here; reading a run directory and loading
weights live in :mod:`attnlab.checkpoints`.
"""

from attnlab.runs.training import (
    RESUMABLE,
    argv,
    build_model,
    changed_options,
    probe,
    resume_conflicts,
    saved_options,
    train,
    train_config,
)
from attnlab.runs.using import evaluate, open, task_of, validation_metrics
from attnlab.tasks.spec import LoadedRun, TaskData, TaskSpec

__all__ = [
    "RESUMABLE", "LoadedRun", "TaskData", "TaskSpec", "argv", "build_model", "changed_options", "evaluate", "open",
    "probe", "resume_conflicts", "saved_options", "task_of", "train", "train_config", "validation_metrics",
]
