"""Data-parallel helpers over ``torch.distributed``.

``torchrun --nproc_per_node=N -m attnlab train ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init` reads them, joins the process group (gloo on CPU, nccl on CUDA)
and picks the device. Without them everything here degrades to a single process: the
reductions return their input and the barriers do nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from attnlab.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


_INFO = DistInfo()


def info() -> DistInfo:
    return _INFO


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the local CUDA device when one is present, else the CPU; ``cpu``; ``cuda``;
    ``cuda:N``."""
    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA device is available here; use --device cpu")
        if name == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        try:
            dev = torch.device(name)
        except RuntimeError as e:
            raise ConfigError(f"--device {name!r} is not a device name (try cpu, cuda or cuda:0)") from e
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        return dev
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"--device {name!r} is not a device name (try auto, cpu, cuda or cuda:0)")


def init(device: str = "auto") -> DistInfo:
    """Join the process group if launched by torchrun; return the rank, world size and device."""
    global _INFO
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
    _INFO = DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)
    return _INFO


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    return _INFO.rank == 0


def barrier() -> None:
    if _INFO.distributed and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over processes (in place, and returned)."""
    if _INFO.distributed and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj) -> list:
    """Every process's ``obj``, in rank order."""
    if not (_INFO.distributed and dist.is_initialized()):
        return [obj]
    out = [None] * _INFO.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every process."""
    if not (_INFO.distributed and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
