"""What every task does before its first step: join the processes, then open the run directory.

Kept in one place so that image classification, language models and translation refuse an
existing run directory, write ``run.json`` and synchronise their processes the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from attnlab.io import atomic_write_json
from attnlab.train import checkpoint as ckpt
from attnlab.train import distributed as dist
from attnlab.train.config import TrainConfig, to_dict


def start(cfg: TrainConfig) -> dist.DistInfo:
    """Check the options, join the process group (under torchrun) and set the CPU threads."""
    cfg.validate()
    info = dist.init(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return info


def open_run_dir(run_dir: Path, *, overwrite: bool, task: str, cfg: TrainConfig, info: dist.DistInfo,
                 record: dict, command: list[str] | None = None,
                 write_files: Callable[[Path], None] | None = None) -> None:
    """Create a new run directory (refusing an existing one unless ``overwrite``) and write
    ``run.json`` (the task, ``record``, the training options, the command). Only rank 0 writes;
    ``write_files(run_dir)`` adds task files such as tokenizers. A collective: call on every rank."""
    ckpt.check_new_run_dir(run_dir, overwrite)  # every rank checks, so every rank fails alike
    dist.barrier()
    if info.is_main:
        ckpt.create_run_dir(run_dir, overwrite)
        if write_files is not None:
            write_files(run_dir)
        atomic_write_json(run_dir / "run.json", {"format": ckpt.FORMAT, "task": task, **record,
                                                 "train_config": to_dict(cfg), "world_size": info.world_size,
                                                 "command": command, "torch": torch.__version__})
    dist.barrier()
