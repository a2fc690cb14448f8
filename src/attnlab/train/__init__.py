"""The training engine, shared by every task: :class:`Trainer`, :class:`TrainConfig`, the
:class:`Task` protocol, AdamW groups and schedules, checkpoints, metrics, EMA and DDP helpers."""

from attnlab.train.config import TrainConfig
from attnlab.train.engine import Task, Trainer, TrainingDiverged
from attnlab.train.optim import SCHEDULES, build_optimizer, make_schedule, noam_peak_lr, param_groups, register_schedule
from attnlab.train.sampler import Plan, eval_shard, sharded_batches, steps_in_epoch

__all__ = [
    "TrainConfig", "Plan", "Task", "Trainer", "TrainingDiverged", "eval_shard", "sharded_batches", "steps_in_epoch",
    "SCHEDULES", "build_optimizer", "make_schedule", "noam_peak_lr", "param_groups", "register_schedule",
]
